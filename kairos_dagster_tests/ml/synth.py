"""A small market with a planted signal for the ML tests (built here, no other module needed)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

from kairos_dagster.calendar import sessions_array

SIGNAL = ["f_signal_a", "f_signal_b"]
NOISE = ["f_noise_1", "f_noise_2", "f_noise_3"]
FEATURES = [*SIGNAL, *NOISE, "sector"]


def make_market(start: dt.date, end: dt.date, n_tickers: int = 60, seed: int = 0,
                strength: float = 0.25) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(features keyed ticker, date; feat_targets with ret_5d_f and label_top_quintile_5d).

    ret_5d_f = strength * (a + 0.5 * b) + noise, so the two signal features predict the forward
    return with a small rank IC; the last 5 sessions have null targets (incomplete horizon).
    """
    rng = np.random.default_rng(seed)
    days = sessions_array(start, end)
    n_d, n_t = len(days), n_tickers
    tickers = np.array([f"T{i:03d}" for i in range(n_t)])
    a, b = rng.standard_normal((2, n_d, n_t))
    noise_feats = rng.standard_normal((3, n_d, n_t))
    ret = strength * (a + 0.5 * b) + rng.standard_normal((n_d, n_t))
    sector = np.array(["Tech", "Energy", "Health"])[np.arange(n_t) % 3]
    date_col = np.repeat(days, n_t)
    feats = pl.DataFrame({
        "ticker": np.tile(tickers, n_d), "date": date_col,
        "f_signal_a": a.ravel(), "f_signal_b": b.ravel(),
        "f_noise_1": noise_feats[0].ravel(), "f_noise_2": noise_feats[1].ravel(),
        "f_noise_3": noise_feats[2].ravel(), "sector": np.tile(sector, n_d),
    }).with_columns(pl.col("date").cast(pl.Date))
    ret_flat = ret.ravel().copy()
    incomplete = np.repeat(np.arange(n_d) >= n_d - 5, n_t)
    targets = pl.DataFrame({"ticker": np.tile(tickers, n_d), "date": date_col, "ret_5d_f": ret_flat})
    targets = targets.with_columns(
        pl.col("date").cast(pl.Date),
        pl.when(pl.Series(incomplete)).then(None).otherwise(pl.col("ret_5d_f")).alias("ret_5d_f"),
    ).with_columns(
        pl.when(pl.col("ret_5d_f").is_null()).then(None)
        .otherwise((pl.col("ret_5d_f").rank("ordinal").over("date") > 0.8 * pl.len().over("date")).cast(pl.Int8))
        .alias("label_top_quintile_5d")
    )
    return feats, targets
