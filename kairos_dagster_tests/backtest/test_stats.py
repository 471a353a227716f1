"""strategy_stats against empyrical-reloaded on the same daily returns, and hand-computed metrics."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import polars as pl
import pytest

from kairos_dagster import calendar as cal
from kairos_dagster.backtest import stats

empyrical = pytest.importorskip("empyrical")


def _daily(name: str, r: np.ndarray, days: list[dt.date]) -> pl.DataFrame:
    return pl.DataFrame({"strategy": name, "date": days, "ret_net": r, "ret_gross": r + 0.0001,
                         "turnover": [0.1 if d.weekday() == 4 else 0.0 for d in days],
                         "n_positions": [75] * len(days), "cost": 0.0})


@pytest.fixture(scope="module")
def world():
    days = cal.sessions_between(dt.date(2023, 1, 3), dt.date(2025, 6, 30))
    rng = np.random.default_rng(7)
    m = rng.normal(0.0004, 0.011, len(days))
    r = 0.0002 + 1.1 * m + rng.normal(0, 0.006, len(days))
    b = 0.9 * m + rng.normal(0, 0.003, len(days))
    daily = pl.concat([_daily("ml", r, days), _daily("market", m, days), _daily("universe_ew", b, days)])
    return days, r, m, b, stats.strategy_stats(daily)


def test_metrics_equal_empyrical(world):
    days, r, m, _, table = world
    row = table.filter((pl.col("strategy") == "ml") & (pl.col("period") == "full")).row(0, named=True)
    rs, ms = pd.Series(r, index=pd.DatetimeIndex(days)), pd.Series(m, index=pd.DatetimeIndex(days))
    alpha, beta = empyrical.alpha_beta(rs, ms)
    expected = {"annual_return": empyrical.annual_return(rs), "annual_volatility": empyrical.annual_volatility(rs),
                "sharpe": empyrical.sharpe_ratio(rs), "sortino": empyrical.sortino_ratio(rs),
                "max_drawdown": empyrical.max_drawdown(rs), "calmar": empyrical.calmar_ratio(rs),
                "alpha": alpha, "beta": beta}
    for name, value in expected.items():
        assert row[name] == pytest.approx(float(value), rel=1e-9, abs=1e-12), name


def test_hand_computed_drawdown_tracking_and_turnover():
    days = cal.sessions_between(dt.date(2024, 1, 2), dt.date(2024, 1, 12))  # 9 sessions, two weeks
    r = np.array([0.10, -0.20, 0.05, -0.10, 0.30, 0.0, 0.01, -0.01, 0.02])
    b = np.full(len(days), 0.01)
    daily = pl.concat([_daily("ml", r, days), _daily("universe_ew", b, days)])
    row = stats.strategy_stats(daily).filter((pl.col("strategy") == "ml") & (pl.col("period") == "full")).row(
        0, named=True)
    wealth = np.cumprod(1 + r)  # 1.1, 0.88, 0.924, 0.8316, 1.08108, ...
    assert row["max_drawdown"] == pytest.approx(0.8316 / 1.1 - 1, rel=1e-12)
    assert (row["max_drawdown_start"], row["max_drawdown_trough"]) == (days[0], days[3])
    assert row["total_return"] == pytest.approx(wealth[-1] - 1, rel=1e-12)
    active = r - b
    te = np.std(active, ddof=1) * math.sqrt(252)
    assert row["tracking_error"] == pytest.approx(te, rel=1e-12)
    assert row["information_ratio"] == pytest.approx(active.mean() * 252 / te, rel=1e-12)
    # Two Fridays with turnover 0.1 over two weeks; a cost drag of 1 bp a day.
    assert row["avg_weekly_turnover"] == pytest.approx(0.1, rel=1e-12)
    assert row["annual_cost_drag"] == pytest.approx(0.0001 * 252, rel=1e-9)
    # Weeks: (1.1 x 0.8 x 1.05 x 0.9) - 1 < 0; the second week's compounded return is > 0.
    assert row["weekly_hit_rate"] == pytest.approx(0.5)


def test_periods_cover_years_the_last_52_weeks_and_regimes(world):
    days, *_, table = world
    ml = table.filter(pl.col("strategy") == "ml")
    assert set(ml["period"]) >= {"full", "2023", "2024", "2025", "last_52w"}
    assert ml.filter(pl.col("period") == "2024")["sessions"].item() == len([d for d in days if d.year == 2024])
    regimes = pl.DataFrame({"date": days, "regime": ["normal_vol_bull" if d.month % 2 else "high_vol_bear" for d in days]})
    daily = _daily("ml", np.full(len(days), 0.001), days)
    with_regimes = stats.strategy_stats(daily, regimes)
    bull = with_regimes.filter(pl.col("period") == "regime:normal_vol_bull")
    assert bull["sessions"].item() == sum(d.month % 2 for d in days)
    # The benchmark has no alpha or tracking error against itself.
    ew = table.filter((pl.col("strategy") == "universe_ew") & (pl.col("period") == "full")).row(0, named=True)
    assert math.isnan(ew["tracking_error"]) and not math.isnan(ew["beta"])
