"""Each Risk4 step on small hand-computed cases."""

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest

from kairos_dagster import calendar as cal
from kairos_dagster.portfolio.config import ML_CONFIG
from kairos_dagster.portfolio.risk4 import (
    PortfolioInputError,
    apply_caps,
    base_weights,
    build_portfolio,
    check_caps,
    estimate_portfolio_vol,
    filter_adv,
    score_and_rank,
    select_top_n,
    shares_for,
    signal_rows,
    smooth_turnover,
    universe_sector_weights,
    validate_prior,
    vol_scale,
)
from kairos_dagster_tests.fixtures.portfolio_frames import SIGNAL_DATE, make_frame, make_returns

A = "alpha_ml_v2_tuned_clf"


def _frame(**cols):
    n = len(cols["ticker"])
    base = {"sector": ["Tech"] * n, A: [0.0] * n, "vol_blend": [0.2] * n, "adv_20": [5e6] * n, "price": [10.0] * n}
    base.update(cols)
    return pl.DataFrame(base)


def test_step1_drops_and_counts_rows_missing_sector_vol_or_price():
    f = _frame(ticker=["E", "A", "B", "C", "D", "F"], sector=["Tech", None, "Tech", "Tech", "Tech", ""],
               vol_blend=[0.2, 0.2, float("nan"), 0.0, 0.3, 0.2], price=[10.0, 10, 10, 10, None, 10])
    kept, dropped = signal_rows(f, ML_CONFIG)
    assert kept.get_column("ticker").to_list() == ["E"]
    assert kept.columns == ["ticker", "sector", "alpha", "vol_blend", "adv_20", "price"]
    assert dict(dropped.iter_rows()) == {"A": "missing_sector", "B": "missing_vol", "C": "missing_vol",
                                         "D": "missing_price", "F": "missing_sector"}


def test_step1_rejects_bad_frames_with_a_clear_error():
    with pytest.raises(PortfolioInputError, match="lack column.*alpha_ml_v2_tuned_clf"):
        signal_rows(_frame(ticker=["A"]).drop(A), ML_CONFIG)
    with pytest.raises(PortfolioInputError, match=r"duplicate tickers.*\['A'\]"):
        signal_rows(_frame(ticker=["A", "A", "B"]), ML_CONFIG)
    dated = _frame(ticker=["A"]).with_columns(pl.lit(dt.date(2026, 1, 14)).alias("date"))
    with pytest.raises(PortfolioInputError, match="no rows at signal date 2026-01-15"):
        signal_rows(dated, ML_CONFIG, SIGNAL_DATE)


def test_step2_adv_filter_keeps_the_boundary_and_drops_missing():
    f = _frame(ticker=["A", "B", "C", "D"], adv_20=[2e6, 1999999.0, None, 3e6])
    kept, n = filter_adv(signal_rows(f, ML_CONFIG)[0], 2e6)
    assert kept.get_column("ticker").to_list() == ["A", "D"] and n == 2


def test_step3_zscore_population_std_clip_and_ticker_tiebreak():
    f = pl.DataFrame({"ticker": ["D", "C", "B", "A"], "alpha": [1.0, 2.0, 3.0, 4.0]})
    r = score_and_rank(f, 3.0)
    s = math.sqrt(1.25)  # population std of 1..4
    assert r.get_column("ticker").to_list() == ["A", "B", "C", "D"]
    assert r.get_column("alpha_z").to_list() == pytest.approx([1.5 / s, 0.5 / s, -0.5 / s, -1.5 / s])
    assert r.get_column("rank").to_list() == [1, 2, 3, 4]
    # One outlier among nine zeros: mean 1, population std 3, z = 3; clipped at 2; ties broken by ticker.
    f = pl.DataFrame({"ticker": [f"T{i}" for i in range(9, -1, -1)], "alpha": [10.0] + [0.0] * 9})
    r = score_and_rank(f, 2.0)
    assert r.get_column("alpha_z")[0] == 2.0 and r.get_column("ticker")[0] == "T9"
    assert r.get_column("alpha_z")[1] == pytest.approx(-1 / 3)
    assert r.get_column("ticker")[1:].to_list() == [f"T{i}" for i in range(9)]
    assert select_top_n(r, 3).get_column("ticker").to_list() == ["T9", "T0", "T1"]
    # No spread: no information, every z is 0.
    assert score_and_rank(pl.DataFrame({"ticker": ["A", "B"], "alpha": [1.0, 1.0]}), 3.0)["alpha_z"].to_list() == [0, 0]


