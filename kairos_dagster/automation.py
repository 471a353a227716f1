"""Jobs, schedules and sensors."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from dagster import (
    AssetSelection,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    define_asset_job,
    schedule,
)

from kairos_dagster import calendar
from kairos_dagster.partitions import WEEKLY, week_key

NEW_YORK = ZoneInfo("America/New_York")

SYNC_SELECTION = AssetSelection.groups("sync")

weekly_sync_job = define_asset_job(
    "weekly_sync_job",
    selection=SYNC_SELECTION,
    partitions_def=WEEKLY,
    description="Sync one week (or a range of weeks) of SHARADAR data into the warehouse.",
)


def week_partition_for(now: dt.datetime) -> str | None:
    """The partition key of the trading week that holds `now` (New York), or None for a week without sessions."""
    today = now.astimezone(NEW_YORK).date()
    if calendar.rebalance_date_for_week(today) is None:
        return None
    return week_key(today)


@schedule(
    name="friday_weekly_sync_schedule",
    job=weekly_sync_job,
    cron_schedule="0 21 * * 5",
    execution_timezone="America/New_York",
    description="Friday 21:00 New York: sync the current week's partition (the week's data is complete).",
)
def friday_weekly_sync_schedule(context: ScheduleEvaluationContext):
    key = week_partition_for(context.scheduled_execution_time)
    if key is None:
        return SkipReason("this week has no NYSE session")
    return RunRequest(run_key=f"weekly-sync-{key}", partition_key=key, tags={"kairos/trigger": "friday_schedule"})
