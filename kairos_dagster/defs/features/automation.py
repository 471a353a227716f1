"""The weekly pipeline: the Friday 21:00 schedule, the Monday-Thursday update, and the targets refresh."""

from __future__ import annotations

import datetime as dt

from dagster import (
    AssetKey,
    AssetSelection,
    PartitionsDefinition,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    define_asset_job,
    schedule,
    sensor,
)

from kairos_dagster import calendar
from kairos_dagster.constants import EXCHANGE_TIMEZONE, NEW_YORK
from kairos_dagster.defs.partitions import week_key
from kairos_dagster.defs.sync.automation import SYNC_SELECTION
from kairos_dagster.defs.tags import RANGE_END_TAG, RANGE_START_TAG, SERIAL_TAG
from kairos_dagster.features.targets import TARGETS_SPEC
from kairos_dagster.sources.sync import pending_rebuilds, rebuild_span
from kairos_dagster.warehouse import store

FEATURE_GROUPS = (
    "phase1_universe", "phase2_technical", "phase3_fundamental", "phase4_composites", "phase5_regime",
    "phase5_composites", "phase6_ml", "phase7_matrix", "reports",
)
# The weekly run extends the backtest (and its strategy_stats) by the week too.
PIPELINE_SELECTION = SYNC_SELECTION | AssetSelection.groups(*FEATURE_GROUPS) | AssetSelection.groups("backtest")
# feat_targets rows stay null until their horizon's prices exist: each week refreshes the previous ones.
TARGET_REFRESH_WEEKS = 5

weekly_pipeline_job = define_asset_job(
    "weekly_pipeline_job",
    selection=PIPELINE_SELECTION,
    description="Sync the week and materialize the feature graph, the ML predictions, feat_matrix_v2 and the "
                "backtest of the week.",
)

# What a corrected source row changes: the feature tables (Phases 1-5) and the factor report. The ML
# predictions, feat_matrix_v2, the picks and the backtest of past weeks are the decisions made with the
# data of their day and are not rewritten.
REBUILD_GROUPS = (
    "phase1_universe", "phase2_technical", "phase3_fundamental", "phase4_composites", "phase5_regime",
    "phase5_composites", "reports",
)
restatement_rebuild_job = define_asset_job(
    "restatement_rebuild_job",
    selection=AssetSelection.groups(*REBUILD_GROUPS),
    description="Rebuild the feature tables of the weeks whose source rows the feed corrected (sync_restatements).",
)

targets_refresh_job = define_asset_job(
    "targets_refresh_job",
    selection=AssetSelection.assets("feat_targets", "factor_ic"),
    description="Recompute forward targets of recent weeks whose horizons have completed since.",
)


def week_partition_for(now: dt.datetime) -> str | None:
    """The partition key of the trading week that holds `now` (New York), or None for a week without sessions."""
    today = now.astimezone(NEW_YORK).date()
    if calendar.rebalance_date_for_week(today) is None:
        return None
    return week_key(today)


def weeks_before(key: str, n: int, first_partition: str) -> tuple[str, str]:
    """The `n` weeks before `key`, clipped at the first partition."""
    monday = dt.date.fromisoformat(key)
    first = max(monday - dt.timedelta(weeks=n), dt.date.fromisoformat(first_partition))
    return first.isoformat(), (monday - dt.timedelta(weeks=1)).isoformat()