def test_step4_base_weights_alpha_over_vol_for_positive_alpha():
    f = pl.DataFrame({"ticker": ["A", "B", "C"], "alpha_z": [2.0, 1.0, -1.0], "vol_blend": [0.2, 0.5, 0.3]})
    w = base_weights(f).get_column("weight").to_list()  # raw 10, 2, 0
    assert w == pytest.approx([10 / 12, 2 / 12, 0.0])
    assert base_weights(f.with_columns(pl.lit(-1.0).alias("alpha_z")))["weight"].to_list() == [0, 0, 0]


def test_universe_sector_weights_by_count_with_hard_cap():
    f = pl.DataFrame({"sector": ["X"] * 6 + ["Y"] * 3 + ["Z"]})
    u = universe_sector_weights(f, ML_CONFIG)
    assert u.get_column("universe_weight").to_list() == pytest.approx([0.6, 0.3, 0.1])
    assert u.get_column("cap").to_list() == pytest.approx([0.4, 0.4, 0.2])  # min(2x, 0.40)


def test_step5_water_filling_hand_case():
    # b = 0.4, 0.3 (sector A, cap 0.5), 0.2, 0.1 (sector B, cap 1); position cap 0.3.
    # B is not sector-bound: b1 hits 0.3, b2 = 0.1 g with g = 2 -> 0.2. A is bound: 0.7 h = 0.5 (a1 stays < 0.3).
    w = pl.DataFrame({"ticker": ["a1", "a2", "b1", "b2"], "sector": ["A", "A", "B", "B"], "weight": [0.4, 0.3, 0.2, 0.1]})
    caps = pl.DataFrame({"sector": ["A", "B"], "cap": [0.5, 1.0]})
    r = apply_caps(w, caps, 0.3)
    assert r.weights.get_column("weight").to_list() == pytest.approx([2 / 7, 1.5 / 7, 0.3, 0.2], abs=1e-12)
    assert r.feasible and r.cash_weight == 0.0 and r.reason is None
    assert check_caps(r.weights, caps, 0.3) == []


def test_step5_position_cap_redistributes_in_proportion():
    w = pl.DataFrame({"ticker": list("abcde"), "sector": ["S"] * 5, "weight": [0.6, 0.1, 0.1, 0.1, 0.1]})
    r = apply_caps(w, pl.DataFrame({"sector": ["S"], "cap": [1.0]}), 0.25)
    assert r.weights.get_column("weight").to_list() == pytest.approx([0.25, 0.1875, 0.1875, 0.1875, 0.1875])


def test_step5_infeasible_caps_leave_cash_and_say_so():
    w = pl.DataFrame({"ticker": ["a", "b", "c"], "sector": ["S", "S", "T"], "weight": [0.5, 0.3, 0.2]})
    r = apply_caps(w, pl.DataFrame({"sector": ["S", "T"], "cap": [1.0, 1.0]}), 0.3)
    assert r.weights.get_column("weight").to_list() == pytest.approx([0.3, 0.3, 0.3])
    assert not r.feasible and r.cash_weight == pytest.approx(0.1) and "rest is cash" in r.reason
    r = apply_caps(w, pl.DataFrame({"sector": ["S", "T"], "cap": [0.4, 0.15]}), 1.0)
    assert r.weights.get_column("weight").to_list() == pytest.approx([0.25, 0.15, 0.15])
    assert not r.feasible and r.cash_weight == pytest.approx(0.45)


def _caps(max_pos=1.0):
    return ML_CONFIG.with_overrides(max_position_pct=max_pos, max_turnover=0.1)


def test_step6_blend_and_turnover_cap_hand_case():
    prior = validate_prior(pl.DataFrame({"ticker": ["A", "B"], "weight": [0.5, 0.5]}))
    target = pl.DataFrame({"ticker": ["B", "C"], "weight": [0.5, 0.5]})
    sectors = pl.DataFrame({"ticker": ["A", "B", "C"], "sector": ["S"] * 3})
    caps = pl.DataFrame({"sector": ["S"], "cap": [1.0]})
    # Blend {A .25, B .5, C .25}: turnover 0.25 > 0.1, so the trade vector is scaled by 0.4.
    r = smooth_turnover(target, prior, sectors, caps, _caps())
    assert dict(r.weights.select("ticker", "weight").iter_rows()) == pytest.approx({"A": 0.4, "B": 0.5, "C": 0.1})
    assert r.turnover_blend == pytest.approx(0.25) and r.turnover == pytest.approx(0.1) and r.scaled
    assert r.cap_repair_weight == 0 and not r.fresh_start
    # Within the cap: the plain blend.
    r = smooth_turnover(target, prior, sectors, caps, _caps().with_overrides(max_turnover=0.3))
    assert dict(r.weights.select("ticker", "weight").iter_rows()) == pytest.approx({"A": 0.25, "B": 0.5, "C": 0.25})
    assert not r.scaled
    # Fresh start: the target itself.
    r = smooth_turnover(target, validate_prior(None), sectors, caps, _caps())
    assert dict(r.weights.select("ticker", "weight").iter_rows()) == pytest.approx({"B": 0.5, "C": 0.5})
    assert r.fresh_start


