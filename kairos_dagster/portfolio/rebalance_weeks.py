"""One or many weekly rebalances in order: the pure core under the `rebalance_picks` asset (no dagster).

A single-run backfill over many weeks computes them in date order; each week's prior holdings are the
book the week before produced (a blocked week changes nothing, so the next week starts from the same
prior). Everything here is polars in, polars out; loading and writing belong to the caller.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from kairos_dagster import calendar as cal
from kairos_dagster.portfolio.config import Risk4Config
from kairos_dagster.portfolio.gates import GateResult, blocking_failures, evaluate_gates
from kairos_dagster.portfolio.risk4 import PICKS_COLUMNS, PortfolioResult, build_portfolio
from kairos_dagster.portfolio.trades import TRADES_COLUMNS, TRADES_SCHEMA, plan_trades

# The DuckDB tables: the rebalance (as-of) date, the signal date, the Risk4 columns, the configuration.
PICKS_TABLE_SCHEMA: dict[str, pl.DataType] = {
    "date": pl.Date(), "signal_date": pl.Date(), "rank": pl.Int64(), "ticker": pl.String(), "weight": pl.Float64(),
    "weight_pre_vol": pl.Float64(), "sector": pl.String(), "alpha_z": pl.Float64(), "vol_blend": pl.Float64(),
    "adv_20": pl.Float64(), "price": pl.Float64(), "target_value": pl.Float64(), "shares": pl.Int64(),
    "config": pl.String(),
}
TRADES_TABLE_SCHEMA: dict[str, pl.DataType] = {
    "date": pl.Date(), "signal_date": pl.Date(), **TRADES_SCHEMA, "config": pl.String(),
}
HOLDINGS_SCHEMA = {"ticker": pl.String, "weight": pl.Float64, "sector": pl.String, "shares": pl.Int64,
                   "price": pl.Float64}
REGIME_KEYS = ("regime", "vol_regime", "trend_regime")


@dataclass(frozen=True)
class WeekPlan:
    """One rebalance to compute: the as-of (rebalance) date and the session whose data it uses."""

    rebalance_date: dt.date
    signal_date: dt.date

    @staticmethod
    def for_date(rebalance_date: dt.date) -> WeekPlan:
        return WeekPlan(rebalance_date, cal.signal_date_for(rebalance_date))


@dataclass(frozen=True)
class WeekRebalance:
    plan: WeekPlan
    result: PortfolioResult | None  # None when the signal date is missing (the stale-data gate blocks)
    trades: pl.DataFrame | None
    gates: list[GateResult]
    prior: pl.DataFrame  # the holdings it started from (HOLDINGS_SCHEMA; empty = fresh start)
    prior_source: str

    @property
    def blocked(self) -> list[GateResult]:
        return blocking_failures(self.gates)


def week_plans(start: dt.date, end: dt.date) -> list[WeekPlan]:
    """The rebalances of every trading week whose rebalance date lies in [start, end)."""
    return [WeekPlan.for_date(d) for d in cal.rebalance_dates_between(start, end - dt.timedelta(days=1))]


def daily_returns(prices: pl.DataFrame, price_column: str = "closeadj") -> pl.DataFrame:
    """ticker, date, ret: simple returns of an adjusted close between consecutive rows of each ticker."""
    missing = [c for c in ("ticker", "date", price_column) if c not in prices.columns]
    if missing:
        raise ValueError(f"sep_base rows lack column(s) {', '.join(missing)}")
    px = pl.col(price_column).cast(pl.Float64)
    return (
        prices.select("ticker", "date", px.alias("_px")).sort("ticker", "date")
        .with_columns((pl.col("_px") / pl.col("_px").shift(1).over("ticker") - 1.0).alias("ret"))
        .filter(pl.col("ret").is_not_null() & pl.col("ret").is_finite())
        .select("ticker", "date", "ret")
    )


def holdings_from_picks(picks: pl.DataFrame) -> pl.DataFrame:
    """Prior holdings (ticker, weight, sector, shares, price) from picks rows (table or picks.csv)."""
    missing = [c for c in ("ticker", "weight", "shares") if c not in picks.columns]
    if missing:
        raise ValueError(f"prior picks lack column(s) {', '.join(missing)}")
    opt = {c: (pl.col(c) if c in picks.columns else pl.lit(None)) for c in ("sector", "price")}
    return picks.select("ticker", "weight", opt["sector"].alias("sector"), "shares",
                        opt["price"].alias("price")).cast(HOLDINGS_SCHEMA).sort("ticker")


def empty_holdings() -> pl.DataFrame:
    return pl.DataFrame(schema=HOLDINGS_SCHEMA)


def rebalance_week(plan: WeekPlan, matrix: pl.DataFrame, matrix_dates: Iterable[dt.date], returns: pl.DataFrame,
                   prior: pl.DataFrame, config: Risk4Config, prior_source: str = "none", *,
                   with_trades: bool = True) -> WeekRebalance:
    """Risk4 for one week: the portfolio at the signal date, the trades from `prior`, and the gates.

    `matrix`: feat_matrix_v2 rows (any dates; only the signal date's are used). `matrix_dates`: the dates
    feat_matrix_v2 holds (only those up to the signal date count: no look-ahead). `returns`: ticker,
    date, ret (later dates are cut here). `prior`: HOLDINGS_SCHEMA rows, empty for a fresh start.
    `with_trades=False` leaves the share orders out (`trades` None): the backtest trades weights at the
    open itself, and the portfolio and gates are the same either way.
    """
    sig = plan.signal_date
    known = [d for d in matrix_dates if d <= sig]
    rows = matrix.filter(pl.col("date") == sig) if "date" in matrix.columns else matrix
    if sig not in set(known) or rows.height == 0:
        gates = evaluate_gates(sig, known, None, config)
        return WeekRebalance(plan, None, None, gates, prior, prior_source)
    latest = returns.get_column("date").max() if returns.height else None
    if latest is not None and latest > sig:  # most callers hand no later rows: no copy of the window
        returns = returns.filter(pl.col("date") <= sig)
    result = build_portfolio(rows, prior.select("ticker", "weight", "sector") if prior.height else None,
                             returns, config, sig)
    trades = None
    if with_trades:
        prices = rows.select(pl.col("ticker").cast(pl.String), pl.col(config.price_column).cast(pl.Float64).alias("price"))
        prices = prices.filter(pl.col("price").is_finite() & (pl.col("price") > 0))
        trades = plan_trades(result.picks, prior.select("ticker", "shares", "price") if prior.height else None, prices)
    return WeekRebalance(plan, result, trades, evaluate_gates(sig, known, result, config), prior, prior_source)


def rebalance_sequence(plans: Sequence[WeekPlan], matrix: pl.DataFrame, matrix_dates: Iterable[dt.date],
                       returns: pl.DataFrame, initial_prior: pl.DataFrame, config: Risk4Config,
                       initial_source: str = "none", chain: bool = True) -> list[WeekRebalance]:
    """The weeks in date order. With `chain`, each week's prior is the previous unblocked week's picks.

    Weeks depend on each other through their prior, so this is a loop over weeks by nature (each week
    itself is vectorized over all tickers).
    """
    dates = sorted(set(matrix_dates))
    out: list[WeekRebalance] = []
    prior, source = initial_prior, initial_source
    for plan in sorted(plans, key=lambda p: p.rebalance_date):
        week = rebalance_week(plan, matrix, dates, returns, prior, config, source)
        out.append(week)
        if chain and week.result is not None and not week.blocked:
            prior = holdings_from_picks(week.result.picks)
            source = f"rebalance of {plan.rebalance_date} (same run)"
    return out


def picks_rows(week: WeekRebalance) -> pl.DataFrame:
    """The week's `rebalance_picks` table rows (empty for a week without a portfolio)."""
    if week.result is None:
        return pl.DataFrame(schema=PICKS_TABLE_SCHEMA)
    return (week.result.picks.select(PICKS_COLUMNS)
            .with_columns(pl.lit(week.plan.rebalance_date).alias("date"), pl.lit(week.plan.signal_date).alias("signal_date"),
                          pl.lit(week.result.config.name).alias("config"))
            .select(list(PICKS_TABLE_SCHEMA)).cast(PICKS_TABLE_SCHEMA))


def trades_rows(week: WeekRebalance) -> pl.DataFrame:
    """The week's `rebalance_trades` table rows."""
    if week.result is None or week.trades is None:
        return pl.DataFrame(schema=TRADES_TABLE_SCHEMA)
    return (week.trades.select(TRADES_COLUMNS)
            .with_columns(pl.lit(week.plan.rebalance_date).alias("date"), pl.lit(week.plan.signal_date).alias("signal_date"),
                          pl.lit(week.result.config.name).alias("config"))
            .select(list(TRADES_TABLE_SCHEMA)).cast(TRADES_TABLE_SCHEMA))


def regime_at(regimes: pl.DataFrame | None, signal_date: dt.date) -> dict[str, Any] | None:
    """{date, regime, vol_regime, trend_regime} at the signal date (None when unknown)."""
    if regimes is None or regimes.height == 0 or not set(REGIME_KEYS) <= set(regimes.columns):
        return None
    row = regimes.filter(pl.col("date") == signal_date).select(REGIME_KEYS).unique()
    if row.height != 1:
        return None
    return {"date": signal_date, **row.row(0, named=True)}


def block_reasons(weeks: Sequence[WeekRebalance]) -> list[str]:
    """One line per blocking gate failure, naming the week."""
    return [f"{w.plan.rebalance_date} (signal {w.plan.signal_date}): {g.name}: {g.message}"
            for w in weeks for g in w.blocked]


def summary_line(week: WeekRebalance) -> Mapping[str, Any]:
    """The few numbers the CLI and the UI show about a built week."""
    r = week.result
    if r is None:
        return {"rebalance_date": week.plan.rebalance_date.isoformat(), "built": False}
    top5 = r.picks.sort(["weight", "ticker"], descending=[True, False]).head(5).get_column("weight").sum()
    return {"rebalance_date": week.plan.rebalance_date.isoformat(), "signal_date": week.plan.signal_date.isoformat(),
            "built": True, "n_positions": r.n_positions, "top_5_weight": float(top5), "estimated_vol": r.est_vol_final,
            "turnover": r.turnover_final, "fresh_start": r.fresh_start, "total_weight": r.total_weight,
            "n_eligible": r.n_eligible, "prior_source": week.prior_source}
