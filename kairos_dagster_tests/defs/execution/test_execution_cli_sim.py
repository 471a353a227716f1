"""`kairos approve` / `kairos execute` / `kairos emergency` on the simulated broker, through the real Dagster
instance (DAGSTER_HOME in a temp folder) and a real DuckDB: preview writes no orders, approval bound to the
picks, exactly once across runs, fills at the next open and verification, the verify sensor, emergency."""

import datetime as dt

import duckdb
import polars as pl
import pytest
from dagster import DagsterInstance, RunsFilter, build_sensor_context
from typer.testing import CliRunner

from kairos_dagster.cli.main import app
from kairos_dagster.definitions import build_definitions
from kairos_dagster.defs.execution import automation
from kairos_dagster.resources.warehouse import DuckDBWarehouse
from kairos_dagster.settings import load_settings
from kairos_dagster_tests.fixtures.execution_setup import (
    PRICES,
    REB,
    SHARES,
    simulated_env,
    write_picks,
)

runner = CliRunner()
PRE_OPEN = "2026-01-16T09:00"  # New York: fills at this day's open
AFTER_CLOSE = "2026-01-16T16:30"
NY = automation.NEW_YORK


@pytest.fixture
def env(tmp_path, monkeypatch):
    db = simulated_env(tmp_path, monkeypatch)
    picks = write_picks(tmp_path / "outputs")
    return db, picks, tmp_path


def kairos(*args):
    r = runner.invoke(app, list(args))
    out = r.output
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        out += f"\nEXCEPTION: {r.exception!r}"
    return r.exit_code, out


def rows(db, sql):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def has_table(db, name):
    return bool(rows(db, f"SELECT count(*) FROM information_schema.tables WHERE table_name = '{name}'")[0][0])


def verify_tick(db, when, monkeypatch):
    monkeypatch.setattr(automation, "_now", lambda: when)
    defs = build_definitions(load_settings())
    with DagsterInstance.ephemeral() as inst:
        ctx = build_sensor_context(instance=inst, repository_def=defs.get_repository_def(),
                                   resources={"warehouse": DuckDBWarehouse(path=str(db))})
        return automation.execution_verify_sensor.evaluate_tick(ctx)


