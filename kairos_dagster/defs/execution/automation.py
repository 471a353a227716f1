"""The execution verification job and its sensor (rebalance days, 09:45-16:00 New York)."""

from __future__ import annotations

import datetime as dt

from dagster import AssetSelection, RunRequest, SensorEvaluationContext, SkipReason, define_asset_job, sensor

from kairos_dagster import calendar
from kairos_dagster.broker.tracking import unverified_rebalance_dates
from kairos_dagster.constants import NEW_YORK
from kairos_dagster.defs.partitions import week_key
from kairos_dagster.defs.tags import SERIAL_TAG
from kairos_dagster.warehouse import store

VERIFY_WINDOW = (dt.time(9, 45), dt.time(16, 0))  # New York, on rebalance days: after the open, until the close
VERIFY_LOOKBACK_DAYS = 7  # a rebalance still unverified from earlier in the week is checked too

execution_verify_job = define_asset_job(
    "execution_verify_job",
    selection=AssetSelection.assets("execution_report"),
    config={"ops": {"execution": {"config": {"mode": "verify"}}}},
    description="Verify one week's submitted orders: fills, partials, rejections, expiries (asset checks).",
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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
    dates, why = store.peek(path, lambda con: unverified_rebalance_dates(
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
