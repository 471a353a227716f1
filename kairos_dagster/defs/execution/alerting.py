"""Alerts from Dagster: the run failure sensor, the checks' severities after each run, the kill switches, and
the dead-man sensor. A thin shell over broker/alerts.py; delivery through the `alerts` resource.

- `run_failure_alert_sensor`: a failed run (HIGH, with its failed steps' causes), its failed checks and any
  tripped kill switch of its week;
- `check_alert_sensor`: a successful run's failed (warn) checks and tripped kill switches (the warn-only
  live_vs_backtest_gap among them);
- `deadman_sensor` (every 15 min): the Friday run, the rebalance or an approved execution that did not
  happen by its deadline, each alerted once (the sensor's cursor keeps the keys sent).
"""

import datetime as dt
import json

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunFailureSensorContext,
    RunsFilter,
    RunStatusSensorContext,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    run_status_sensor,
    sensor,
)

from kairos_dagster import calendar as cal
from kairos_dagster.broker import alerts as core
from kairos_dagster.broker import kill_switches as ks
from kairos_dagster.broker.tracking import approval_for
from kairos_dagster.constants import NEW_YORK
from kairos_dagster.defs.errors import innermost_error
from kairos_dagster.defs.tags import EXECUTION_OP, RANGE_END_TAG, RANGE_START_TAG
from kairos_dagster.portfolio import gate_records
from kairos_dagster.resources.alerts import AlertNotifier
from kairos_dagster.resources.broker import BrokerResource
from kairos_dagster.resources.warehouse import DuckDBWarehouse
from kairos_dagster.warehouse import store

DEADMAN_KEYS_KEPT = 60  # alerted keys the dead-man cursor remembers (a few weeks of deadlines)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _week(run: DagsterRun) -> str | None:
    tags = run.tags
    if "dagster/partition" in tags:
        return tags["dagster/partition"]
    if RANGE_START_TAG in tags:
        return f"{tags[RANGE_START_TAG]} .. {tags[RANGE_END_TAG]}"
    return None


def check_alerts(instance: DagsterInstance, run: DagsterRun) -> list[core.Alert]:
    """An alert per failed asset-check evaluation of the run, at the seed's severity where it names one."""
    out = []
    for event in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
        ev = event.dagster_event.event_specific_data
        md = {k: getattr(v, "value", v) for k, v in (ev.metadata or {}).items()}
        week = str(md.get("partition") or md.get("week") or _week(run) or "") or None
        alert = core.check_alert(ev.check_name, ev.asset_key.to_user_string(), ev.passed,
                                 ev.severity.value if ev.severity else None, ev.description, week=week,
                                 run_id=run.run_id)
        if alert is not None:
            out.append(alert)
    return out


def switch_alerts(warehouse: DuckDBWarehouse, run: DagsterRun) -> list[core.Alert]:
    """Tripped kill switches of the run's week, when the run evaluated them (its execution step ran)."""
    week = run.tags.get("dagster/partition")
    if not week or EXECUTION_OP not in (run.step_keys_to_execute or [EXECUTION_OP]):
        return []
    reb = cal.rebalance_date_for_week(dt.date.fromisoformat(week))
    if reb is None:
        return []
    found, _ = store.peek(warehouse.path, lambda con: con.execute(
        f"SELECT * FROM {ks.TABLE} WHERE rebalance_date = ?", [reb]).pl().to_dicts()
        if store.table_exists(con, ks.TABLE) else [])
    return core.kill_switch_alerts(found or [], run_id=run.run_id)


def _send(context, alerts: core.Notifier, items: list[core.Alert]) -> list[dict]:
    records = [alerts.send(a) for a in items]
    for r in records:
        context.log.info(f"alert {r['severity']} {r['title']}: sent via {r['sent'] or 'no channel'}"
                         + (f"; errors {r['errors']}" if r["errors"] else ""))
    return records


@run_failure_sensor(name="run_failure_alert_sensor", minimum_interval_seconds=60,
                    description="A failed run: an alert (HIGH) with its failed steps' causes, its failed checks and "
                                "any tripped kill switch of its week, by email and webhook.")