def test_preview_approve_execute_once_verify_end_to_end(env, monkeypatch):
    db, picks, tmp = env
    # Preview: the plan, paper timing message, a preview file; no order anywhere.
    code, out = kairos("execute", "--picks", str(picks), "--as-of", PRE_OPEN, "--max-gap", "5")
    assert code == 0, out
    assert "Paper trading detected, using intraday orders" in out and "simulated paper broker" in out
    assert "5.00% from the picks price" in out  # --max-gap 5 means 5%
    for t in PRICES:
        assert f"BUY  {t}" in out
    assert "Preview: nothing submitted" in out
    assert list((tmp / "outputs" / "rebalance" / REB.isoformat()).glob("execution_preview_*.csv"))
    assert not has_table(db, "execution_orders") and rows(db, "SELECT count(*) FROM sim_orders")[0][0] == 0

    # Execute without an approval and without KAIROS_AUTO_PAPER: refused, nothing sent.
    code, out = kairos("execute", "--picks", str(picks), "--execute", "--as-of", PRE_OPEN)
    assert code == 1 and "REFUSED" in out and "KAIROS_AUTO_PAPER=1" in out, out
    assert rows(db, "SELECT count(*) FROM sim_orders")[0][0] == 0

    # Approve, then change the picks: the approval no longer matches, execution refused.
    code, out = kairos("approve", "--date", REB.isoformat(), "--by", "alice", "--note", "weekly review")
    assert code == 0 and "approved by alice" in out, out
    assert rows(db, "SELECT status, approved_by, note FROM rebalance_approval") == [("approved", "alice", "weekly review")]
    write_picks(tmp / "outputs", {**SHARES, "AAA": 81})
    code, out = kairos("execute", "--picks", str(picks), "--execute", "--as-of", PRE_OPEN)
    assert code == 1 and "picks changed after approval" in out, out
    assert rows(db, "SELECT count(*) FROM sim_orders")[0][0] == 0
    write_picks(tmp / "outputs")  # the approved content again: the approval is valid again

    # --dry-run goes through the motions and submits nothing.
    code, out = kairos("execute", "--picks", str(picks), "--execute", "--dry-run", "--as-of", PRE_OPEN)
    assert code == 0 and "Dry run: nothing submitted" in out, out
    assert rows(db, "SELECT count(*) FROM sim_orders")[0][0] == 0

    # Execute twice: every order exactly once.
    code, out = kairos("execute", "--picks", str(picks), "--execute", "--as-of", PRE_OPEN)
    assert code == 0, out
    assert "accepted" in out and "Orders:" in out
    assert sorted(rows(db, "SELECT symbol, qty FROM sim_orders")) == sorted((t, float(q)) for t, q in SHARES.items())
    code, out = kairos("execute", "--picks", str(picks), "--execute", "--as-of", PRE_OPEN)
    assert code == 0, out
    assert rows(db, "SELECT count(*), count(DISTINCT client_order_id) FROM sim_orders")[0] == (4, 4)
    assert rows(db, "SELECT count(*) FROM execution_orders WHERE status = 'accepted'")[0][0] == 4
    assert len(list((tmp / "outputs" / "rebalance" / REB.isoformat()).glob("alpaca_orders_*.csv"))) >= 1

    # The verify sensor: on the rebalance day after 09:45 it asks for that date; never before.
    assert verify_tick(db, dt.datetime(2026, 1, 16, 9, 0, tzinfo=NY), monkeypatch).skip_message.startswith(
        "rebalance day 2026-01-16")
    tick = verify_tick(db, dt.datetime(2026, 1, 16, 10, 5, tzinfo=NY), monkeypatch)
    reqs = tick.run_requests
    assert reqs, tick.skip_message
    assert [(r.run_key, r.partition_key) for r in reqs] == [("execution-verify-2026-01-16-2026011610", "2026-01-12")]

    # Verify after the open: filled at the 01-16 open with 5 bps slippage; checks pass.
    code, out = kairos("execute", "--verify", "--date", REB.isoformat(), "--as-of", AFTER_CLOSE)
    assert code == 0, out
    assert "filled 4" in out and "fill rate 100.0%" in out and "slippage 5.0 bps" in out
    assert "check no_rejections: PASS" in out and "check no_partial_fills: PASS" in out
    fills = dict(rows(db, "SELECT ticker, filled_avg_price FROM execution_orders"))
    assert fills == pytest.approx({t: p * 1.0005 for t, p in PRICES.items()})
    assert rows(db, "SELECT count(*) FROM sim_positions")[0][0] == 4
    assert verify_tick(db, dt.datetime(2026, 1, 16, 11, 0, tzinfo=NY), monkeypatch).skip_message.startswith(
        "no submitted-but-unverified")

    # Every step was a Dagster run in the instance (visible in the UI).
    with DagsterInstance.get() as inst:
        triggers = [r.tags.get("kairos/trigger") for r in inst.get_runs(RunsFilter())]
    assert {"cli_execute_preview", "cli_approve", "cli_execute_execute", "cli_execute_verify"} <= set(triggers)


def test_rejected_approval_and_auto_paper(env, monkeypatch):
    db, picks, tmp = env
    code, out = kairos("approve", "--date", REB.isoformat(), "--by", "bob", "--reject", "--note", "too concentrated")
    assert code == 0 and "rejected by bob" in out, out
    monkeypatch.setenv("KAIROS_AUTO_PAPER", "1")  # even auto-paper never overrides an explicit rejection
    code, out = kairos("execute", "--picks", str(picks), "--execute", "--as-of", PRE_OPEN)
    assert code == 1 and "approval status is 'rejected'" in out, out
    assert rows(db, "SELECT count(*) FROM sim_orders")[0][0] == 0


