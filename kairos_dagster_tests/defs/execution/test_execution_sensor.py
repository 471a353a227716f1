"""execution_sensor and execution_job: the rebalance day hour by hour (build_sensor_context on a real
DuckDB, approvals recorded by `kairos approve`), paper and live, a holiday week and a rejected approval;
the run it requests submits the week's orders once on the simulated broker."""

import datetime as dt
import json
from zoneinfo import ZoneInfo

import duckdb
import pytest
from dagster import DagsterInstance, DagsterRunStatus, build_sensor_context
from typer.testing import CliRunner

from kairos_dagster.broker.release import execution_release
from kairos_dagster.cli.main import app
from kairos_dagster.definitions import build_definitions
from kairos_dagster.defs.execution import automation
from kairos_dagster.instance.runner import run_selection
from kairos_dagster.resources.alerts import AlertNotifier
from kairos_dagster.resources.broker import BrokerResource
from kairos_dagster.resources.rebalance_outputs import RebalanceOutputs
from kairos_dagster.resources.warehouse import DuckDBWarehouse
from kairos_dagster.settings import load_settings
from kairos_dagster_tests.fixtures.execution_setup import REB, SHARES, WEEK, simulated_env, write_picks

NY = ZoneInfo("America/New_York")
APPROVED = {"status": "approved", "approved_by": "alice", "approved_at": dt.datetime(2026, 1, 16, 13, 5, tzinfo=dt.UTC)}


def at(day: dt.date, hh: int, mm: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hh, mm), tzinfo=NY)


def release(when, *, live=False, auto=False, picks=True, approval=None):
    return execution_release(when, is_live=live, auto_paper=auto, picks_built=picks, approval=approval)


def test_live_orders_go_out_only_before_the_market_on_open_cutoff_once_approved():
    r = release(at(REB, 7, 0), live=True, picks=False)
    assert r.rebalance_date is None and "waiting for the week's picks" in r.reason and not r.missed
    r = release(at(REB, 8, 0), live=True)
    assert r.rebalance_date is None and "waiting for the approval" in r.reason and "before 09:28" in r.reason
    r = release(at(REB, 9, 10), live=True, approval=APPROVED)
    assert (r.rebalance_date, r.mode) == (REB, "live") and "alice" in r.reason
    late = release(at(REB, 9, 28), live=True, approval=APPROVED)
    assert late.rebalance_date is None and late.missed
    assert "closed at 09:28" in late.reason and "no DAY order is sent silently" in late.reason
    none = release(at(REB, 10, 0), live=True)
    assert none.rebalance_date is None and none.missed and "no approval was recorded" in none.reason
    # auto paper never releases live orders
    assert release(at(REB, 9, 0), live=True, auto=True).rebalance_date is None


def test_paper_goes_out_after_the_approval_or_with_auto_paper_until_the_close():
    r = release(at(REB, 11, 0))
    assert r.rebalance_date is None and "KAIROS_AUTO_PAPER=1" in r.reason
    assert release(at(REB, 11, 0), approval=APPROVED).mode == "paper"
    assert release(at(REB, 8, 0), auto=True).rebalance_date == REB  # right after the rebalance
    assert release(at(REB, 8, 0), auto=True, picks=False).rebalance_date is None
    closed = release(at(REB, 16, 0), approval=APPROVED)
    assert closed.rebalance_date is None and closed.missed and "closed" in closed.reason


def test_a_rejected_approval_and_a_holiday_week():
    rejected = {**APPROVED, "status": "rejected"}
    r = release(at(REB, 8, 0), live=True, approval=rejected)
    assert r.rebalance_date is None and "rejected by alice" in r.reason and not r.missed
    assert release(at(REB, 11, 0), auto=True, approval=rejected).rebalance_date is None  # even with auto paper
    # Good Friday 2026-04-03: Thursday 04-02 is the rebalance day, Friday is not a session.
    thursday, friday = dt.date(2026, 4, 2), dt.date(2026, 4, 3)
    assert release(at(thursday, 9, 0), live=True, approval=APPROVED).rebalance_date == thursday
    r = release(at(friday, 9, 0), live=True, approval=APPROVED)
    assert r.rebalance_date is None and "not a rebalance day" in r.reason and "2026-04-10" in r.reason
    assert "not a rebalance day" in release(at(dt.date(2026, 3, 31), 9, 0), approval=APPROVED).reason


