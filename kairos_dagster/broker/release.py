"""When the week's orders may go out: the execution sensor's decision as a pure function (no dagster).

Live orders are market-on-open (OPG): Alpaca accepts them until 09:28 New York, so a live execution is
released on the rebalance day before 09:28, once the week's approval is recorded. Paper orders are DAY
market orders: released on the rebalance day after the approval (or, with KAIROS_AUTO_PAPER=1, as soon as
the picks exist) until the close. Anything else waits, with a reason that says for what.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kairos_dagster import calendar as cal
from kairos_dagster.broker.orders import OPG_CUTOFF
from kairos_dagster.constants import NEW_YORK as NY

PAPER_UNTIL = dt.time(16, 0)  # DAY orders are accepted until the close


@dataclass(frozen=True)
class Release:
    """The decision for one evaluation: `rebalance_date` is set when the execution run is to start now."""

    rebalance_date: dt.date | None
    mode: str | None  # "live" | "paper"
    reason: str
    missed: bool = False  # a deadline passed with the week's orders not sent: operators must hear of it


def _who(approval: Mapping[str, Any]) -> str:
    at = approval.get("approved_at")
    when = at.astimezone(NY).strftime("%Y-%m-%d %H:%M New York") if isinstance(at, dt.datetime) and at.tzinfo \
        else str(at)
    return f"{approval.get('approved_by') or 'unknown'} at {when}"


def execution_release(now: dt.datetime, *, is_live: bool, auto_paper: bool, picks_built: bool,
                      approval: Mapping[str, Any] | None) -> Release:
    """Whether to start the week's execution run at `now` (aware), and why (not)."""
    if now.tzinfo is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    local = now.astimezone(NY)
    today, clock = local.date(), local.strftime("%H:%M")
    reb = cal.rebalance_date_for_week(today)
    if reb != today:
        nxt = reb if reb is not None and reb > today else cal.next_rebalance_after(today)
        return Release(None, None, f"{today} is not a rebalance day; the next one is {nxt}")
    if not picks_built:
        late = (is_live and local.time() >= OPG_CUTOFF) or local.time() >= PAPER_UNTIL
        return Release(None, None, f"rebalance day {today}: waiting for the week's picks (rebalance_job) "
                       f"(now {clock} New York)" + ("; the execution window has closed" if late else ""), missed=late)
    status = (approval or {}).get("status")
    if status == "rejected":
        return Release(None, None, f"the picks of {today} were rejected by {_who(approval)}: nothing is executed "
                       "(re-run the rebalance and approve the new picks, or trade by hand)")
    if is_live:
        if local.time() >= OPG_CUTOFF:
            what = (f"approved by {_who(approval)}" if status == "approved" else "no approval was recorded")
            return Release(None, None, f"live: {what}, and the market-on-open window closed at 09:28 New York "
                           f"(now {clock}): no OPG order can be sent today and no DAY order is sent silently "
                           "(`kairos execute --execute --intraday` sends DAY orders by hand)", missed=True)
        if status != "approved":
            return Release(None, None, f"live: waiting for the approval of {today}'s picks (`kairos approve`) "
                           f"before 09:28 New York (now {clock})")
        return Release(today, "live", f"live: approved by {_who(approval)}; market-on-open orders before 09:28")
    if local.time() >= PAPER_UNTIL:
        return Release(None, None, f"paper: the session of {today} has closed (now {clock} New York); "
                       + ("approved, but not executed: execute by hand" if status == "approved"
                          else "no approval was recorded"), missed=status == "approved" or auto_paper)
    if status == "approved":
        return Release(today, "paper", f"paper: approved by {_who(approval)}; DAY market orders")
    if auto_paper:
        return Release(today, "paper", "paper: KAIROS_AUTO_PAPER=1 executes paper picks without an approval")
    return Release(None, None, f"paper: waiting for the approval of {today}'s picks (`kairos approve`), or set "
                   f"KAIROS_AUTO_PAPER=1 to paper-trade without one (now {clock} New York)")
