"""The gated execution job and its sensor (the rebalance day: live before 09:28 New York, paper until
the close), and the verification job and its sensor (rebalance days, 09:45-16:00 New York)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from dagster import (
    AssetSelection,
    DagsterRunStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    define_asset_job,
    sensor,
)

from kairos_dagster import calendar
from kairos_dagster.broker import reports
from kairos_dagster.broker.alerts import Alert
from kairos_dagster.broker.orders import OPG_CUTOFF
from kairos_dagster.broker.performance import measurable_dates
from kairos_dagster.broker.release import PAPER_UNTIL, execution_release
from kairos_dagster.broker.tracking import approval_for, unverified_rebalance_dates
from kairos_dagster.constants import NEW_YORK
from kairos_dagster.defs.partitions import week_key
from kairos_dagster.defs.tags import EXECUTION_OP, SERIAL_TAG
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


# ---------------------------------------------------------------------------------- execution
EXECUTION_PRIORITY = "10"  # dagster/priority: ahead of backfills (priority 0) in the run queue and the duckdb pool

execution_job = define_asset_job(
    "execution_job",
    selection=AssetSelection.assets("execution"),
    config={"ops": {EXECUTION_OP: {"config": {"mode": "execute"}}}},
    tags={"dagster/priority": EXECUTION_PRIORITY},
    description=("The gated execution of one week's picks: the approval bound to the picks' hash, the rebalance's "
                 "blocking gates and the risk checks, then submission (each order once, by client_order_id). Held "
                 "back by any of them, it writes the preview and fails naming why; nothing is sent."),
)


def week_state(path: str, rebalance_date: dt.date, picks_file: Path) -> tuple[bool, dict | None, str]:
    """(picks built, the recorded approval or rejection, why unreadable), read-only without waiting on a writer."""
    found, why = store.peek(path, lambda con: (reports.table_picks_hash(con, rebalance_date)[0] is not None,
                                               approval_for(con, rebalance_date)))
    table_picks, approval = found if found is not None else (False, None)
    return table_picks or picks_file.exists(), approval, why


@sensor(
    name="execution_sensor",
    job=execution_job,
    minimum_interval_seconds=60,
    required_resource_keys={"warehouse", "broker", "rebalance_outputs", "alerts"},
    description=(
        "On the rebalance day, launch execution_job for the week exactly once: live before 09:28 New York once the "
        "approval is recorded (market-on-open); paper after the approval, or once the picks exist with "
        "KAIROS_AUTO_PAPER=1, until the close. Otherwise the skip reason says what it waits for. A missed "
        "deadline (the run not started by it, or no release in time) alerts once (HIGH)."
    ),
)
def execution_sensor(context: SensorEvaluationContext):
    now = _now()
    today = now.astimezone(NEW_YORK).date()
    wk = week_key(today)
    if context.cursor in (wk, f"{wk}{ALERTED}") and calendar.rebalance_date_for_week(today) == today:
        return SkipReason(_requested_status(context, today, now))
    picks_built, approval = False, None
    if calendar.rebalance_date_for_week(today) == today:
        picks_file = reports.default_picks_path(context.resources.rebalance_outputs.path, today)
        picks_built, approval, why = week_state(context.resources.warehouse.path, today, picks_file)
        if why:
            return SkipReason(f"rebalance day {today}: {why}")
    broker = context.resources.broker
    try:
        is_live = broker.is_live
    except ValueError as exc:
        return SkipReason(f"broker: {exc}")
    decision = execution_release(now, is_live=is_live, auto_paper=broker.auto_paper, picks_built=picks_built,
                                 approval=approval)
    if decision.missed:  # a deadline passed with the week's orders not sent
        context.log.error(f"execution of {today} MISSED: {decision.reason}")
        if context.cursor != f"{wk}{MISSED}":
            _missed_alert(context, today, decision.reason)
            context.update_cursor(f"{wk}{MISSED}")
    if decision.rebalance_date is None:
        return SkipReason(decision.reason)
    reb = decision.rebalance_date
    context.update_cursor(week_key(reb))  # once per week (the run key dedupes too, in the daemon)
    return RunRequest(run_key=f"execution-{reb.isoformat()}", partition_key=week_key(reb),
                      tags={"kairos/trigger": "execution_sensor", "kairos/execution_mode": decision.mode,
                            "dagster/priority": EXECUTION_PRIORITY})


def _requested_status(context: SensorEvaluationContext, reb: dt.date, now: dt.datetime) -> str:
    """What became of the week's requested execution run; a run still waiting past its deadline (09:28 New
    York live, the close on paper) is logged as an error: the orders will not go out as planned."""
    runs = context.instance.get_runs(filters=RunsFilter(tags={"dagster/run_key": f"execution-{reb.isoformat()}"}),
                                     limit=1)
    if not runs:
        return f"the execution of {reb} was already requested (no run recorded yet)"
    run = runs[0]
    started = run.status not in (DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING)
    mode = run.tags.get("kairos/execution_mode", "paper")
    deadline = OPG_CUTOFF if mode == "live" else PAPER_UNTIL
    text = f"the execution of {reb} was already requested: run {run.run_id[:8]} is {run.status.value.lower()}"
    if not started and now.astimezone(NEW_YORK).time() >= deadline:
        text += f"; it did not start by its deadline ({deadline:%H:%M} New York, {mode})"
        context.log.error(f"execution of {reb} MISSED: {text}")
        if not (context.cursor or "").endswith(ALERTED):
            _missed_alert(context, reb, text)
            context.update_cursor(f"{week_key(reb)}{ALERTED}")
    return text


ALERTED, MISSED = ":deadline-alerted", ":missed-alerted"  # cursor suffixes: each missed deadline alerts once


def _missed_alert(context: SensorEvaluationContext, reb: dt.date, why: str) -> None:
    alert = Alert(key=f"execution_missed:{reb}", kind="deadman", severity="HIGH",
                  title=f"the execution of {reb} MISSED its deadline", detail=why, week=week_key(reb),
                  action="look at the run queue and the approval; a missed live window is not sent as a DAY order")
    record = context.resources.alerts.notifier().send(alert)
    context.log.info(f"alert {alert.severity} {alert.title}: sent via {record['sent'] or 'no channel'}")


# -------------------------------------------------------------------------------- performance
performance_job = define_asset_job(
    "performance_job",
    selection=AssetSelection.assets("rebalance_performance"),
    description="Measure one executed rebalance to the next rebalance's open (rebalance_performance).",
)


@sensor(
    name="performance_sensor",
    job=performance_job,
    minimum_interval_seconds=3600,
    required_resource_keys={"warehouse"},
    description=("Once the next rebalance date's open is in sep_base (after that week's sync), measure each executed "
                 "rebalance not measured yet: one run per rebalance date."),
)
def performance_sensor(context: SensorEvaluationContext):
    dates, why = store.peek(context.resources.warehouse.path, measurable_dates)
    if why:
        return SkipReason(why)
    if not dates:
        return SkipReason("every executed rebalance whose next rebalance date is synced is measured")
    return [RunRequest(run_key=f"performance-{d.isoformat()}", partition_key=week_key(d),
                       tags={"kairos/trigger": "performance_sensor", **SERIAL_TAG}) for d in dates]
