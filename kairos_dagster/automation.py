"""Jobs, schedules and sensors."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from dagster import (
    AssetKey,
    AssetSelection,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SkipReason,
    define_asset_job,
    schedule,
    sensor,
)

from kairos_dagster import calendar
from kairos_dagster.partitions import WEEKLY, week_key
from kairos_dagster.warehouse import store

NEW_YORK = ZoneInfo("America/New_York")

SYNC_SELECTION = AssetSelection.groups("sync")
FEATURE_GROUPS = (
    "phase1_universe", "phase2_technical", "phase3_fundamental", "phase4_composites", "phase5_regime",
    "phase5_composites", "phase6_ml", "phase7_matrix", "reports",
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
    selection=AssetSelection.assets("feat_targets", "factor_ic"),
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
                asset_selection=[AssetKey("feat_targets"), AssetKey("factor_ic")],
                tags={**tags, "dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
            )
        )
    requests.append(RunRequest(run_key=f"weekly-{key}", partition_key=key, tags=tags))
    return requests


# --------------------------------------------------------------------------- rebalance (daily update, sensor)
REBALANCE_SELECTION = AssetSelection.assets("rebalance_picks", "rebalance_trades")
REBALANCE_SENSOR_HOUR = 7  # New York: the seeds' "Last Trading Day 7:00 AM, check if rebalance day"

rebalance_job = define_asset_job(
    "rebalance_job",
    selection=REBALANCE_SELECTION,
    description="The week's Risk4/ML rebalance (picks, trades, files), stopped by its blocking gates.",
)


@schedule(
    name="daily_update_schedule",
    job=weekly_pipeline_job,
    cron_schedule="0 21 * * 1-4",
    execution_timezone="America/New_York",
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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rebalance_due(now: dt.datetime) -> tuple[dt.date | None, str]:
    """(today, "") on the week's last XNYS session from 07:00 New York; otherwise (None, why not)."""
    local = now.astimezone(NEW_YORK)
    today = local.date()
    reb = calendar.rebalance_date_for_week(today)
    if reb != today:
        nxt = reb if reb is not None and reb > today else calendar.next_rebalance_after(today)
        return None, f"{today} is not a rebalance day ({calendar.REBALANCE_RULE.lower()}); next rebalance {nxt}"
    if local.hour < REBALANCE_SENSOR_HOUR:
        return None, (f"rebalance day {today}: waiting until {REBALANCE_SENSOR_HOUR:02d}:00 New York "
                      f"(now {local:%H:%M})")
    return today, ""


def _peek(path: str, read):
    """(read(con), "") on a read-only connection that does not wait on another writer's lock, or
    (None, reason) when the warehouse is locked by a run or missing: sensors skip, they never block."""
    import duckdb

    try:
        with store.connect(path, read_only=True, retries=1) as con:
            return read(con), ""
    except (store.WarehouseError, duckdb.Error) as exc:
        return None, f"warehouse {path} unavailable (locked by a run, or missing): {str(exc).splitlines()[0]}"


def signal_date_status(path: str, signal_date: dt.date) -> tuple[bool, str]:
    """Whether feat_matrix_v2 holds `signal_date`, read-only and without waiting on another writer's lock."""
    def read(con):
        if not store.table_exists(con, "feat_matrix_v2"):
            return None
        return con.execute("SELECT count(*) FILTER (WHERE date = ?), max(date) FROM feat_matrix_v2",
                           [signal_date]).fetchone()

    found, why = _peek(path, read)
    if why:
        return False, why
    if found is None:
        return False, "feat_matrix_v2 does not exist yet"
    n, latest = found
    if not n:
        return False, f"feat_matrix_v2 has no rows at {signal_date} yet (latest {latest})"
    return True, f"feat_matrix_v2 has {n} rows at {signal_date}"


@sensor(
    name="rebalance_day_sensor",
    job=rebalance_job,
    minimum_interval_seconds=300,
    required_resource_keys={"warehouse"},
    description=(
        "On the last NYSE session of the week, from 07:00 New York, once feat_matrix_v2 holds the signal date "
        "(the session before), request that week's rebalance exactly once."
    ),
)
def rebalance_day_sensor(context: SensorEvaluationContext):
    reb, why = rebalance_due(_now())
    if reb is None:
        return SkipReason(why)
    key = week_key(reb)
    if context.cursor == key:
        return SkipReason(f"the rebalance of {reb} (partition {key}) was already requested")
    sig = calendar.signal_date_for(reb)
    ok, why = signal_date_status(context.resources.warehouse.path, sig)
    if not ok:
        return SkipReason(f"rebalance day {reb}: waiting for signal date {sig} in feat_matrix_v2: {why}")
    context.update_cursor(key)
    return RunRequest(run_key=f"rebalance-{key}", partition_key=key,
                      tags={"kairos/trigger": "rebalance_day_sensor", **SERIAL_TAG})


# --------------------------------------------------------------------------- execution verification
VERIFY_WINDOW = (dt.time(9, 45), dt.time(16, 0))  # New York, on rebalance days: after the open, until the close
VERIFY_LOOKBACK_DAYS = 7  # a rebalance still unverified from earlier in the week is checked too

execution_verify_job = define_asset_job(
    "execution_verify_job",
    selection=AssetSelection.assets("execution_report"),
    config={"ops": {"execution": {"config": {"mode": "verify"}}}},
    description="Verify one week's submitted orders: fills, partials, rejections, expiries (asset checks).",
)


def verification_due(now: dt.datetime) -> tuple[dt.date | None, str]:
    """(today, "") on a rebalance day between 09:45 and 16:00 New York; otherwise (None, why not)."""
    local = now.astimezone(NEW_YORK)
    today = local.date()
    if calendar.rebalance_date_for_week(today) != today:
        return None, f"{today} is not a rebalance day: no orders to verify"
    if not (VERIFY_WINDOW[0] <= local.time() < VERIFY_WINDOW[1]):
        return None, f"rebalance day {today}: verification runs 09:45-16:00 New York (now {local:%H:%M})"
    return today, ""


def unverified_dates(path: str, today: dt.date) -> tuple[list[dt.date], str]:
    """Submitted-but-unverified rebalance dates of the last week, read-only without waiting on a writer."""
    from kairos_dagster.broker.tracking import unverified_rebalance_dates

    dates, why = _peek(path, lambda con: unverified_rebalance_dates(
        con, today - dt.timedelta(days=VERIFY_LOOKBACK_DAYS), today))
    return (dates or []), why


@sensor(
    name="execution_verify_sensor",
    job=execution_verify_job,
    minimum_interval_seconds=900,
    required_resource_keys={"warehouse"},
    description=(
        "On rebalance days from 09:45 to 16:00 New York, verify each rebalance with submitted orders that are "
        "unverified or still open: one run per rebalance date and hour."
    ),
)
def execution_verify_sensor(context: SensorEvaluationContext):
    today, why = verification_due(_now())
    if today is None:
        return SkipReason(why)
    dates, why = unverified_dates(context.resources.warehouse.path, today)
    if not dates:
        return SkipReason(why or f"no submitted-but-unverified rebalance in the week up to {today}")
    hour = _now().astimezone(NEW_YORK).strftime("%Y%m%d%H")
    return [RunRequest(run_key=f"execution-verify-{d.isoformat()}-{hour}", partition_key=week_key(d),
                       tags={"kairos/trigger": "execution_verify_sensor", **SERIAL_TAG}) for d in dates]
