"""Phase 5: market regime (regime_history_academic) from the daily market return.

Per date, with every window a fixed number of trailing sessions (values are null until a window is
full, and from then on do not depend on where history starts; ``vol_pct`` needs ``vol_pct_min``
values and is final once ``vol_pct_window`` are available):

- ``index_level``: the market index, cumulated from the returns (1.0 before the first return; the only
  column that is scaled by where history starts: use the ratios below, which are not),
- ``sma_200``: its 200-session mean; ``index_to_sma_200`` = index_level / sma_200 - 1,
- ``drawdown``: index_level / max(index_level over the last 252 sessions) - 1,
- ``vol_20``: annualized 20-session standard deviation (ddof=1) of the daily return,
- ``vol_pct``: share of the last 756 ``vol_20`` values (today's included) that are <= today's,
- ``trend_regime``: "bear" when the index is below its 200-session mean or in a drawdown of 20% or
  more, else "bull"; ``vol_regime``: "high_vol" when vol_pct >= 0.8, else "normal_vol";
  ``regime`` = f"{vol_regime}_{trend_regime}" (e.g. "normal_vol_bull"); null while a window warms up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from kairos_dagster import calendar

REGIMES: tuple[str, ...] = ("normal_vol_bull", "high_vol_bull", "normal_vol_bear", "high_vol_bear")


@dataclass(frozen=True)
class RegimeParams:
    sma_window: int = 200
    peak_window: int = 252
    bear_drawdown: float = -0.20
    vol_window: int = 20
    vol_pct_window: int = 756
    vol_pct_min: int = 252
    high_vol_pct: float = 0.80
    annualize: float = 252.0


def lookback_sessions(params: RegimeParams = RegimeParams()) -> int:
    """Sessions of market returns needed before a date for every value on it to be final."""
    return max(params.sma_window, params.peak_window, params.vol_window + params.vol_pct_window - 1)


def trailing_percentile(values: np.ndarray, window: int, min_count: int) -> np.ndarray:
    """Share of the last `window` finite values (current included) that are <= the current one; NaN if
    the current is NaN or fewer than `min_count` finite values are in the window."""
    n = len(values)
    padded = np.concatenate([np.full(window - 1, np.nan), values.astype(np.float64)])
    win = np.lib.stride_tricks.sliding_window_view(padded, window)  # row t: values[t-window+1 .. t]
    cur = values[:, None]
    valid = np.isfinite(win)
    count = valid.sum(axis=1)
    le = (valid & (win <= cur)).sum(axis=1)
    out = np.where((count >= min_count) & np.isfinite(values), le / np.maximum(count, 1), np.nan)
    return out if n else np.empty(0)


def _check(mkt_ret: pl.DataFrame) -> pl.DataFrame:
    missing = [c for c in ("date", "mkt_ret") if c not in mkt_ret.columns]
    if missing:
        raise ValueError(f"market_returns: missing columns {missing}")
    m = mkt_ret.select(pl.col("date").cast(pl.Date), pl.col("mkt_ret").cast(pl.Float64)).sort("date")
    bad = m.filter(pl.col("date").is_null() | ~pl.col("mkt_ret").is_finite() | pl.col("mkt_ret").is_null())
    if bad.height:
        raise ValueError(f"market_returns: {bad.height} rows with a missing or non-finite mkt_ret, e.g. {bad.head(3).rows()}")
    dup = m.filter(pl.col("date").is_duplicated())
    if dup.height:
        raise ValueError(f"market_returns: duplicate dates, e.g. {dup['date'].head(3).to_list()}")
    if m.height:
        sess = calendar.sessions_between(m["date"][0], m["date"][-1])
        if len(sess) != m.height:
            have = set(m["date"].to_list())
            gaps = [d for d in sess if d not in have][:3]
            extra = [d for d in m["date"].to_list() if d not in set(sess)][:3]
            raise ValueError(f"market_returns: not one row per XNYS session; missing {gaps}, non-sessions {extra}")
    return m


def regime_history(mkt_ret: pl.DataFrame, params: RegimeParams = RegimeParams()) -> pl.DataFrame:
    """regime_history_academic: one row per input date (see the module docstring for the columns)."""
    p = params
    m = _check(mkt_ret)
    lvl = pl.col("index_level")
    m = m.with_columns(index_level=(1.0 + pl.col("mkt_ret")).cum_prod()).with_columns(
        sma_200=lvl.rolling_mean(p.sma_window, min_samples=p.sma_window),
        drawdown=lvl / lvl.rolling_max(p.peak_window, min_samples=p.peak_window) - 1.0,
        vol_20=pl.col("mkt_ret").rolling_std(p.vol_window, min_samples=p.vol_window, ddof=1) * math.sqrt(p.annualize),
    )
    vol = m["vol_20"].fill_null(np.nan).to_numpy()
    pct = trailing_percentile(vol, p.vol_pct_window, p.vol_pct_min)
    m = m.with_columns(
        index_to_sma_200=lvl / pl.col("sma_200") - 1.0,
        vol_pct=pl.Series(pct).fill_nan(None),
    )
    trend = (
        pl.when(pl.col("index_to_sma_200").is_null() | pl.col("drawdown").is_null())
        .then(None)
        .when((pl.col("index_to_sma_200") < 0) | (pl.col("drawdown") <= p.bear_drawdown))
        .then(pl.lit("bear"))
        .otherwise(pl.lit("bull"))
    )
    volr = (
        pl.when(pl.col("vol_pct").is_null())
        .then(None)
        .when(pl.col("vol_pct") >= p.high_vol_pct)
        .then(pl.lit("high_vol"))
        .otherwise(pl.lit("normal_vol"))
    )
    m = m.with_columns(trend_regime=trend, vol_regime=volr).with_columns(
        regime=pl.concat_str(["vol_regime", "trend_regime"], separator="_")
    )
    return m.select(
        "date", "mkt_ret", "index_level", "sma_200", "index_to_sma_200", "drawdown", "vol_20", "vol_pct",
        "trend_regime", "vol_regime", "regime",
    )
