"""The NYSE (XNYS) trading calendar: sessions, trading weeks and rebalance dates.

Everything comes from exchange_calendars; there is no hard-coded holiday list. A trading week is
Monday to Sunday; its rebalance date is its last session (Thursday when Friday is closed; half days
count as full sessions; unscheduled closures such as 2018-12-05 and 2025-01-09 are not sessions).
"""

from __future__ import annotations

import datetime as dt
import math
from functools import lru_cache

import exchange_calendars as xcals
import numpy as np
import polars as pl

CALENDAR_NAME = "XNYS"
# exchange_calendars needs explicit bounds; these cover SHARADAR history and a decade ahead.
CALENDAR_START = dt.date(1998, 1, 2)
CALENDAR_END = dt.date(2040, 12, 31)
REBALANCE_RULE = "Last trading day of each week"


class CalendarError(ValueError):
    """A date outside the supported calendar range or otherwise unusable."""


@lru_cache(maxsize=1)
def _calendar() -> xcals.ExchangeCalendar:
    return xcals.get_calendar(CALENDAR_NAME, start=CALENDAR_START.isoformat(), end=CALENDAR_END.isoformat())


@lru_cache(maxsize=1)
def _session_days() -> np.ndarray:
    """All XNYS sessions in the supported range as sorted numpy datetime64[D]."""
    return _calendar().sessions.values.astype("datetime64[D]")


def _check(d: dt.date) -> None:
    if not isinstance(d, dt.date):
        raise CalendarError(f"expected a date, got {d!r}")
    if isinstance(d, dt.datetime):
        raise CalendarError(f"expected a date, got a datetime {d!r}")
    if not (CALENDAR_START <= d <= CALENDAR_END):
        raise CalendarError(f"date {d} is outside the supported calendar range {CALENDAR_START}..{CALENDAR_END}")


def _to_np(d: dt.date) -> np.datetime64:
    return np.datetime64(d, "D")


def _to_date(x: np.datetime64) -> dt.date:
    return x.astype("datetime64[D]").astype(dt.date)


def parse_date(text: str) -> dt.date:
    """Parse an ISO date (YYYY-MM-DD) with an error message that names the bad value."""
    try:
        d = dt.date.fromisoformat(text.strip())
    except (ValueError, AttributeError):
        raise CalendarError(f"not an ISO date (YYYY-MM-DD): {text!r}") from None
    _check(d)
    return d


def is_session(d: dt.date) -> bool:
    """Whether the exchange is open on `d` (half days included)."""
    _check(d)
    days = _session_days()
    i = np.searchsorted(days, _to_np(d))
    return bool(i < len(days) and days[i] == _to_np(d))


def sessions_between(start: dt.date, end: dt.date) -> list[dt.date]:
    """Sessions in [start, end], both inclusive."""
    return [_to_date(x) for x in sessions_array(start, end)]


def sessions_array(start: dt.date, end: dt.date) -> np.ndarray:
    """Sessions in [start, end] as numpy datetime64[D] (vectorized callers)."""
    _check(start)
    _check(end)
    days = _session_days()
    lo = np.searchsorted(days, _to_np(start), side="left")
    hi = np.searchsorted(days, _to_np(end), side="right")
    return days[lo:hi]


def sessions_frame(start: dt.date, end: dt.date) -> pl.DataFrame:
    """Sessions in [start, end] as a one-column polars frame `date`."""
    return pl.DataFrame({"date": sessions_array(start, end)}).with_columns(pl.col("date").cast(pl.Date))


def previous_session(d: dt.date) -> dt.date:
    """The last session strictly before `d`."""
    _check(d)
    days = _session_days()
    i = np.searchsorted(days, _to_np(d), side="left")
    if i == 0:
        raise CalendarError(f"no session before {d} in the supported range")
    return _to_date(days[i - 1])


def next_session(d: dt.date) -> dt.date:
    """The first session strictly after `d`."""
    _check(d)
    days = _session_days()
    i = np.searchsorted(days, _to_np(d), side="right")
    if i >= len(days):
        raise CalendarError(f"no session after {d} in the supported range")
    return _to_date(days[i])


def sessions_offset(d: dt.date, n: int) -> dt.date:
    """The session n sessions after (n > 0) or before (n < 0) the session on or before `d`."""
    _check(d)
    days = _session_days()
    i = int(np.searchsorted(days, _to_np(d), side="right")) - 1 + n
    if not (0 <= i < len(days)):
        raise CalendarError(f"{n} sessions from {d} is outside the supported range")
    return _to_date(days[i])


def week_start(d: dt.date) -> dt.date:
    """The Monday of the Monday-Sunday week that holds `d`."""
    return d - dt.timedelta(days=d.weekday())


def week_sessions(d: dt.date) -> list[dt.date]:
    """The sessions of the trading week (Monday to Sunday) that holds `d`."""
    monday = week_start(d)
    return sessions_between(monday, monday + dt.timedelta(days=6))


def rebalance_date_for_week(d: dt.date) -> dt.date | None:
    """The last session of the week that holds `d`, or None for a week with no session."""
    sessions = week_sessions(d)
    return sessions[-1] if sessions else None


def is_rebalance_day(d: dt.date) -> bool:
    return rebalance_date_for_week(d) == d


def rebalance_dates_between(start: dt.date, end: dt.date) -> list[dt.date]:
    """Every rebalance date in [start, end], vectorized over the session array."""
    days = sessions_array(start, end)
    if len(days) == 0:
        return []
    # Monday of each session's week; a session is its week's last when the next session is in a later week.
    weeks = days - ((days.astype("datetime64[D]").view("int64") - 4) % 7)  # 1970-01-05 was a Monday
    is_last = np.append(weeks[1:] != weeks[:-1], True)
    out = [_to_date(x) for x in days[is_last]]
    # The last session in range is its week's last only if the week has no later session.
    if out and rebalance_date_for_week(out[-1]) != out[-1]:
        out.pop()
    return out


def next_rebalance_dates(count: int, from_date: dt.date) -> list[dt.date]:
    """The next `count` rebalance dates on or after `from_date`."""
    if count < 1:
        raise CalendarError(f"count must be at least 1, got {count}")
    _check(from_date)
    out: list[dt.date] = []
    horizon = from_date
    while len(out) < count:
        end = min(horizon + dt.timedelta(days=7 * (count + 2)), CALENDAR_END)
        out = [d for d in rebalance_dates_between(from_date, end) if d >= from_date]
        if end == CALENDAR_END:
            break
        horizon = end
    if len(out) < count:
        raise CalendarError(f"fewer than {count} rebalance dates after {from_date} in the supported range")
    return out[:count]


def next_rebalance_after(d: dt.date) -> dt.date:
    """The first rebalance date strictly after `d`."""
    return next_rebalance_dates(1, d + dt.timedelta(days=1))[0]


def signal_date_for(rebalance_date: dt.date) -> dt.date:
    """The session whose data a rebalance uses: the one before the rebalance date (known at its open)."""
    return previous_session(rebalance_date)


def weeks_for_sessions(sessions: int) -> int:
    """Weeks of history that hold at least `sessions` XNYS sessions before any week.

    A year has ~252 sessions in 52 weeks (holidays and unscheduled closures take ~10 weekdays), so
    count 4.75 sessions a week, plus two weeks of slack; a test checks it over 1999-2035.
    """
    return math.ceil(sessions / 4.75) + 2
