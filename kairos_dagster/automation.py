"""Jobs, schedules and sensors."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from dagster import (
    AssetKey,
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
FEATURE_GROUPS = (
    "phase1_universe", "phase2_technical", "phase3_fundamental", "phase4_composites", "phase5_regime",
    "phase5_composites", "phase6_ml", "phase7_matrix",
)
PIPELINE_SELECTION = SYNC_SELECTION | AssetSelection.groups(*FEATURE_GROUPS)
# Runs with this tag run one at a time, in the order they were queued (dagster.yaml).
SERIAL_TAG = {"kairos/serial": "warehouse"}
# feat_targets rows stay null until their horizon's prices exist: each week refreshes the previous ones.
TARGET_REFRESH_WEEKS = 5

weekly_sync_job = define_asset_job(
    "weekly_sync_job",
    selection=SYNC_SELECTION,
    description="Sync one week (or a range of weeks) of SHARADAR data into the warehouse.",
)

weekly_pipeline_job = define_asset_job(
    "weekly_pipeline_job",
    selection=PIPELINE_SELECTION,
    description="Sync the week and materialize the feature graph, the ML predictions and feat_matrix_v2.",
)

targets_refresh_job = define_asset_job(
    "targets_refresh_job",
    selection=AssetSelection.assets("feat_targets"),
    description="Recompute forward targets of recent weeks whose horizons have completed since.",
)


def week_partition_for(now: dt.datetime) -> str | None:
    """The partition key of the trading week that holds `now` (New York), or None for a week without sessions."""
    today = now.astimezone(NEW_YORK).date()
    if calendar.rebalance_date_for_week(today) is None:
        return None
    return week_key(today)


def _weeks_before(key: str, n: int) -> tuple[str, str]:
    monday = dt.date.fromisoformat(key)
    first = max(monday - dt.timedelta(weeks=n), dt.date.fromisoformat(WEEKLY.get_first_partition_key()))
    return first.isoformat(), (monday - dt.timedelta(weeks=1)).isoformat()


@schedule(
    name="friday_weekly_schedule",
    job=weekly_pipeline_job,
    cron_schedule="0 21 * * 5",
    execution_timezone="America/New_York",
    description=(
        "Friday 21:00 New York: refresh the forward targets of the previous weeks, then sync the current "
        "week's partition and materialize the feature graph (the week's data is complete)."
    ),
)
def friday_weekly_schedule(context: ScheduleEvaluationContext):
    key = week_partition_for(context.scheduled_execution_time)
    if key is None:
        return SkipReason("this week has no NYSE session")
    tags = {"kairos/trigger": "friday_schedule", **SERIAL_TAG}
    requests = []
    first, last = _weeks_before(key, TARGET_REFRESH_WEEKS)
    if first <= last:
        requests.append(
            RunRequest(
                run_key=f"targets-refresh-{key}",
                asset_selection=[AssetKey("feat_targets")],
                tags={**tags, "dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
            )
        )
    requests.append(RunRequest(run_key=f"weekly-{key}", partition_key=key, tags=tags))
    return requests
