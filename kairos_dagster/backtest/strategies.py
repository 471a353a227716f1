"""What each backtested strategy holds: its weekly target weights, from the same code as the live picks.

- A Risk4 strategy (`ml`, `ml_fixed`, `v8`, `oracle`) calls `portfolio.rebalance_weeks.rebalance_week`, the
  function under `rebalance_picks`, with the backtest's own holdings as the prior: one code path, so a
  week's backtest target and that week's live picks cannot disagree given the same prior. A week whose
  blocking gates fail holds, as live.
- `universe_ew`: equal weight of the eligible universe (Risk4's ADV floor), rebalanced weekly.
- `market` is not traded: its daily returns are `market_returns` (`benchmark_daily`).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import polars as pl

from kairos_dagster import calendar as cal
from kairos_dagster.backtest.costs import TRADING_DAYS
from kairos_dagster.backtest.engine import DAILY_SCHEMA, TargetFn, rows_between
from kairos_dagster.portfolio.config import Risk4Config
from kairos_dagster.portfolio.rebalance_weeks import WeekPlan, rebalance_week


def date_slicer(frame: pl.DataFrame) -> Callable[[dt.date, dt.date], pl.DataFrame]:
    """[lo, hi] (inclusive) date slices of `frame` by binary search: a span's weeks each read their own
    days without scanning the span's rows again."""
    by_date = frame.sort("date", "ticker")
    dates = by_date.get_column("date")
    return lambda lo, hi: rows_between(by_date, dates, lo, hi)


@dataclass(frozen=True)
class SignalInputs:
    """What the strategies of a window read, sliced once for all of them: feat_matrix_v2 rows of the
    signal dates (`matrix_rows(lo, hi)`), the daily returns their covariance needs (`return_rows`), and the
    dates the matrix holds (the live gates' freshness)."""

    matrix_rows: Callable[[dt.date, dt.date], pl.DataFrame]
    return_rows: Callable[[dt.date, dt.date], pl.DataFrame]
    dates: list[dt.date]

    @staticmethod
    def build(matrix: pl.DataFrame, matrix_dates: Iterable[dt.date], returns: pl.DataFrame) -> SignalInputs:
        return SignalInputs(date_slicer(matrix), date_slicer(returns), sorted(set(matrix_dates)))


def risk4_targets(inputs: SignalInputs, config: Risk4Config) -> TargetFn:
    """Targets of a Risk4 configuration (its columns in the matrix rows, returns as ticker, date, ret). Each
    week hands the live function the signal date's rows and the returns of its covariance window (plus a
    margin), so a ten-year span costs what its weeks cost."""

    def target(plan: WeekPlan, prior: pl.DataFrame) -> pl.DataFrame | None:
        sig = plan.signal_date
        rets = inputs.return_rows(cal.sessions_offset(sig, -(config.cov_window + 5)), sig)
        week = rebalance_week(plan, inputs.matrix_rows(sig, sig), inputs.dates, rets, prior, config, "backtest book",
                              with_trades=False)
        if week.result is None or week.blocked:
            return None
        return week.result.picks.select("ticker", "weight")

    return target


def equal_weight_targets(inputs: SignalInputs, config: Risk4Config) -> TargetFn:
    """Equal weights over the names Risk4 could hold at the signal date: a finite price and ADV >= min_adv."""
    def target(plan: WeekPlan, prior: pl.DataFrame) -> pl.DataFrame | None:
        rows = inputs.matrix_rows(plan.signal_date, plan.signal_date).filter(
            pl.col(config.adv_column).is_finite() & (pl.col(config.adv_column) >= config.min_adv)
            & pl.col(config.price_column).is_finite() & (pl.col(config.price_column) > 0))
        if rows.height == 0:
            return None
        return rows.select("ticker", pl.lit(1.0 / rows.height).alias("weight"))

    return target


def liquidity_frame(matrix: pl.DataFrame, config: Risk4Config) -> pl.DataFrame:
    """ticker, date, adv (dollar ADV), daily_vol (the annualized vol column over sqrt(252)): what the costs need."""
    return matrix.select("ticker", "date", pl.col(config.adv_column).cast(pl.Float64).alias("adv"),
                         (pl.col(config.vol_column).cast(pl.Float64) / math.sqrt(TRADING_DAYS)).alias("daily_vol"))


def benchmark_daily(market_returns: pl.DataFrame, start: dt.date, end: dt.date, value: float,
                    return_column: str = "mkt_ret") -> pl.DataFrame:
    """The market's daily rows in the backtest's shape (no trades, no costs, fully invested) over [start, end]."""
    m = market_returns.filter(pl.col("date").is_between(start, end)).sort("date")
    ret = pl.col(return_column).cast(pl.Float64).fill_null(0.0)
    return m.select(
        "date", (value * (1.0 + ret).cum_prod()).alias("equity"), ret.alias("ret_gross"), ret.alias("ret_net"),
        pl.lit(0.0).alias("cost"), pl.lit(0.0).alias("turnover"), pl.lit(1.0).alias("gross_exposure"),
        pl.lit(None, pl.Int64).alias("n_positions")).cast(DAILY_SCHEMA)