def test_step6_prior_that_breaks_todays_caps_is_repaired_to_cash():
    prior = validate_prior(pl.DataFrame({"ticker": ["A", "B"], "weight": [0.5, 0.5]}))
    target = pl.DataFrame({"ticker": ["B", "C"], "weight": [0.3, 0.3]})
    sectors = pl.DataFrame({"ticker": ["A", "B", "C"], "sector": ["S", "S", "T"]})
    caps = pl.DataFrame({"sector": ["S", "T"], "cap": [1.0, 1.0]})
    r = smooth_turnover(target, prior, sectors, caps, ML_CONFIG.with_overrides(max_position_pct=0.3, max_turnover=1.0))
    # Blend A .25, B .4 -> B clipped to 0.3; C .15.
    assert dict(r.weights.select("ticker", "weight").iter_rows()) == pytest.approx({"A": 0.25, "B": 0.3, "C": 0.15})
    assert r.cap_repair_weight == pytest.approx(0.1)
    assert check_caps(r.weights, caps, 0.3) == []


def test_validate_prior_rejects_bad_rows():
    with pytest.raises(PortfolioInputError, match="prior weight for B is -0.1"):
        validate_prior(pl.DataFrame({"ticker": ["A", "B"], "weight": [0.5, -0.1]}))
    with pytest.raises(PortfolioInputError, match="duplicate"):
        validate_prior(pl.DataFrame({"ticker": ["A", "A"], "weight": [0.5, 0.1]}))
    with pytest.raises(PortfolioInputError, match="sum to 1.2"):
        validate_prior(pl.DataFrame({"ticker": ["A", "B"], "weight": [0.6, 0.6]}))


def test_step7_without_shrinkage_equals_the_sample_covariance():
    rets = make_returns(["A", "B"], n_days=63)
    cfg = ML_CONFIG.with_overrides(cov_shrinkage=0.0)
    w = pl.DataFrame({"ticker": ["A", "B"], "weight": [0.6, 0.4], "vol_blend": [0.3, 0.3]})
    est = estimate_portfolio_vol(w, rets, SIGNAL_DATE, cfg)
    x = rets.pivot(on="ticker", index="date", values="ret").sort("date").select("A", "B").to_numpy()
    expect = math.sqrt(np.array([0.6, 0.4]) @ np.cov(x.T, ddof=1) @ np.array([0.6, 0.4]) * 252)
    assert est.est_vol == pytest.approx(expect, rel=1e-12)
    assert (est.n_with_history, est.n_fallback) == (2, 0)
    assert est.window_end == SIGNAL_DATE and est.window_start == cal.sessions_offset(SIGNAL_DATE, -62)
    # Full shrinkage: correlation = the constant r_bar target.
    est1 = estimate_portfolio_vol(w, rets, SIGNAL_DATE, cfg.with_overrides(cov_shrinkage=1.0))
    s = x.std(axis=0, ddof=1) * math.sqrt(252) * np.array([0.6, 0.4])
    r = max(np.corrcoef(x.T)[0, 1], 0.0)
    assert est1.est_vol == pytest.approx(math.sqrt(s @ np.array([[1, r], [r, 1]]) @ s), rel=1e-12)


def test_step7_missing_history_falls_back_to_vol_blend():
    rets = make_returns(["A"], n_days=10)  # fewer than cov_min_obs = 20
    w = pl.DataFrame({"ticker": ["A", "B"], "weight": [0.5, 0.5], "vol_blend": [0.4, None]})
    est = estimate_portfolio_vol(w, rets, SIGNAL_DATE, ML_CONFIG.with_overrides(cov_shrinkage=1.0), fallback_vol=0.2)
    rho = ML_CONFIG.cov_fallback_corr  # fewer than two names with history
    assert est.n_fallback == 2 and est.avg_corr == rho
    assert est.est_vol == pytest.approx(math.sqrt(0.2**2 + 0.1**2 + 2 * rho * 0.2 * 0.1))


def test_step7_rejects_look_ahead_and_bad_returns():
    w = pl.DataFrame({"ticker": ["A"], "weight": [1.0], "vol_blend": [0.3]})
    late = make_returns(["A"], signal_date=dt.date(2026, 1, 16), n_days=30)
    with pytest.raises(PortfolioInputError, match="after the signal date 2026-01-15.*A on 2026-01-16"):
        estimate_portfolio_vol(w, late, SIGNAL_DATE, ML_CONFIG)
    bad = make_returns(["A"], n_days=30).with_columns(pl.when(pl.col("date") == SIGNAL_DATE).then(float("inf"))
                                                      .otherwise(pl.col("ret")).alias("ret"))
    with pytest.raises(PortfolioInputError, match="non-finite ret for A on 2026-01-15"):
        estimate_portfolio_vol(w, bad, SIGNAL_DATE, ML_CONFIG)