@pytest.fixture
def warehouse(tmp_path, monkeypatch):
    db = simulated_env(tmp_path, monkeypatch)
    (tmp_path / "dagster_home").mkdir()
    return db, tmp_path


def _tick(db, outputs, when, monkeypatch, *, broker=None, cursor=None, instance=None):
    monkeypatch.setattr(automation, "_now", lambda: when)
    defs = build_definitions(load_settings())
    ctx = build_sensor_context(
        instance=instance, cursor=cursor, repository_def=defs.get_repository_def(),
        resources={"warehouse": DuckDBWarehouse(path=str(db)),
                   "broker": broker or BrokerResource(kind="simulated", warehouse_path=str(db)),
                   "rebalance_outputs": RebalanceOutputs(path=str(outputs / "rebalance")),
                   "alerts": AlertNotifier(log_path=str(outputs / "alerts" / "alerts.jsonl"))})
    return defs, automation.execution_sensor.evaluate_tick(ctx)


def test_the_sensor_through_the_rebalance_day_then_the_run_submits_once(warehouse, monkeypatch):
    db, tmp = warehouse
    outputs = tmp / "outputs"
    with DagsterInstance.ephemeral() as instance:
        _, tick = _tick(db, outputs, at(REB, 7, 30), monkeypatch, instance=instance)
        assert not tick.run_requests and "waiting for the week's picks" in tick.skip_message
        write_picks(outputs, db=db)
        _, tick = _tick(db, outputs, at(REB, 8, 0), monkeypatch, instance=instance)
        assert not tick.run_requests and "waiting for the approval" in tick.skip_message
        r = CliRunner().invoke(app, ["approve", "--date", REB.isoformat(), "--by", "alice"])
        assert r.exit_code == 0, r.output
        defs, tick = _tick(db, outputs, at(REB, 9, 0), monkeypatch, instance=instance)
        (req,) = tick.run_requests
        assert (req.run_key, req.partition_key) == (f"execution-{REB}", WEEK)
        assert req.tags["dagster/priority"] == automation.EXECUTION_PRIORITY and req.tags["kairos/execution_mode"] == "paper"
        assert tick.cursor == WEEK
        again = _tick(db, outputs, at(REB, 9, 1), monkeypatch, cursor=tick.cursor, instance=instance)[1]
        assert not again.run_requests and "already requested" in again.skip_message
        # The requested run, on the simulated broker's clock of that tick: every order once.
        job = defs.resolve_job_def("execution_job")
        cfg = {"ops": {"execution": {"config": {"mode": "execute", "as_of": "2026-01-16T09:00"}}}}
        result = job.execute_in_process(run_config=cfg, partition_key=req.partition_key, instance=instance,
                                        tags={**req.tags, "dagster/run_key": req.run_key})
        assert result.success
        after = _tick(db, outputs, at(REB, 9, 5), monkeypatch, cursor=tick.cursor, instance=instance)[1]
        assert not after.run_requests and f"run {result.run_id[:8]} is success" in after.skip_message
        con = duckdb.connect(str(db), read_only=True)
        try:
            sent = con.execute("SELECT ticker, qty, status FROM execution_orders ORDER BY ticker").fetchall()
        finally:
            con.close()
        assert [(t, q) for t, q, _ in sent] == sorted(SHARES.items())
        # Verified after the close (filled at the 01-16 open, 5 bps slippage), the week is measured to the
        # next rebalance's open (01-23): flat prices, so the book and the picks earn 0 and the cost is 5 bps.
        r = CliRunner().invoke(app, ["execute", "--verify", "--date", REB.isoformat(), "--as-of", "2026-01-16T16:30"])
        assert r.exit_code == 0, r.output
        due = automation.performance_sensor.evaluate_tick(build_sensor_context(
            instance=instance, repository_def=defs.get_repository_def(),
            resources={"warehouse": DuckDBWarehouse(path=str(db))}))
        assert [(r.run_key, r.partition_key) for r in due.run_requests] == [(f"performance-{REB}", WEEK)]
        perf = run_selection(defs, ["rebalance_performance"], partition_key=WEEK, instance=instance)
        assert perf.success
        md = perf.asset_materializations_for_node("rebalance_performance")[0].metadata
        assert md["status"].value == "executed" and md["to"].value == "2026-01-23"
        assert md["held_return"].value == pytest.approx(0.0, abs=1e-12) and md["shortfall_bps"].value == pytest.approx(5.0)
        assert md["max_drift"].value == pytest.approx(0.0, abs=1e-9)
        (check,) = perf.get_asset_check_evaluations()
        assert check.check_name == "portfolio_matches_picks" and check.passed
        done = automation.performance_sensor.evaluate_tick(build_sensor_context(
            instance=instance, repository_def=defs.get_repository_def(),
            resources={"warehouse": DuckDBWarehouse(path=str(db))}))
        assert not done.run_requests and "measured" in done.skip_message
        earlier = run_selection(defs, ["rebalance_performance"], partition_key="2026-01-05", instance=instance)
        assert earlier.asset_materializations_for_node("rebalance_performance")[0].metadata[
            "status"].value == "not executed"
        # `kairos track`: one line per measured rebalance, compounded; --json for scripts.
        out = CliRunner().invoke(app, ["track"])
        assert out.exit_code == 0, out.output
        lines = {ln.split()[0]: ln for ln in out.output.splitlines()[1:]}
        assert "executed" in lines[REB.isoformat()] and "+5.0bp" in lines[REB.isoformat()]
        assert "not executed" in lines["2026-01-09"]
        js = CliRunner().invoke(app, ["track", "--json", "--from-date", REB.isoformat()])
        (record,) = [json.loads(ln) for ln in js.output.splitlines()]
        assert record["date"] == REB.isoformat() and record["cumulative"] == pytest.approx(0.0, abs=1e-12)
        bad = CliRunner().invoke(app, ["track", "--from-date", "2026-01-20", "--to-date", "2026-01-10"])
        assert bad.exit_code == 2 and "after --to-date" in bad.output
        nothing_yet = run_selection(defs, ["rebalance_performance"], partition_key="2026-01-19", instance=instance,
                                    raise_on_error=False)
        assert not nothing_yet.success  # 01-30's open is not in sep_base yet: not measured, not invented


