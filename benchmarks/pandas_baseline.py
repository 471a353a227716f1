"""Pandas per-ticker baseline (the original scripts' style: groupby, then rolling/ewm per ticker) vs
the vectorized polars feature tables, on the same rows.

Not a test. Run: .venv/bin/python benchmarks/pandas_baseline.py [n_tickers] [n_sessions]
(default 1000 x 2520). Subset: rolling returns, SMA ratios, realized vol, RSI, ATR, MACD, Bollinger, beta.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pandas as pd
import polars as pl

from kairos_dagster.features import technical as T
from kairos_dagster.features.ops import build_table, merge_stages, prepare_prices
from kairos_dagster.features.universe import market_returns


def synthetic_prices(n_tickers: int, n_sessions: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n = n_tickers * n_sessions
    c = 20 * np.exp(np.cumsum(rng.normal(0, 0.02, (n_tickers, n_sessions)), axis=1)).ravel()
    o = c * np.exp(rng.normal(0, 0.01, n))
    h = np.maximum(o, c) * np.exp(np.abs(rng.normal(0, 0.01, n)))
    low = np.minimum(o, c) * np.exp(-np.abs(rng.normal(0, 0.01, n)))
    dates = pl.date_range(pl.date(2010, 1, 1), pl.date(2010, 1, 1) + pl.duration(days=n_sessions - 1), eager=True)
    return pl.DataFrame({
        "ticker": np.repeat([f"T{k:05d}" for k in range(n_tickers)], n_sessions),
        "date": pl.concat([dates] * n_tickers),
        "open": o, "high": h, "low": low, "close": c,
        "volume": rng.integers(10_000, 1_000_000, n).astype(float), "closeadj": c, "closeunadj": c,
    })


def _pandas_one(g: pd.DataFrame, mkt: pd.Series) -> pd.DataFrame:
    """Per-ticker pandas features, the way the original scripts computed them."""
    c, h, low = g["close"], g["high"], g["low"]
    r = g["closeadj"].pct_change()
    out = pd.DataFrame({"ticker": g["ticker"], "date": g["date"]})
    for k in T.RET_HORIZONS:
        out[f"ret_{k}d"] = g["closeadj"].pct_change(k)
    for w in T.SMA_WINDOWS:
        out[f"sma_ratio_{w}"] = c / c.rolling(w).mean() - 1
    for w in T.VOL_WINDOWS:
        out[f"vol_{w}"] = r.rolling(w).std() * np.sqrt(252)
    d = c.diff()
    gain = d.clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean()
    loss = (-d).clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean()
    out["rsi_14"] = 100 * gain / (gain + loss)
    pc = c.shift(1)
    tr = pd.concat([h, pc], axis=1).max(axis=1) - pd.concat([low, pc], axis=1).min(axis=1)
    out["atr_14"] = tr.ewm(alpha=1 / 14, adjust=False).mean()
    macd = c.ewm(span=12, adjust=False).mean() - c.ewm(span=26, adjust=False).mean()
    out["macd"] = macd
    out["macd_signal"] = macd.ewm(span=9, adjust=False).mean()
    mid, sd = c.rolling(20).mean(), c.rolling(20).std(ddof=0)
    out["bb_upper_20"], out["bb_middle_20"], out["bb_lower_20"] = mid + 2 * sd, mid, mid - 2 * sd
    m = mkt.reindex(g["date"].to_numpy()).to_numpy()
    rm = pd.Series(m, index=g.index)
    for w in T.BETA_WINDOWS:
        out[f"beta_{w}"] = r.rolling(w).cov(rm) / rm.rolling(w).var()
    return out


def run_pandas(prices: pl.DataFrame, mkt_ret: pl.DataFrame) -> pd.DataFrame:
    pdf = prices.to_pandas()
    mkt = mkt_ret.to_pandas().set_index("date")["mkt_ret"]
    mkt.index = mkt.index.to_numpy()
    return pd.concat([_pandas_one(g, mkt) for _, g in pdf.groupby("ticker", sort=False)], ignore_index=True)


SUBSET = (
    *(f"ret_{k}d" for k in T.RET_HORIZONS), *(f"sma_ratio_{w}" for w in T.SMA_WINDOWS),
    *(f"vol_{w}" for w in T.VOL_WINDOWS), "rsi_14", "atr_14", "macd", "macd_signal",
    "bb_upper_20", "bb_middle_20", "bb_lower_20", *(f"beta_{w}" for w in T.BETA_WINDOWS),
)


def run_polars(prices: pl.DataFrame, mkt_ret: pl.DataFrame) -> pl.DataFrame:
    """Ours on the same column subset: the production Feature declarations and helper stages,
    evaluated in one pass (what the tables do, minus the columns pandas does not compute)."""
    feats = {f.name: f for f in (*T.PRICE_ACTION, *T.TREND, *T.VOL_VOLATILITY, *T.BETA)}
    stages = merge_stages(*(T.TABLE_HELPERS[t] for t in ("feat_trend", "feat_vol_volatility", "feat_beta")))
    lf = prepare_prices(prices, "bench").join(mkt_ret.lazy(), on="date", how="left", maintain_order="left")
    # helper columns no subset feature reads are pruned by the query optimizer
    return build_table(lf, [feats[c] for c in SUBSET], helpers=stages)


def run_polars_full(prices: pl.DataFrame, mkt_ret: pl.DataFrame) -> list[pl.DataFrame]:
    """All columns of the four tables the subset comes from."""
    return [
        T.feat_price_action(prices), T.feat_trend(prices), T.feat_vol_volatility(prices),
        T.feat_beta(prices, mkt_ret),
    ]


def _timed(fn, *args):  # noqa: ANN001, ANN202
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - t0, time.process_time() - c0


def check_agreement(ours: pl.DataFrame, theirs: pd.DataFrame) -> int:
    """The two sides compute the same numbers: after our longest warm-up (pandas' EWMs are seeded at
    the first row, TA-Lib's with an SMA; the difference has decayed below 1e-10 by then) every
    subset column agrees to 1e-6 relative (1e-7 absolute near zero: the truncated EWMs drop weight 1e-10 x price). Returns the number of values compared."""
    feats = {f.name: f for f in (*T.PRICE_ACTION, *T.TREND, *T.VOL_VOLATILITY, *T.BETA)}
    warmup = max(feats[c].lookback for c in SUBSET)
    keep = ours.with_columns(pl.int_range(pl.len()).over("ticker").alias("_k"))["_k"].to_numpy() >= warmup
    n = 0
    for c in SUBSET:
        a, b = ours[c].to_numpy().astype(float)[keep], theirs[c].to_numpy().astype(float)[keep]
        ok = ~np.isnan(a)
        if not np.array_equal(ok, ~np.isnan(b)):
            raise AssertionError(f"{c}: null patterns differ")
        np.testing.assert_allclose(a[ok], b[ok], rtol=1e-6, atol=1e-7, err_msg=c)
        n += int(ok.sum())
    return n


def compare(n_tickers: int = 1000, n_sessions: int = 2520) -> dict[str, float]:
    prices = synthetic_prices(n_tickers, n_sessions)
    caps = prices.select("ticker", "date", (pl.col("closeunadj") * 100).alias("marketcap"))
    mkt = market_returns(prices, caps, prices.select("ticker", "date"))
    # warm both sides up on a few tickers (thread pools, lazy imports), then one timed run each
    small = prices.head(5 * n_sessions)
    run_polars(small, mkt), run_pandas(small, mkt)
    load = os.getloadavg()[0]
    ours, t_polars, c_polars = _timed(run_polars, prices, mkt)
    _, t_full, c_full = _timed(run_polars_full, prices, mkt)
    theirs, t_pandas, c_pandas = _timed(run_pandas, prices, mkt)
    assert ours.height == len(theirs) and set(SUBSET) <= set(theirs.columns)
    compared = check_agreement(ours, theirs)
    return {"rows": float(prices.height), "polars_s": t_polars, "polars_full_tables_s": t_full,
            "pandas_s": t_pandas, "speedup": t_pandas / t_polars, "polars_cpu_s": c_polars,
            "polars_full_tables_cpu_s": c_full, "pandas_cpu_s": c_pandas, "cpu_speedup": c_pandas / c_polars,
            "load_1min_before": load, "load_1min_after": os.getloadavg()[0], "values_compared": float(compared)}


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    r = compare(*args)
    print(f"rows={int(r['rows']):,}  polars(subset)={r['polars_s']:.2f}s  "
          f"polars(4 full tables)={r['polars_full_tables_s']:.2f}s  pandas(subset)={r['pandas_s']:.2f}s  "
          f"speedup={r['speedup']:.1f}x")
    print(f"cpu: polars(subset)={r['polars_cpu_s']:.2f}s  polars(4 full tables)={r['polars_full_tables_cpu_s']:.2f}s  "
          f"pandas(subset)={r['pandas_cpu_s']:.2f}s  cpu speedup={r['cpu_speedup']:.1f}x  "
          f"load(1 min)={r['load_1min_before']:.1f}->{r['load_1min_after']:.1f} on {os.cpu_count()} cores  "
          f"values agreeing: {int(r['values_compared']):,}")
