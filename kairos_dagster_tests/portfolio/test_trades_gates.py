import datetime as dt

import polars as pl
import pytest

from kairos_dagster.portfolio.config import ML_CONFIG
from kairos_dagster.portfolio.gates import blocking_failures, evaluate_gates, verdict
from kairos_dagster.portfolio.risk4 import build_portfolio
from kairos_dagster.portfolio.trades import TRADES_COLUMNS, TradePlanError, plan_trades
from kairos_dagster.sources.schemas import SECTORS
from kairos_dagster_tests.fixtures.portfolio_frames import SIGNAL_DATE, make_frame, make_returns

PICKS = pl.DataFrame({"ticker": ["A", "B", "C"], "shares": [10, 5, 3], "price": [10.0, 20.0, 30.0]})
HOLD = pl.DataFrame({"ticker": ["B", "C", "D", "E"], "shares": [8, 1, 4, 0], "price": [19.0, 29.0, 50.0, 5.0]})


def test_plan_trades_reasons_values_and_order():
    t = plan_trades(PICKS, HOLD, pl.DataFrame({"ticker": ["A"], "price": [11.0]}))
    assert t.columns == list(TRADES_COLUMNS)
    assert t.rows() == [
        ("B", "SELL", 3, 60.0, 100.0, 160.0, 20.0, "decrease_weight"),
        ("D", "SELL", 4, 200.0, 0.0, 200.0, 50.0, "exit_position"),
        ("A", "BUY", 10, 110.0, 110.0, 0.0, 11.0, "new_position"),
        ("C", "BUY", 2, 60.0, 90.0, 30.0, 30.0, "increase_weight"),
    ]
    # Same inputs in another row order: same plan.
    assert plan_trades(PICKS.reverse(), HOLD.reverse(), pl.DataFrame({"ticker": ["A"], "price": [11.0]})).equals(t)
    fresh = plan_trades(PICKS, None)
    assert fresh.get_column("reason").to_list() == ["new_position"] * 3 and (fresh["action"] == "BUY").all()


def test_plan_trades_rejects_bad_holdings_and_unpriced_names():
    with pytest.raises(TradePlanError, match="current holdings: shares for B is -1"):
        plan_trades(PICKS, pl.DataFrame({"ticker": ["B"], "shares": [-1]}))
    with pytest.raises(TradePlanError, match="current holdings: shares for B is 1.5"):
        plan_trades(PICKS, pl.DataFrame({"ticker": ["B"], "shares": [1.5]}))
    with pytest.raises(TradePlanError, match=r"current holdings have duplicate tickers: \['B'\]"):
        plan_trades(PICKS, pl.DataFrame({"ticker": ["B", "B"], "shares": [1, 2]}))
    with pytest.raises(TradePlanError, match=r"no positive price to trade \['Z'\]"):
        plan_trades(PICKS, pl.DataFrame({"ticker": ["Z"], "shares": [3]}))
    with pytest.raises(TradePlanError, match="picks lack column"):
        plan_trades(PICKS.drop("shares"), None)


def _result(n, n_sec=11, seed=0, alpha_null=0, cfg=ML_CONFIG, prior=None):
    f = make_frame(n, seed=seed, n_sectors=n_sec).with_columns(pl.lit(1e8).alias("adv_20"))
    if alpha_null:
        f = f.with_columns(pl.when(pl.int_range(pl.len()) < alpha_null).then(None)
                           .otherwise(pl.col(cfg.alpha_column)).alias(cfg.alpha_column))
    return build_portfolio(f, prior, make_returns(f.get_column("ticker").to_list(), n_days=30), cfg)


def _by_name(gates):
    return {g.name: g for g in gates}


def test_gates_pass_on_a_healthy_universe():
    gates = evaluate_gates(SIGNAL_DATE, [SIGNAL_DATE - dt.timedelta(days=1), SIGNAL_DATE], _result(600), ML_CONFIG)
    assert all(g.passed for g in gates) and blocking_failures(gates) == []
    assert [g.name for g in gates] == ["feat_matrix_has_signal_date", "ml_alpha_coverage", "min_eligible_block",
                                       "min_eligible_warn", "sector_coverage", "turnover", "max_position"]


def test_stale_feat_matrix_blocks():
    g = evaluate_gates(SIGNAL_DATE, [dt.date(2026, 1, 14)], None, ML_CONFIG)
    fails = blocking_failures(g)
    assert fails[0].name == "feat_matrix_has_signal_date" and "CRITICAL" in fails[0].message
    assert "latest 2026-01-14" in fails[0].message
    # The blocking gates that need the portfolio block, recorded as not evaluated with the reason; the
    # warn gates are skipped with it: one cause, not seven failures.
    assert [x.name for x in fails] == ["feat_matrix_has_signal_date", "ml_alpha_coverage", "min_eligible_block"]
    assert all(x.message == "not evaluated: no portfolio was built (no feat_matrix_v2 rows at 2026-01-15)"
               and not x.evaluated for x in fails[1:])
    warn = [x for x in g if x.severity == "warn"]
    assert [x.name for x in warn] == ["min_eligible_warn", "sector_coverage", "turnover", "max_position"]
    assert all(x.passed and x.skipped and x.message.startswith("skipped: no portfolio was built") for x in warn)
    assert {verdict(x) for x in warn} == {"SKIP"} and verdict(fails[1]) == "BLOCK"


def test_alpha_coverage_and_eligible_count_gates():
    r = _result(600, alpha_null=40)  # 560 / 600 = 93.3% < 95%
    g = _by_name(evaluate_gates(SIGNAL_DATE, [SIGNAL_DATE], r, ML_CONFIG))
    assert g["ml_alpha_coverage"].blocks and g["ml_alpha_coverage"].value == pytest.approx(560 / 600)
    r = _result(40)
    g = _by_name(evaluate_gates(SIGNAL_DATE, [SIGNAL_DATE], r, ML_CONFIG))
    assert g["min_eligible_block"].blocks and not g["min_eligible_warn"].passed
    r = _result(300)
    g = _by_name(evaluate_gates(SIGNAL_DATE, [SIGNAL_DATE], r, ML_CONFIG))
    assert g["min_eligible_block"].passed and not g["min_eligible_warn"].passed
    assert g["min_eligible_warn"].severity == "warn" and not g["min_eligible_warn"].blocks


def test_sector_turnover_and_position_warnings():
    r = _result(600, n_sec=10)
    g = _by_name(evaluate_gates(SIGNAL_DATE, [SIGNAL_DATE], r, ML_CONFIG))
    assert not g["sector_coverage"].passed and g["sector_coverage"].value == 10 and not g["sector_coverage"].blocks
    assert len(SECTORS) == 11
    # No turnover cap and no smoothing: a new alpha replaces most of the book, > 50% one-way.
    cfg = ML_CONFIG.with_overrides(max_turnover=1.0, lambda_tc=0.0, max_position_pct=0.08, top_n=15)
    first = _result(600, cfg=cfg)
    second = _result(600, seed=9, cfg=cfg, prior=first.picks.select("ticker", "weight", "sector"))
    g = _by_name(evaluate_gates(SIGNAL_DATE, [SIGNAL_DATE], second, cfg))
    assert second.turnover_final > 0.5 and not g["turnover"].passed and g["turnover"].severity == "warn"
    assert not g["max_position"].passed and g["max_position"].value > 0.05
    assert blocking_failures(g.values()) == []