def test_auto_paper_executes_without_approval_and_bad_inputs_are_named(env, monkeypatch):
    db, picks, tmp = env
    monkeypatch.setenv("KAIROS_AUTO_PAPER", "1")
    code, out = kairos("execute", "--picks", str(picks), "--execute", "--as-of", PRE_OPEN)
    assert code == 0 and "paper without approval: auto_paper is on" in out, out
    assert rows(db, "SELECT count(*) FROM sim_orders")[0][0] == 4
    code, out = kairos("execute", "--picks", str(picks), "--execute", "--verify")
    assert code == 2 and "choose one of" in out
    code, out = kairos("execute", "--picks", str(picks), "--max-gap", "150")
    assert code == 2 and "--max-gap" in out and "below 100%" in out
    code, out = kairos("execute", "--picks", str(picks), "--date", "2026-01-15")
    assert code == 2 and "does not match the picks folder" in out
    code, out = kairos("approve", "--date", "2026-01-14", "--by", "x")
    assert code == 2 and "not a rebalance day" in out
    bad = tmp / "outputs" / "rebalance" / "2026-01-23"
    bad.mkdir(parents=True)
    (bad / "picks.csv").write_text("rank,ticker,weight\n1,AAA,0.1\n")
    code, out = kairos("execute", "--picks", str(bad / "picks.csv"))
    assert code == 1 and "missing column(s)" in out and "picks.csv" in out, out


def test_emergency_cancel_all_and_liquidate(env, monkeypatch):
    db, picks, tmp = env
    monkeypatch.setenv("KAIROS_AUTO_PAPER", "1")
    # Orders sent after the 01-22 open stay open until the 01-23 open (no wall-clock fill: sep_base ends there).
    code, out = kairos("execute", "--picks", str(picks), "--execute", "--as-of", PRE_OPEN)
    assert code == 0, out
    code, out = kairos("emergency", "liquidate")
    assert code == 1 and "--confirm" in out
    code, out = kairos("emergency", "cancel-all")
    assert code == 0 and "simulated paper broker" in out, out
    # The wall clock is far after the fills' session: these orders filled at the 01-16 open, nothing is open.
    assert "Asked to cancel 0 open order(s)" in out
    code, out = kairos("emergency", "liquidate", "--confirm")
    assert code == 0 and "Closing 4 position(s)" in out, out
    assert rows(db, "SELECT count(*) FROM sim_orders WHERE client_order_id LIKE 'liquidate-%'")[0][0] == 4
    code, out = kairos("emergency", "cancel-all")
    assert code == 0 and "Asked to cancel 4 open order(s)" in out, out
    assert rows(db, "SELECT count(*) FROM sim_orders WHERE status = 'canceled'")[0][0] == 4
    assert pl.DataFrame(rows(db, "SELECT status FROM execution_orders"), orient="row").height == 4