def run_failure_alert_sensor(context: RunFailureSensorContext, alerts: AlertNotifier, warehouse: DuckDBWarehouse):
    run = context.dagster_run
    causes = []
    for event in context.get_step_failure_events():
        data = event.event_specific_data
        user = getattr(data, "user_failure_data", None)
        cause = user.description if user is not None and user.description else innermost_error(data.error)
        causes.append(f"{event.step_key}: {cause.strip()[:2000]}")
    if not causes and context.failure_event is not None:
        causes.append(str(context.failure_event.message))
    items = [core.run_failure_alert(run.job_name, run.run_id, _week(run), causes),
             *check_alerts(context.instance, run), *switch_alerts(warehouse, run)]
    _send(context, alerts.notifier(), items)


@run_status_sensor(name="check_alert_sensor", run_status=DagsterRunStatus.SUCCESS, minimum_interval_seconds=60,
                   description="After a successful run: an alert per failed (warn) check, at the seed's severity, and "
                               "per tripped kill switch of its week.")
def check_alert_sensor(context: RunStatusSensorContext, alerts: AlertNotifier, warehouse: DuckDBWarehouse):
    run = context.dagster_run
    items = [*check_alerts(context.instance, run), *switch_alerts(warehouse, run)]
    if not items:
        return SkipReason(f"run {run.run_id} ({run.job_name}): no failed check, no tripped kill switch")
    _send(context, alerts.notifier(), items)
    return None


def week_activity(instance: DagsterInstance, warehouse: DuckDBWarehouse, day: dt.date) -> core.WeekActivity | None:
    """What happened in the last three weeks (None when the warehouse is busy with a writer: try next tick)."""
    mondays = [cal.week_start(day) - dt.timedelta(weeks=k) for k in range(3)]
    ok = {}
    for m in mondays:
        runs = instance.get_runs(RunsFilter(job_name="weekly_pipeline_job", statuses=[DagsterRunStatus.SUCCESS],
                                            tags={"dagster/partition": m.isoformat()}), limit=1)
        ok[m.isoformat()] = bool(runs)
    rebs = [r for m in mondays if (r := cal.rebalance_date_for_week(m)) is not None]

    def read(con):
        rebalanced = {d for d in rebs if gate_records.stored_gates(con, d).height}
        approved = {d for d in rebs if (a := approval_for(con, d)) is not None and a.get("status", "approved") ==
                    "approved"}
        executed = set()
        if store.table_exists(con, "execution_orders"):
            executed = {r[0] for r in con.execute(
                "SELECT DISTINCT rebalance_date FROM execution_orders WHERE rebalance_date IN (SELECT unnest(?)) "
                "AND status <> 'skipped'", [rebs]).fetchall()}
        return rebalanced, approved, executed

    found, why = store.peek(warehouse.path, read)
    if why:
        return None
    rebalanced, approved, executed = found if found is not None else (set(), set(), set())
    return core.WeekActivity(friday_run_ok=ok, rebalanced=rebalanced, approved=approved, executed=executed)


@sensor(name="deadman_sensor", minimum_interval_seconds=900,
        description="Dead-man check: the Friday run (by Saturday 06:00 New York), the rebalance (09:00 on the "
                    "rebalance day) or an approved execution (16:00) that did not happen alerts once (HIGH).")
def deadman_sensor(context: SensorEvaluationContext, alerts: AlertNotifier, warehouse: DuckDBWarehouse,
                   broker: BrokerResource):
    now = _now()
    activity = week_activity(context.instance, warehouse, now.astimezone(NEW_YORK).date())
    if activity is None:
        return SkipReason("the warehouse is unavailable (locked by a run, or missing): the dead-man check runs at the "
                          "next tick")
    due = core.deadman_alerts(now, activity, auto_paper=broker.auto_paper)
    sent = json.loads(context.cursor) if context.cursor else []
    new = [a for a in due if a.key not in sent]
    if not new:
        return SkipReason("every deadline met" if not due else f"already alerted: {', '.join(a.key for a in due)}")
    _send(context, alerts.notifier(), new)
    context.update_cursor(json.dumps((sent + [a.key for a in new])[-DEADMAN_KEYS_KEPT:]))
    return None
