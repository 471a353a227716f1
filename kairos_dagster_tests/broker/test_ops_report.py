"""The ops report from a real DuckDB warehouse: what `gather` reads for a week, the numbers it derives, and
the page rendered in headless Chromium with every section and picture."""

import datetime as dt
import json

import polars as pl
import pytest

from kairos_dagster.broker import kill_switches as ks
from kairos_dagster.broker import ops_report as core
from kairos_dagster.broker.performance import SUMMARY_SCHEMA
from kairos_dagster.ml.metrics import ML_METRICS_SCHEMA
from kairos_dagster.portfolio import gate_records
from kairos_dagster.portfolio.gates import GateResult
from kairos_dagster.warehouse import store
from kairos_dagster_tests.fixtures.browser import IMAGES_JS, SECTIONS_JS, needs_browser, open_page
from kairos_dagster_tests.fixtures.execution_setup import REB, build_sep

WEEK = dt.date(2026, 1, 12)
UTC = dt.UTC


def _perf(dates, held, backtest, market):
    n = len(dates)
    base = {c: [None] * n for c in SUMMARY_SCHEMA}
    base |= {"date": dates, "next_date": [d + dt.timedelta(weeks=1) for d in dates], "status": ["executed"] * n,
             "held_return": held, "backtest_return": backtest, "market_return": market,
             "picks_return": held, "universe_ew_return": market, "shortfall_bps": [4.0] * n}
    return pl.DataFrame(base, schema=SUMMARY_SCHEMA)


@pytest.fixture
def week(tmp_path):
    db = tmp_path / "k.duckdb"
    build_sep(db)  # AAA..DDD through 2026-01-23: fresh for the signal date 2026-01-15
    out = tmp_path / "outputs"
    with store.connect(db) as con:
        con.execute("CREATE TABLE feat_stale (ticker VARCHAR, date DATE)")
        con.execute("INSERT INTO feat_stale VALUES ('AAA', DATE '2026-01-09')")  # 4 sessions behind 01-15
        picks = pl.DataFrame({"date": [REB] * 4, "rank": [1, 2, 3, 4], "ticker": ["AAA", "BBB", "CCC", "DDD"],
                              "weight": [0.03, 0.03, 0.02, 0.01], "sector": ["Technology", "Technology", "Energy",
                                                                              "Utilities"],
                              "alpha_z": [2.0, 1.5, 1.0, 0.5], "price": [50.0, 100.0, 20.0, 80.0],
                              "shares": [60, 30, 100, 12]})
        store.replace_table(con, "rebalance_picks", picks)
        con.execute("""CREATE TABLE execution_orders AS SELECT * FROM (VALUES
            (DATE '2026-01-16', 'c1', 'AAA', 'buy', 60.0, 'filled', 60.0, 50.02, 50.0, NULL),
            (DATE '2026-01-16', 'c2', 'BBB', 'buy', 30.0, 'partially_filled', 10.0, 100.1, 100.0, NULL),
            (DATE '2026-01-16', 'c3', 'CCC', 'buy', 100.0, 'rejected', 0.0, NULL, 20.0, 'insufficient cash'))
            t(rebalance_date, client_order_id, ticker, side, qty, status, filled_qty, filled_avg_price, picks_price,
              reason)""")
        dates = [REB - dt.timedelta(weeks=k) for k in (3, 2, 1, 0)]
        store.replace_table(con, "rebalance_performance",
                            _perf(dates, [0.01, -0.02, 0.015, 0.005], [0.012, -0.018, 0.01, 0.004],
                                  [0.008, -0.01, 0.006, 0.002]))
        ks.record(con, REB, ks.evaluate(ks.KillSwitchConfig(live_sharpe_weeks=4), session=None,
                                        track=pl.DataFrame({"date": dates[:3], "held_return": [0.01, -0.02, 0.015],
                                                            "backtest_return": [None, None, None]},
                                                           schema={"date": pl.Date, "held_return": pl.Float64,
                                                                   "backtest_return": pl.Float64})),
                  "hash", dt.datetime(2026, 1, 16, 14, tzinfo=UTC))
        mondays = [WEEK - dt.timedelta(weeks=k) for k in range(30, 0, -1)]
        ic = pl.DataFrame({"model_name": "alpha_ml_v2_tuned_clf", "model_version": "v1", "fold": 1, "date": mondays,
                           "split": "oos", "metric": "rank_ic", "feature": None,
                           "value": [0.02 + 0.001 * (i % 5) for i in range(30)]}).select(list(ML_METRICS_SCHEMA))
        store.replace_table(con, "ml_metrics", ic.cast(ML_METRICS_SCHEMA))
        gate_records.record_gate_results(con, gate_records.gate_rows(
            REB, dt.date(2026, 1, 15), [GateResult("min_eligible_block", True, "block", "ok", None),
                                        GateResult("turnover", False, "warn", "turnover 62% > 50%", 0.62)], "hash",
            blocking={"min_eligible_block"}, run_id="r", now=dt.datetime(2026, 1, 15, 22, tzinfo=UTC)))
    folder = out / "rebalance" / REB.isoformat()
    folder.mkdir(parents=True)
    (folder / "portfolio_summary.json").write_text(json.dumps({"portfolio": {
        "n_positions": 4, "total_weight": 0.09, "top_5_weight": 0.09, "estimated_vol": 0.2,
        "sector_caps": {"Technology": 0.05, "Energy": 0.3, "Utilities": 0.1, "Health Care": 0.2}},
        "metrics": {"turnover_vs_prior": 0.21}}))
    runs = pl.DataFrame([
        {"run_id": "run-ok", "job": "weekly_pipeline_job", "status": "SUCCESS", "trigger": "friday_schedule",
         "partitions": "2026-01-12", "started": dt.datetime(2026, 1, 17, 2, tzinfo=UTC), "duration_s": 41.0},
        {"run_id": "run-bad", "job": "execution_job", "status": "FAILURE", "trigger": "execution_sensor",
         "partitions": "2026-01-12", "started": dt.datetime(2026, 1, 16, 14, tzinfo=UTC), "duration_s": 3.0}],
        schema=core.RUN_COLUMNS)
    checks = pl.DataFrame([{"asset": "execution_report", "check": "no_partial_fills", "passed": False,
                            "severity": "WARN", "description": "1 order(s): ['BBB']", "run_id": "run-ok"}],
                          schema=core.CHECK_COLUMNS)
    with store.connect(db, read_only=True) as con:
        return core.gather(con, WEEK, out, runs=runs, checks=checks)