def test_demo_paper_trades_each_week_and_reports_a_tripped_kill_switch_then_goes_on(env):
    """The demo's operator loop on two weeks: the first is approved, executed and verified; before the second,
    AAA and BBB halve on the session before it (a 4% loss of the account): max_daily_loss trips, the week is
    reported and left unexecuted, and the loop still succeeds and measures both weeks."""
    from kairos_dagster.cli.demo import demo_paper_trading
    from kairos_dagster.cli.demo_trading import traded_weeks

    db, picks, tmp = env
    first = dt.date(2026, 1, 9)
    write_picks(tmp / "outputs", day=first)
    write_picks(tmp / "outputs", {**SHARES, "CCC": 150})
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE sep_base SET close = close / 2, closeunadj = closeunadj / 2, closeadj = closeadj / 2 "
                    "WHERE ticker IN ('AAA', 'BBB') AND date = '2026-01-15'")
    settings = load_settings()
    defs = build_definitions(settings)
    weeks = traded_weeks(dt.date(2026, 1, 12), dt.date(2025, 12, 1), n=2)
    assert weeks == [dt.date(2026, 1, 5), dt.date(2026, 1, 12)]
    lines: list[str] = []
    assert demo_paper_trading(defs, settings, weeks, lines.append), "\n".join(lines)
    text = "\n".join(lines)
    assert "2026-01-09: approved; 4 orders, filled 4, partial 0, rejected 0; fill rate 100.0%, slippage 5.0 bps" in text
    assert "2026-01-16: KILL SWITCH TRIPPED, not executed: max_daily_loss: kill switch: the account's change over the session of " \
           "2026-01-15: -4.00%" in text, text
    assert rows(db, "SELECT date, status, count(*) FROM rebalance_approval GROUP BY ALL ORDER BY 1") == [
        (first, "approved", 1), (REB, "approved", 1)]
    assert rows(db, "SELECT DISTINCT rebalance_date FROM execution_orders") == [(first,)]
    perf = rows(db, "SELECT date, status FROM rebalance_performance ORDER BY date")
    assert perf == [(first, "executed"), (REB, "not executed")]
    assert "track record (1 executed, 1 held back, 2 measured" in text and "kill switches tripped" in text
    assert "2026-01-09  2026-01-16  executed" in text  # the track record's table
    report = tmp / "outputs" / "reports" / "ops_report_20260116.html"
    assert f"ops report: {report}" in text and report.is_file()
    page = report.read_text()
    assert "KILL SWITCH" not in page and "max_daily_loss" in page and 'id="performance"' in page


def test_failed_blocking_rebalance_gate_blocks_execution_from_the_warehouse_even_with_a_fresh_home(env, monkeypatch):
    """The gate verdicts live in the warehouse (rebalance_gate_results): a failed blocking gate refuses
    execution, and a fresh Dagster home on the same (copied) warehouse changes nothing."""
    import shutil

    from kairos_dagster.broker.approval import picks_content_hash
    from kairos_dagster.portfolio import gate_records
    from kairos_dagster.portfolio.gates import GateResult

    db, picks, tmp = env
    monkeypatch.setenv("KAIROS_AUTO_PAPER", "1")
    gates = [GateResult("ml_alpha_coverage", False, "block", "alpha coverage 80% < 95%", 0.8),
             GateResult("turnover", True, "warn", "turnover 20%", 0.2)]
    with duckdb.connect(str(db)) as con:
        gate_records.record_gate_results(con, gate_records.gate_rows(
            REB, dt.date(2026, 1, 15), gates, picks_content_hash(picks), blocking={"ml_alpha_coverage"},
            run_id="r1", now=dt.datetime(2026, 1, 15, 22, tzinfo=dt.UTC)))
    code, out = kairos("execute", "--picks", str(picks), "--execute", "--as-of", PRE_OPEN)
    assert code == 1 and "ml_alpha_coverage: alpha coverage 80% < 95%" in out, out
    # a copy of the warehouse with a brand-new Dagster home: still refused
    copy = tmp / "copy.duckdb"
    shutil.copy(db, copy)
    monkeypatch.setenv("KAIROS_DUCKDB_PATH", str(copy))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp / "fresh_home"))
    code, out = kairos("execute", "--picks", str(picks), "--execute", "--as-of", PRE_OPEN)
    assert code == 1 and "ml_alpha_coverage: alpha coverage 80% < 95%" in out, out
    code, out = kairos("execute", "--picks", str(picks), "--as-of", PRE_OPEN)  # the preview still works
    assert code == 0 and "ml_alpha_coverage" in out, out
    assert not has_table(copy, "execution_orders") and rows(copy, "SELECT count(*) FROM sim_orders")[0][0] == 0


