"""The rebalance job and the NYSE-calendar sensor that runs it on the last trading day of the week."""

from __future__ import annotations

import datetime as dt

from dagster import AssetSelection, RunRequest, SensorEvaluationContext, SkipReason, define_asset_job, sensor

from kairos_dagster import calendar
from kairos_dagster.constants import NEW_YORK
from kairos_dagster.defs.partitions import week_key
from kairos_dagster.defs.tags import SERIAL_TAG
from kairos_dagster.portfolio import weekly
from kairos_dagster.warehouse import store

REBALANCE_SELECTION = AssetSelection.assets("rebalance_picks", "rebalance_trades")
REBALANCE_SENSOR_HOUR = 7  # New York: the seeds' "Last Trading Day 7:00 AM, check if rebalance day"

rebalance_job = define_asset_job(
    "rebalance_job",
    selection=REBALANCE_SELECTION,
    description="The week's Risk4/ML rebalance (picks, trades, files), stopped by its blocking gates.",
)


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


def signal_date_status(path: str, signal_date: dt.date) -> tuple[bool, str]:
    """Whether feat_matrix_v2 holds `signal_date`, read-only and without waiting on another writer's lock."""
    found, why = store.peek(path, lambda con: weekly.signal_date_rows(con, signal_date))
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
