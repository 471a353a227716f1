"""Small deterministic inputs for the portfolio tests: a feat_matrix_v2 slice and trailing returns."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

from kairos_dagster import calendar as cal
from kairos_dagster.sources.schemas import SECTORS

SIGNAL_DATE = dt.date(2026, 1, 15)  # a Thursday session; the week's rebalance is Friday 2026-01-16


def make_frame(n: int, seed: int = 0, signal_date: dt.date = SIGNAL_DATE, alpha: str = "alpha_ml_v2_tuned_clf",
               n_sectors: int = len(SECTORS)) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({
        "date": [signal_date] * n,
        "ticker": [f"T{i:05d}" for i in range(n)],
        "sector": [SECTORS[i % n_sectors] for i in range(n)],
        alpha: rng.normal(0.5, 0.1, n),
        "alpha_composite_v8": rng.normal(0.0, 1.0, n),
        "vol_blend": rng.uniform(0.15, 0.6, n),
        "adv_20": rng.lognormal(16.0, 1.0, n),
        "price": rng.uniform(5.0, 300.0, n),
    })


def make_returns(tickers: list[str], signal_date: dt.date = SIGNAL_DATE, n_days: int = 63, seed: int = 1,
                 daily_vol: float = 0.02, corr: float = 0.3) -> pl.DataFrame:
    """One-factor daily returns over the n_days sessions ending at signal_date."""
    rng = np.random.default_rng(seed)
    days = cal.sessions_array(cal.sessions_offset(signal_date, -(n_days - 1)), signal_date)
    m = rng.normal(0, 1, (len(days), 1))
    e = rng.normal(0, 1, (len(days), len(tickers)))
    r = daily_vol * (np.sqrt(corr) * m + np.sqrt(1 - corr) * e)
    return pl.DataFrame({
        "ticker": np.repeat(np.array(tickers), len(days)),
        "date": np.tile(days, len(tickers)),
        "ret": r.T.reshape(-1),
    }).with_columns(pl.col("date").cast(pl.Date))
