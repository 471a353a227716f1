"""strategy_stats: performance metrics of backtest_daily rows, per strategy and period.

Periods: `full`, each calendar year (`2024`), `last_52w`, and each market regime of
regime_history_academic (`regime:normal_vol_bull`, ...: the sessions whose signal-free regime label
that was). Conventions are empyrical's (daily returns, 252 sessions a year, risk-free 0): annual
return is geometric, volatility and Sharpe use the sample standard deviation, Sortino the root mean
square of negative returns, the maximum drawdown starts from the initial value, alpha and beta are
against `market` from the daily returns, tracking error and information ratio against `universe_ew`.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable

import numpy as np
import polars as pl

from kairos_dagster.backtest.costs import TRADING_DAYS

METRICS: tuple[str, ...] = (
    "sessions", "total_return", "annual_return", "annual_volatility", "sharpe", "sortino", "max_drawdown",
    "max_drawdown_start", "max_drawdown_trough", "calmar", "weekly_hit_rate", "avg_weekly_turnover",
    "annual_cost_drag", "beta", "alpha", "tracking_error", "information_ratio", "avg_positions",
)
STATS_SCHEMA: dict[str, pl.DataType] = {
    "strategy": pl.String(), "period": pl.String(),
    **{m: pl.Float64() for m in METRICS if m not in ("sessions", "max_drawdown_start", "max_drawdown_trough")},
    "sessions": pl.Int64(), "max_drawdown_start": pl.Date(), "max_drawdown_trough": pl.Date(),
}


def annual_return(r: np.ndarray) -> float:
    if r.size == 0:
        return math.nan
    return float(np.prod(1.0 + r) ** (TRADING_DAYS / r.size) - 1.0)


def annual_volatility(r: np.ndarray) -> float:
    return float(np.std(r, ddof=1) * math.sqrt(TRADING_DAYS)) if r.size > 1 else math.nan


def sharpe(r: np.ndarray) -> float:
    sd = np.std(r, ddof=1) if r.size > 1 else 0.0
    return float(np.mean(r) / sd * math.sqrt(TRADING_DAYS)) if sd > 0 else math.nan


def sortino(r: np.ndarray) -> float:
    if r.size == 0:
        return math.nan
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2))) * math.sqrt(TRADING_DAYS)
    return float(np.mean(r) * TRADING_DAYS / downside) if downside > 0 else math.nan


def max_drawdown(r: np.ndarray, dates: list[dt.date]) -> tuple[float, dt.date | None, dt.date | None]:
    """(drawdown <= 0, the peak's date, the trough's date); the initial value counts as a peak (None as its date)."""
    if r.size == 0:
        return math.nan, None, None
    wealth = np.concatenate([[1.0], np.cumprod(1.0 + r)])
    peaks = np.maximum.accumulate(wealth)
    dd = wealth / peaks - 1.0
    trough = int(np.argmin(dd))
    peak = int(np.argmax(wealth[: trough + 1]))
    day = [None, *dates]
    return float(dd[trough]), day[peak], day[trough]


def alpha_beta(r: np.ndarray, m: np.ndarray) -> tuple[float, float]:
    if r.size < 2:
        return math.nan, math.nan
    dm = m - m.mean()
    var = float(np.mean(dm ** 2))
    if var == 0:
        return math.nan, math.nan
    beta = float(np.mean(dm * r) / var)
    return float((np.mean(r - beta * m) + 1.0) ** TRADING_DAYS - 1.0), beta


def weekly_hit_rate(r: np.ndarray, dates: list[dt.date]) -> float:
    if r.size == 0:
        return math.nan
    weeks = pl.DataFrame({"d": dates, "r": r}).group_by(
        pl.col("d").dt.truncate("1w")).agg(((1.0 + pl.col("r")).product() - 1.0).alias("w"))
    return float((weeks["w"] > 0).mean())


def period_metrics(rows: pl.DataFrame, market: pl.DataFrame | None, benchmark: pl.DataFrame | None) -> dict:
    """The metrics of backtest_daily `rows` (date, ret_net, ret_gross, turnover, n_positions), with the
    market's and the benchmark's daily rows (date, ret_net) of the same sessions."""
    rows = rows.sort("date")
    r = rows["ret_net"].cast(pl.Float64).to_numpy()
    dates = rows["date"].to_list()
    total = float(np.prod(1.0 + r) - 1.0) if r.size else math.nan
    ann = annual_return(r)
    mdd, mdd_start, mdd_trough = max_drawdown(r, dates)
    out: dict = {
        "sessions": int(r.size), "total_return": total, "annual_return": ann,
        "annual_volatility": annual_volatility(r), "sharpe": sharpe(r), "sortino": sortino(r),
        "max_drawdown": mdd, "max_drawdown_start": mdd_start, "max_drawdown_trough": mdd_trough,
        "calmar": ann / abs(mdd) if mdd and mdd < 0 else math.nan, "weekly_hit_rate": weekly_hit_rate(r, dates),
        "avg_weekly_turnover": float(rows["turnover"].sum()) / max(1, len({d - dt.timedelta(days=d.weekday())
                                                                          for d in dates})),
        "annual_cost_drag": float((rows["ret_gross"] - rows["ret_net"]).sum()) * TRADING_DAYS / r.size if r.size else math.nan,
        "avg_positions": float(rows["n_positions"].mean()) if rows["n_positions"].null_count() < rows.height else math.nan,
        "alpha": math.nan, "beta": math.nan, "tracking_error": math.nan, "information_ratio": math.nan,
    }
    if market is not None:
        j = rows.select("date", "ret_net").join(market.select("date", pl.col("ret_net").alias("m")), on="date")
        out["alpha"], out["beta"] = alpha_beta(j["ret_net"].to_numpy(), j["m"].to_numpy())
    if benchmark is not None:
        j = rows.select("date", "ret_net").join(benchmark.select("date", pl.col("ret_net").alias("b")), on="date")
        active = (j["ret_net"] - j["b"]).to_numpy()
        if active.size > 1:
            te = float(np.std(active, ddof=1) * math.sqrt(TRADING_DAYS))
            out["tracking_error"] = te
            out["information_ratio"] = float(np.mean(active) * TRADING_DAYS / te) if te > 0 else math.nan
    return out


def periods(dates: Iterable[dt.date], regimes: pl.DataFrame | None) -> dict[str, set[dt.date]]:
    """The sessions of each period: full, calendar years, the last 52 weeks, market regimes."""
    dates = sorted(set(dates))
    out: dict[str, set[dt.date]] = {"full": set(dates)}
    for year in sorted({d.year for d in dates}):
        out[str(year)] = {d for d in dates if d.year == year}
    if dates:
        out["last_52w"] = {d for d in dates if d > dates[-1] - dt.timedelta(weeks=52)}
    if regimes is not None and regimes.height:
        known = regimes.filter(pl.col("regime").is_not_null())
        for regime in sorted(set(known["regime"].to_list())):
            days = set(known.filter(pl.col("regime") == regime)["date"].to_list()) & set(dates)
            if days:
                out[f"regime:{regime}"] = days
    return out


def strategy_stats(daily: pl.DataFrame, regimes: pl.DataFrame | None = None, *, market: str = "market",
                   benchmark: str = "universe_ew") -> pl.DataFrame:
    """One row per (strategy, period) of `daily` (strategy, date, ret_net, ret_gross, turnover, n_positions)."""
    names = sorted(set(daily["strategy"].to_list()))
    by = {s: daily.filter(pl.col("strategy") == s) for s in names}
    rows = []
    for s in names:
        frame = by[s]
        for period, days in periods(frame["date"].to_list(), regimes).items():
            part = frame.filter(pl.col("date").is_in(sorted(days)))
            rows.append({"strategy": s, "period": period, **period_metrics(
                part, by.get(market) if s != market else None, by.get(benchmark) if s != benchmark else None)})
    if not rows:
        return pl.DataFrame(schema=STATS_SCHEMA)
    return pl.DataFrame(rows, schema=STATS_SCHEMA, strict=False).select(list(STATS_SCHEMA))
