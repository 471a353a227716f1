"""Weekly partitions: the key is the Monday of a trading week (New York time).

Windows run from Monday 00:00 to the next Monday 00:00 so that `date >= start AND date < end` on a
DATE column selects exactly that week. `end_offset=1` makes the current week exist, so the Friday
schedule and a Thursday rebalance (Friday holiday) can materialize it.
"""

from __future__ import annotations

import datetime as dt
import warnings

from dagster import (
    BackfillPolicy,
    BetaWarning,
    PartitionsDefinition,
    PreviewWarning,
    TimeWindow,
    TimeWindowPartitionMapping,
    WeeklyPartitionsDefinition,
)

from kairos_dagster import calendar
from kairos_dagster.constants import EXCHANGE_TIMEZONE
from kairos_dagster.defs.tags import RANGE_END_TAG, RANGE_START_TAG
from kairos_dagster.settings import Settings

# BackfillPolicy and pools are marked beta/preview in dagster 1.13; we rely on them deliberately.
warnings.filterwarnings("ignore", category=BetaWarning)
warnings.filterwarnings("ignore", category=PreviewWarning)

SINGLE_RUN = BackfillPolicy.single_run()


def weekly_partitions(start_date: dt.date, as_of: dt.date | None = None) -> WeeklyPartitionsDefinition:
    """Weeks from `start_date` to the current week, or to the week of `as_of` (KAIROS_AS_OF: the
    platform replayed as if that day were today; past or, on the synthetic market, future)."""
    if as_of is None:
        return WeeklyPartitionsDefinition(
            start_date=start_date.isoformat(), day_offset=1, timezone=EXCHANGE_TIMEZONE, end_offset=1, fmt="%Y-%m-%d")
    last_monday = calendar.week_start(as_of)
    # end_date caps the set at the as-of week; end_offset must reach that far past today when it is ahead
    ahead = (last_monday - calendar.week_start(dt.date.today())).days // 7
    return WeeklyPartitionsDefinition(
        start_date=start_date.isoformat(), end_date=(last_monday + dt.timedelta(days=7)).isoformat(),
        day_offset=1, timezone=EXCHANGE_TIMEZONE, end_offset=max(1, ahead + 2), fmt="%Y-%m-%d")


def settings_partitions(settings: Settings) -> WeeklyPartitionsDefinition:
    """The weekly partitions of a Definitions built from `settings` (KAIROS_START_DATE, KAIROS_AS_OF)."""
    return weekly_partitions(settings.start_date, settings.as_of)


def lookback_mapping(weeks: int) -> TimeWindowPartitionMapping:
    """Map a week to itself plus `weeks` weeks before it (clipped at the first partition)."""
    return TimeWindowPartitionMapping(start_offset=-weeks, allow_nonexistent_upstream_partitions=True)


def window_dates(window: TimeWindow) -> tuple[dt.date, dt.date]:
    """A partition time window as [start, end) dates."""
    return window.start.date(), window.end.date()


def week_key(d: dt.date) -> str:
    """The partition key (Monday, ISO) of the week that holds `d`."""
    return calendar.week_start(d).isoformat()


def key_window(key: str) -> tuple[dt.date, dt.date]:
    """[Monday, next Monday) of a partition key."""
    monday = dt.date.fromisoformat(key)
    return monday, monday + dt.timedelta(days=7)


def keys_between(partitions_def: PartitionsDefinition, start: dt.date, end: dt.date) -> list[str]:
    """Existing partition keys whose week intersects [start, end]."""
    first, last = week_key(start), week_key(end)
    return [k for k in partitions_def.get_partition_keys() if first <= k <= last]


def run_covers_week(tags: dict[str, str], key: str) -> bool:
    """Whether a run with these tags materialized week `key`: its partition, or a range that holds it."""
    if tags.get("dagster/partition") == key:
        return True
    lo, hi = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    return bool(lo and hi and lo <= key <= hi)