def test_hand_made_or_changed_picks_are_refused_unless_an_override_is_recorded(env, monkeypatch):
    from kairos_dagster.portfolio import gate_records
    from kairos_dagster_tests.fixtures.execution_setup import SHARES

    db, picks, tmp = env
    monkeypatch.setenv("KAIROS_AUTO_PAPER", "1")
    # the picks file changed after the rebalance evaluated it
    write_picks(tmp / "outputs", {**SHARES, "AAA": 81}, record_gates=False)
    code, out = kairos("execute", "--picks", str(picks), "--execute", "--as-of", PRE_OPEN)
    assert code == 1 and "gates_evaluated_on_other_picks" in out, out
    # never evaluated at all (hand-made picks)
    with duckdb.connect(str(db)) as con:
        con.execute(f"DELETE FROM {gate_records.GATE_RESULTS_TABLE}")
    code, out = kairos("execute", "--picks", str(picks), "--execute", "--as-of", PRE_OPEN)
    assert code == 1 and "gates_not_evaluated" in out, out
    code, out = kairos("override", "--date", REB.isoformat(), "--gate", "gates_not_evaluated", "--by", "ops")
    assert code == 2 and "--note" in out, out
    code, out = kairos("override", "--date", REB.isoformat(), "--gate", "gates_not_evaluated", "--by", "ops",
                       "--note", "hand-made picks for the test account")
    assert code == 0 and "recorded" in out, out
    (rec,) = rows(db, "SELECT gate, overridden_by, os_user, host, note FROM gate_overrides")
    assert rec[0] == "gates_not_evaluated" and rec[1] == "ops" and rec[2] and rec[3] and rec[4].startswith("hand-made")
    # written outside any run, the override still reaches the catalog's gate_overrides asset
    from dagster import AssetKey, DagsterInstance

    with DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(AssetKey("gate_overrides"))
    mat = event.asset_materialization
    assert mat.metadata["dagster/row_count"].value == 1 and "gates_not_evaluated" in mat.description
    code, out = kairos("execute", "--picks", str(picks), "--execute", "--as-of", PRE_OPEN)
    assert code == 0 and "overridden by ops" in out, out
    assert rows(db, "SELECT count(*) FROM execution_orders")[0][0] == 4


def _losing_track(db, weeks):
    """`weeks` rebalances measured by the morning of REB (the last one ended at the open of the week before;
    the week just before REB ends at REB's open), each losing 1% (±0.2%): a negative live Sharpe."""
    from kairos_dagster.broker.performance import SUMMARY_SCHEMA
    from kairos_dagster.warehouse import store

    dates = [REB - dt.timedelta(weeks=weeks + 1 - i) for i in range(weeks)]
    frame = pl.DataFrame({"date": dates, "next_date": [d + dt.timedelta(weeks=1) for d in dates],
                          "status": ["executed"] * weeks,
                          "held_return": [-0.01 + 0.002 * (i % 2) for i in range(weeks)],
                          "backtest_return": [0.004] * weeks}).with_columns(
        *(pl.lit(None, dtype=t).alias(c) for c, t in SUMMARY_SCHEMA.items()
          if c not in {"date", "next_date", "status", "held_return", "backtest_return"})).select(list(SUMMARY_SCHEMA))
    with duckdb.connect(str(db)) as con:
        store.replace_table(con, "rebalance_performance", frame.cast(SUMMARY_SCHEMA))


