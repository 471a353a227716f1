"""A small warehouse for the rebalance tests: feat_matrix_v2, sep_base and regime_history_academic rows
written straight into a temp DuckDB (deterministic; alphas persist week to week like a real signal)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl

from kairos_dagster import calendar as cal
from kairos_dagster.sources.schemas import SECTORS
from kairos_dagster.warehouse import store

N_TICKERS = 240
MATRIX_START, MATRIX_END = dt.date(2025, 12, 29), dt.date(2026, 2, 6)  # sessions with feat_matrix_v2 rows
SEP_START = dt.date(2025, 8, 1)
LOW_COVERAGE_DATE = dt.date(2026, 2, 5)  # alpha_ml_v2_tuned_clf null for 20% of rows on this date only


def build_warehouse(path: Path, n: int = N_TICKERS, seed: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    tickers = [f"T{i:04d}" for i in range(n)]
    sep_days = cal.sessions_array(SEP_START, MATRIX_END)
    # Prices: one-factor random walks; the unadjusted price is what shares are sized with.
    rets = 0.012 * rng.standard_normal((len(sep_days), 1)) + 0.018 * rng.standard_normal((len(sep_days), n))
    closeadj = 50.0 * np.exp(np.cumsum(rets, axis=0)) * rng.uniform(0.3, 4.0, n)
    sep = pl.DataFrame({
        "ticker": np.tile(np.array(tickers), len(sep_days)),
        "date": np.repeat(sep_days, n),
        "closeadj": closeadj.reshape(-1),
    }).with_columns(pl.col("date").cast(pl.Date), pl.col("closeadj").alias("closeunadj"))
    days = cal.sessions_array(MATRIX_START, MATRIX_END)
    base_alpha = rng.normal(0.5, 0.1, n)
    alpha = base_alpha + 0.03 * np.cumsum(rng.standard_normal((len(days), n)), axis=0)
    price = sep.filter(pl.col("date") >= MATRIX_START).sort("date", "ticker").get_column("closeunadj").to_numpy()
    matrix = pl.DataFrame({
        "ticker": np.tile(np.array(tickers), len(days)),
        "date": np.repeat(days, n),
        "alpha_ml_v2_tuned_clf": alpha.reshape(-1),
        "alpha_ml_v2_clf": alpha.reshape(-1) + rng.normal(0, 0.01, alpha.size),
        "alpha_composite_v8": rng.normal(0, 1, alpha.size),
        "vol_blend": np.tile(rng.uniform(0.15, 0.6, n), len(days)),
        "adv_20": np.tile(rng.lognormal(17.0, 1.0, n), len(days)),
        "sector": np.tile(np.array([SECTORS[i % len(SECTORS)] for i in range(n)]), len(days)),
        "price": price,
    }).with_columns(pl.col("date").cast(pl.Date))
    low = (pl.col("date") == LOW_COVERAGE_DATE) & (pl.col("ticker").str.slice(1).cast(pl.Int64) % 5 == 0)
    matrix = matrix.with_columns(pl.when(low).then(None).otherwise(pl.col("alpha_ml_v2_tuned_clf"))
                                 .alias("alpha_ml_v2_tuned_clf"))
    regimes = pl.DataFrame({"date": days}).with_columns(
        pl.col("date").cast(pl.Date), pl.lit("normal_vol_bull").alias("regime"), pl.lit("normal_vol").alias("vol_regime"),
        pl.lit("bull").alias("trend_regime"))
    matrix = matrix.join(regimes, on="date", how="left")
    with store.connect(path) as con:
        store.replace_table(con, "sep_base", sep)
        store.replace_table(con, "feat_matrix_v2", matrix)
        store.replace_table(con, "regime_history_academic", regimes)
    return path