def test_gather_reads_the_week_and_derives_its_numbers(week):
    assert (week.rebalance_date, week.signal_date) == (REB, dt.date(2026, 1, 15))
    fresh = {r["table"]: r for r in week.freshness.iter_rows(named=True)}
    assert not fresh["sep_base"]["stale"] and fresh["sep_base"]["sessions_behind"] == 0
    assert fresh["feat_stale"]["stale"] and fresh["feat_stale"]["sessions_behind"] == 4
    assert not fresh["rebalance_performance"]["daily"] and not fresh["rebalance_performance"]["stale"]
    sectors = {r["sector"]: r for r in week.sectors.iter_rows(named=True)}
    assert sectors["Technology"]["weight"] == pytest.approx(0.06) and sectors["Technology"]["cap"] == 0.05
    assert sectors["Technology"]["headroom"] == pytest.approx(-0.01)  # over its cap: shows negative
    assert sectors["Health Care"]["weight"] == 0.0  # a capped sector without picks is listed
    assert dict(zip(week.orders["ticker"], week.orders["outcome"], strict=True)) == {
        "AAA": "filled", "BBB": "partial", "CCC": "rejected"}
    h = week.headline
    assert (h["runs_failed"], h["stale_tables"], h["gates_failed"], h["orders_not_filled"]) == (1, 1, 1, 2)
    assert h["week_status"] == "executed (2026-01-16)" and h["week_return"] == pytest.approx(0.005)
    periods = {r["period"]: r for r in core.performance_periods(week.performance, REB).iter_rows(named=True)}
    assert periods["week"]["live (held)"] == pytest.approx(0.005)
    assert periods["since inception"]["live (held)"] == pytest.approx(1.01 * 0.98 * 1.015 * 1.005 - 1)
    assert periods["since inception"]["backtest (ml)"] == pytest.approx(1.012 * 0.982 * 1.01 * 1.004 - 1)
    assert periods["year to date (2026)"]["weeks"] == 3  # 2025-12-26 is last year's
    ic = core.trailing_ic(week.model_ic).row(0, named=True)
    last13 = pl.Series([0.02 + 0.001 * (i % 5) for i in range(30)]).tail(13)
    assert ic["ic_13w"] == pytest.approx(last13.mean()) and ic["icir_13w"] == pytest.approx(last13.mean() / last13.std())


@needs_browser
def test_the_ops_report_renders_in_headless_chromium_with_every_section_and_picture(week, tmp_path):
    from kairos_dagster.backtest.report import write_report

    pngs = core.pictures(week)
    assert set(pngs) == {"performance_chart", "sector_chart", "ic_chart"}
    path = write_report(tmp_path / "reports", core.report_name(REB),
                        core.render_html(week, pngs, generated_at=dt.datetime(2026, 1, 17, 13, tzinfo=UTC)))
    assert path.name == "ops_report_20260116.html"
    with open_page(path.as_uri()) as page:
        images = page.evaluate(IMAGES_JS)
        sections = page.evaluate(SECTIONS_JS)
        bad_rows = page.locator("tr.bad").count()
        cards = page.locator(".card").all_inner_texts()
        text = page.inner_text("body")
    assert sections == list(core.SECTIONS)
    assert sorted(alt for alt, *_ in images) == sorted(pngs)
    assert all(done and w > 300 and h > 100 for _, done, w, h in images), images
    assert bad_rows >= 2  # the failed run and the stale table are marked
    assert any("1 of 2 failed" in c for c in cards) and any("1 stale table" in c for c in cards)
    for needle in ("weekly_pipeline_job", "no_partial_fills", "turnover 62% > 50%", "feat_stale", "insufficient cash",
                   "since inception", "min_live_sharpe", "alpha_ml_v2_tuned_clf", "+4.0 bps"):
        assert needle in text, needle


def test_a_broken_portfolio_summary_is_named(tmp_path):
    db = tmp_path / "k.duckdb"
    build_sep(db)
    folder = tmp_path / "out" / "rebalance" / REB.isoformat()
    folder.mkdir(parents=True)
    (folder / "portfolio_summary.json").write_text('{"portfolio": ')
    empty = pl.DataFrame(schema=core.RUN_COLUMNS)
    with store.connect(db, read_only=True) as con, pytest.raises(ValueError, match="portfolio_summary.json is not a "
                                                                                 "readable portfolio_summary.json"):
        core.gather(con, WEEK, tmp_path / "out", runs=empty, checks=pl.DataFrame(schema=core.CHECK_COLUMNS))