def test_tripped_kill_switches_block_execute_until_each_is_overridden(env, monkeypatch):
    """A 4% loss over the last session (max_daily_loss 3%) and a negative live Sharpe over the last 4 tracked
    rebalances (KAIROS_LIVE_SHARPE_WEEKS=4) block `--execute`; a preview still shows the plan; each override is a
    typed record and execution goes through once both are excused."""
    db, picks, tmp = env
    monkeypatch.setenv("KAIROS_LIVE_SHARPE_WEEKS", "4")
    with duckdb.connect(str(db)) as con:  # the account holds AAA and BBB; both halve on the session before REB
        from kairos_dagster.broker.simulated import SimulatedBroker

        SimulatedBroker(con, clock=lambda: dt.datetime(2026, 1, 14, 12, tzinfo=NY), starting_cash=92_000.0)
        con.execute("INSERT INTO sim_positions VALUES ('sim-paper', 'AAA', 80, 50, DATE '2026-01-14'), "
                    "('sim-paper', 'BBB', 40, 100, DATE '2026-01-14')")
        con.execute("UPDATE sep_base SET close = close / 2, closeunadj = closeunadj / 2, closeadj = closeadj / 2 "
                    "WHERE ticker IN ('AAA', 'BBB') AND date = '2026-01-15'")
    _losing_track(db, 3)  # 3 of 4 weeks: the Sharpe switch is not armed yet
    code, out = kairos("approve", "--date", REB.isoformat(), "--by", "alice")
    assert code == 0, out
    code, out = kairos("execute", "--picks", str(picks), "--as-of", PRE_OPEN)
    assert code == 0 and "Preview: nothing submitted" in out, out  # the preview still works
    assert "[FAIL] max_daily_loss: kill switch: the account's change over the session of 2026-01-15: -4.00%" in out, out
    assert "[PASS] min_live_sharpe: kill switch: not armed: 3 of 4 tracked rebalances" in out, out
    _losing_track(db, 4)
    code, out = kairos("execute", "--picks", str(picks), "--execute", "--as-of", PRE_OPEN)
    assert code == 1 and "REFUSED" in out, out
    assert "kill switch: the account's change over the session of 2026-01-15: -4.00%" in out and "--gate max_daily_loss" in out
    assert "min_live_sharpe: kill switch: live Sharpe -" in out and "over the last 4 rebalances" in out, out
    assert rows(db, "SELECT count(*) FROM sim_orders")[0][0] == 0
    state = dict(rows(db, "SELECT switch, tripped FROM kill_switch_evaluations WHERE rebalance_date = '2026-01-16'"))
    assert state == {"max_daily_loss": True, "min_live_sharpe": True, "live_vs_backtest_gap": True}

    code, out = kairos("override", "--date", REB.isoformat(), "--gate", "max_daily_loss", "--by", "carol",
                       "--note", "the loss is the test's halving, not the market")
    assert code == 0 and "recorded" in out, out
    code, out = kairos("execute", "--picks", str(picks), "--execute", "--as-of", PRE_OPEN)
    assert code == 1 and "min_live_sharpe" in out and "kill switch: the account" not in out.split("REFUSED")[1], out
    code, out = kairos("override", "--date", REB.isoformat(), "--gate", "min_live_sharpe", "--by", "carol",
                       "--note", "four weeks is too short to judge")
    assert code == 0, out
    code, out = kairos("execute", "--picks", str(picks), "--execute", "--as-of", PRE_OPEN)
    assert code == 0, out
    assert "(overridden by carol)" in out and rows(db, "SELECT count(*) FROM sim_orders")[0][0] > 0
    recs = rows(db, "SELECT gate, overridden_by, os_user, host, note FROM gate_overrides ORDER BY gate")
    assert [r[:2] for r in recs] == [("max_daily_loss", "carol"), ("min_live_sharpe", "carol")]
    assert all(r[2] and r[3] and r[4] for r in recs)
    assert dict(rows(db, "SELECT switch, overridden_by FROM kill_switch_evaluations")) == {
        "max_daily_loss": "carol", "min_live_sharpe": "carol", "live_vs_backtest_gap": None}
    code, out = kairos("override", "--date", REB.isoformat(), "--gate", "max_daily_los", "--by", "x", "--note", "y")
    assert code == 2 and "is not an execution gate" in out and "min_live_sharpe" in out, out