def test_step7_vol_scale_target_gross_and_cap_room():
    caps = pl.DataFrame({"sector": ["S"], "cap": [1.0]})
    w = pl.DataFrame({"ticker": ["A", "B"], "sector": ["S", "S"], "weight": [0.02, 0.02]})
    cfg = ML_CONFIG  # target 0.25, max_gross 1, position cap 0.03
    assert vol_scale(w, 0.5, caps, cfg) == pytest.approx(0.5)
    assert vol_scale(w, 0.1, caps, cfg) == 1.0
    assert vol_scale(w, 0.1, caps, cfg.with_overrides(max_gross=0.8)) == pytest.approx(0.8)
    at_cap = w.with_columns(pl.lit(0.03).alias("weight"))
    assert vol_scale(at_cap, 0.1, caps, cfg) == pytest.approx(1.0)  # k <= max_gross <= 1: caps keep holding


def test_step8_shares_floor_with_round_off_guard():
    f = pl.DataFrame({"weight": [0.0285, 0.29, 0.0], "price": [195.5, 1.0, 50.0]})
    s = shares_for(f, 100_000)
    assert s.get_column("shares").to_list() == [14, 29000, 0]
    assert s.get_column("target_value").to_list() == pytest.approx([2850.0, 29000.0, 0.0])
    assert shares_for(pl.DataFrame({"weight": [0.29], "price": [1.0]}), 100)["shares"][0] == 29  # 28.999999999999996


def test_build_portfolio_end_to_end_and_prior_only_names():
    f = make_frame(300, seed=3)
    rets = make_returns(f.get_column("ticker").to_list())
    res = build_portfolio(f, None, rets, ML_CONFIG)
    p = res.picks
    assert p.columns == ["rank", "ticker", "weight", "weight_pre_vol", "sector", "alpha_z", "vol_blend", "adv_20",
                         "price", "target_value", "shares"]
    assert res.fresh_start and res.n_input == 300 and res.n_eligible == 300 - res.n_below_adv
    assert p.height == res.n_selected <= 75 and p.get_column("rank").is_sorted()
    assert res.caps_feasible and p.get_column("weight_pre_vol").sum() == pytest.approx(1.0)
    assert res.est_vol > 0 and res.est_vol_final == pytest.approx(min(res.est_vol, 0.25))  # k = min(target/est, 1)
    assert check_caps(p, res.universe_sector_weights, 0.03) == []
    # A prior name that is no longer in today's frame is still smoothed out, with the prior's sector;
    # it cannot be priced today, so it is a forced exit (listed, not silently dropped).
    prior = p.select("ticker", "weight", "sector").with_columns(pl.col("weight") * 0.9)
    prior = pl.concat([prior, pl.DataFrame({"ticker": ["GONE"], "weight": [0.02], "sector": [p["sector"][0]]})])
    res2 = build_portfolio(f, prior, rets, ML_CONFIG)
    assert res2.forced_exits.get_column("ticker").to_list() == ["GONE"]
    assert "GONE" not in res2.picks.get_column("ticker").to_list()
    # A name in today's frame but now below the ADV floor keeps a smoothed weight and has no rank.
    low = p.get_column("ticker")[0]
    f3 = f.with_columns(pl.when(pl.col("ticker") == low).then(1.0).otherwise(pl.col("adv_20")).alias("adv_20"))
    res3 = build_portfolio(f3, p.select("ticker", "weight", "sector"), rets, ML_CONFIG)
    row = res3.picks.filter(pl.col("ticker") == low)
    assert row.height == 1 and row["rank"][0] is None and row["weight"][0] > 0
    assert res3.picks.get_column("rank").is_null().to_list()[-1]  # unranked names sort last


def test_build_portfolio_at_5000_tickers_reports_timing(capsys):
    import time

    f = make_frame(5000, seed=11)
    rets = make_returns(f.get_column("ticker").to_list())
    first = build_portfolio(f, None, rets, ML_CONFIG)
    t0 = time.perf_counter()
    res = build_portfolio(f.with_columns(pl.col(A).reverse()), first.picks.select("ticker", "weight", "sector"),
                          rets, ML_CONFIG)
    elapsed = time.perf_counter() - t0  # reported, never asserted
    with capsys.disabled():
        print(f"\nbuild_portfolio: {res.n_eligible} eligible, {res.picks.height} positions in {elapsed:.3f}s")
    assert res.n_eligible > 4000 and check_caps(res.picks, res.universe_sector_weights, 0.03) == []