def test_the_sensor_for_live_picks_and_a_rejection(warehouse, monkeypatch):
    db, tmp = warehouse
    outputs = tmp / "outputs"
    write_picks(outputs, db=db)
    live = BrokerResource(kind="alpaca", warehouse_path=str(db), api_key="k", secret_key="s",
                          base_url="https://api.alpaca.markets")
    with DagsterInstance.ephemeral() as instance:
        assert CliRunner().invoke(app, ["approve", "--date", REB.isoformat(), "--by", "alice"]).exit_code == 0
        defs, tick = _tick(db, outputs, at(REB, 9, 0), monkeypatch, broker=live, instance=instance)
        (req,) = tick.run_requests
        assert req.tags["kairos/execution_mode"] == "live"
        # the run has not started (queued behind others) and still waits at 09:28: its deadline is reported
        instance.create_run_for_job(defs.resolve_job_def("execution_job"), status=DagsterRunStatus.NOT_STARTED,
                                    tags={**req.tags, "dagster/run_key": req.run_key})
        _, queued = _tick(db, outputs, at(REB, 9, 20), monkeypatch, broker=live, cursor=tick.cursor, instance=instance)
        assert "is not_started" in queued.skip_message and "deadline" not in queued.skip_message
        _, stuck = _tick(db, outputs, at(REB, 9, 29), monkeypatch, broker=live, cursor=tick.cursor, instance=instance)
        assert "did not start by its deadline (09:28 New York, live)" in stuck.skip_message
        _, again = _tick(db, outputs, at(REB, 9, 31), monkeypatch, broker=live, cursor=stuck.cursor, instance=instance)
        assert "did not start by its deadline" in again.skip_message
        alerts = [json.loads(line) for line in (outputs / "alerts" / "alerts.jsonl").read_text().splitlines()]
        assert [(a["key"], a["severity"]) for a in alerts] == [("execution_missed:2026-01-16", "HIGH")]  # once
        _, late = _tick(db, outputs, at(REB, 9, 30), monkeypatch, broker=live, instance=instance)
        assert not late.run_requests and "market-on-open window closed" in late.skip_message
        r = CliRunner().invoke(app, ["approve", "--date", REB.isoformat(), "--by", "bob", "--reject", "--note", "no"])
        assert r.exit_code == 0, r.output
        _, tick = _tick(db, outputs, at(REB, 9, 0), monkeypatch, broker=live, instance=instance)
        assert not tick.run_requests and "rejected by bob" in tick.skip_message