def build_friday_schedule(weekly: PartitionsDefinition) -> ScheduleDefinition:
    """Friday 21:00 New York: the targets refresh of the previous weeks, then the week's pipeline."""

    @schedule(
        name="friday_weekly_schedule",
        job=weekly_pipeline_job,
        cron_schedule="0 21 * * 5",
        execution_timezone=EXCHANGE_TIMEZONE,
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
        first, last = weeks_before(key, TARGET_REFRESH_WEEKS, weekly.get_first_partition_key())
        if first <= last:
            requests.append(
                RunRequest(
                    run_key=f"targets-refresh-{key}",
                    asset_selection=[AssetKey("feat_targets"), AssetKey("factor_ic")],
                    tags={**tags, RANGE_START_TAG: first, RANGE_END_TAG: last},
                )
            )
        requests.append(RunRequest(run_key=f"weekly-{key}", partition_key=key, tags=tags))
        return requests

    return friday_weekly_schedule


@schedule(
    name="daily_update_schedule",
    job=weekly_pipeline_job,
    cron_schedule="0 21 * * 1-4",
    execution_timezone=EXCHANGE_TIMEZONE,
    description=(
        "Monday-Thursday 21:00 New York: re-materialize the current week's partition of the sync, feature graph, "
        "ML and feat_matrix_v2, so the next morning's rebalance finds its signal date (Friday: the weekly run)."
    ),
)
def daily_update_schedule(context: ScheduleEvaluationContext):
    today = context.scheduled_execution_time.astimezone(NEW_YORK).date()
    if not calendar.is_session(today):
        return SkipReason(f"{today} is not an NYSE session: no new data to sync")
    return RunRequest(run_key=f"daily-update-{today.isoformat()}", partition_key=week_key(today),
                      tags={"kairos/trigger": "daily_update_schedule", **SERIAL_TAG})


def rebuild_weeks(pending, first_partition: str, last_partition: str,
                  first_built: dt.date | None = None) -> tuple[str, str] | None:
    """The partition range whose features read the restated rows in `pending`, clipped to the partitions
    and to the weeks the feature graph was built for (from the first universe week)."""
    span = rebuild_span(pending, TARGETS_SPEC.lookahead_sessions)
    if span is None:
        return None
    floor = max(first_partition, week_key(first_built)) if first_built is not None else first_partition
    first, last = max(week_key(span[0]), floor), min(week_key(span[1]), last_partition)
    return (first, last) if first <= last else None


def pending_and_first_built(con, after: dt.datetime | None, run_id: str | None = None):
    first_built = store.date_range(con, "universe", "date")[0] if store.table_exists(con, "universe") else None
    return pending_rebuilds(con, after, run_id=run_id), first_built


def build_restatement_sensor(weekly: PartitionsDefinition) -> SensorDefinition:
    """After a sync records corrections of past rows, rebuild the feature weeks that read them, once."""

    @sensor(
        name="restatement_sensor",
        job=restatement_rebuild_job,
        minimum_interval_seconds=300,
        required_resource_keys={"warehouse"},
        description=(
            "When a sync rewrote past source rows with new values (corrections, revisions, late rows; see "
            "sync_restatements), rebuild the feature weeks that read them, once per batch. Splits and dividends "
            "need no rebuild: no feature depends on the adjustment day."
        ),
    )
    def restatement_sensor(context: SensorEvaluationContext):
        after = dt.datetime.fromisoformat(context.cursor) if context.cursor else None
        found, why = store.peek(context.resources.warehouse.path, lambda con: pending_and_first_built(con, after))
        if why:
            return SkipReason(why)
        pending, first_built = found
        if not pending.height:
            return SkipReason("no corrected source rows recorded" + (f" since {after}" if after else ""))
        cursor = pending.get_column("recorded_at").max().isoformat()
        weeks = rebuild_weeks(pending, weekly.get_first_partition_key(), weekly.get_last_partition_key(), first_built)
        context.update_cursor(cursor)
        if weeks is None or first_built is None:
            return SkipReason(f"{pending.height} restatements: no built feature week reads them")
        tickers = pending.get_column("ticker").unique().sort().to_list()
        return RunRequest(
            run_key=f"restated-{cursor}",
            tags={"kairos/trigger": "restatement_sensor", "kairos/restated_tickers": ",".join(tickers[:20]),
                  RANGE_START_TAG: weeks[0], RANGE_END_TAG: weeks[1], **SERIAL_TAG},
        )

    return restatement_sensor
