"""A window of weeks of the backtest, every strategy: read the window's inputs, continue each strategy's
stored book (or start it with the window), replay, and the rows to write. The backtest asset and
`kairos backtest` call this; the book chain makes a span backfill equal week-by-week runs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl

from kairos_dagster import calendar as cal
from kairos_dagster.backtest import tables
from kairos_dagster.backtest.costs import CostModel
from kairos_dagster.backtest.engine import BacktestResult, Book, price_panel, replay
from kairos_dagster.backtest.strategies import (
    SignalInputs,
    benchmark_daily,
    equal_weight_targets,
    liquidity_frame,
    risk4_targets,
)
from kairos_dagster.portfolio.config import ML_CONFIG, V8_CONFIG, Risk4Config
from kairos_dagster.portfolio.rebalance_weeks import week_plans
from kairos_dagster.sources.synthetic import SyntheticMarket
from kairos_dagster.warehouse import store

# The synthetic market's planted expected return, joined onto the matrix rows as the oracle's alpha.
ORACLE_COLUMN = "oracle_expected_ret_5d"
# The Risk4 strategies: each a named configuration of the live rebalance. The oracle is the production
# configuration fed the planted truth: the upper bound of what the ML config could earn on this market.
RISK4_STRATEGIES: dict[str, Risk4Config] = {
    "ml": ML_CONFIG,
    "ml_fixed": dataclasses.replace(ML_CONFIG, name="ml_fixed", alpha_column="alpha_ml_v2_clf"),
    "v8": V8_CONFIG,
    "oracle": dataclasses.replace(ML_CONFIG, name="oracle", alpha_column=ORACLE_COLUMN),
}
STRATEGIES: tuple[str, ...] = (*RISK4_STRATEGIES, "universe_ew", "market")


# Strategies replayed at once (the machine has 2 cores; more threads only contend).
STRATEGY_THREADS = max(1, min(2, os.cpu_count() or 1))


class BacktestConfigError(ValueError):
    """A backtest configuration that cannot run (named in the message)."""


@dataclass(frozen=True)
class BacktestSettings:
    strategies: tuple[str, ...] = STRATEGIES
    portfolio_value: float = 100_000.0
    costs: CostModel = field(default_factory=CostModel)
    cash_rate: float = 0.0
    config_id: str = tables.DEFAULT_CONFIG_ID
    synthetic_cache_dir: Path | None = None  # the synthetic market's stored panels (the oracle's truth)

    def __post_init__(self) -> None:
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise BacktestConfigError(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
        if not self.config_id.strip():
            raise BacktestConfigError("config_id must not be empty")
        defaults = (tuple(STRATEGIES), 100_000.0, CostModel(), 0.0)
        if self.config_id == tables.DEFAULT_CONFIG_ID and (
                tuple(self.strategies), self.portfolio_value, self.costs, self.cash_rate) != defaults:
            raise BacktestConfigError(
                "a configuration other than the defaults (every strategy, $100,000, the default costs, no cash "
                "rate) needs its own config_id: the default chain is the one the weekly run extends, and it is "
                "never overwritten")


def unavailable(con: duckdb.DuckDBPyConnection, strategies: Sequence[str]) -> dict[str, str]:
    """Strategies of `strategies` this warehouse cannot replay, with the reason (the oracle needs the
    synthetic market whose truth it knows: the data source recorded in kairos_meta)."""
    if "oracle" in strategies and SyntheticMarket.from_identity(store.read_meta(con, "data_source")) is None:
        held = store.read_meta(con, "data_source") or "none recorded"
        return {"oracle": f"needs the synthetic market's planted truth; this warehouse holds {held}"}
    return {}


def oracle_rows(con: duckdb.DuckDBPyConnection, signal_dates: Sequence[dt.date], cache_dir: Path | None = None
                ) -> pl.DataFrame:
    """ticker, date, ORACLE_COLUMN at the signal dates, from the warehouse's own synthetic market."""
    market = SyntheticMarket.from_identity(store.read_meta(con, "data_source"), cache_dir=cache_dir)
    if market is None or not signal_dates:
        return pl.DataFrame(schema={"ticker": pl.String, "date": pl.Date, ORACLE_COLUMN: pl.Float64})
    truth = market.oracle(min(signal_dates), max(signal_dates)).filter(pl.col("date").is_in(list(signal_dates)))
    # keyed by the company (permaticker): the warehouse names it by the symbol of its last sync
    held = con.execute('SELECT DISTINCT permaticker, ticker FROM tickers WHERE "table" = \'SEP\'').pl()
    return (truth.drop("ticker").join(held.cast({"permaticker": pl.Int64}), on="permaticker")
            .select("ticker", "date", pl.col("expected_ret_5d").cast(pl.Float64).alias(ORACLE_COLUMN)))


def run_window(con: duckdb.DuckDBPyConnection, start: dt.date, end: dt.date, settings: BacktestSettings
               ) -> dict[str, BacktestResult]:
    """Every strategy over the weeks of [start, end) (those `unavailable` names are left out)."""
    plans = week_plans(start, end)
    last_session = max((d for d in cal.sessions_between(start, end - dt.timedelta(days=1))), default=None)
    if not plans or last_session is None:
        return {}
    sigs = [p.signal_date for p in plans]
    skip = unavailable(con, settings.strategies)
    names = [s for s in settings.strategies if s not in skip]
    configs = [RISK4_STRATEGIES[s] for s in names if s in RISK4_STRATEGIES]
    cols = {c for cfg in configs + [ML_CONFIG] for c in (cfg.alpha_column, cfg.vol_column, cfg.adv_column,
                                                         cfg.sector_column, cfg.price_column)}
    matrix = tables.load_matrix(con, sigs, sorted(cols - {ORACLE_COLUMN}))
    if "oracle" in names and matrix.height:
        matrix = matrix.join(oracle_rows(con, sigs, settings.synthetic_cache_dir), on=["ticker", "date"], how="left")
    known = tables.matrix_dates(con, min(sigs) - dt.timedelta(days=14), max(sigs))
    window = max(cfg.cov_window for cfg in configs + [ML_CONFIG])
    returns = tables.load_returns(con, min(sigs), max(sigs), window)
    sep = tables.load_prices(con, start, end)
    liquidity = liquidity_frame(matrix, ML_CONFIG) if matrix.height else pl.DataFrame(
        schema={"ticker": pl.String, "date": pl.Date, "adv": pl.Float64, "daily_vol": pl.Float64})
    # Sliced and validated once, read by every strategy.
    inputs = SignalInputs.build(matrix, known, returns)
    panel = price_panel(sep)
    traded = [n for n in names if n != "market"]
    books = {n: tables.load_book(con, n, settings.config_id, start) for n in traded}  # one connection: in turn

    def one(name: str) -> BacktestResult:
        target = (risk4_targets(inputs, RISK4_STRATEGIES[name]) if name in RISK4_STRATEGIES
                  else equal_weight_targets(inputs, ML_CONFIG))
        return replay(plans, None, target, liquidity=liquidity, end=last_session, costs=settings.costs,
                      book=books[name], portfolio_value=settings.portfolio_value, cash_rate=settings.cash_rate,
                      panel=panel)

    # The strategies are independent chains over shared read-only frames: replayed side by side (polars
    # releases the GIL in its kernels), each exactly as it would be alone.
    with ThreadPoolExecutor(max_workers=max(1, min(len(traded), STRATEGY_THREADS))) as pool:
        out: dict[str, BacktestResult] = dict(zip(traded, pool.map(one, traded), strict=True))
    if "market" in names:
        out["market"] = _market(con, start, end, settings)
    return out


def _market(con: duckdb.DuckDBPyConnection, start: dt.date, end: dt.date, settings: BacktestSettings) -> BacktestResult:
    """The market benchmark's rows, continuing its stored equity (its book is all cash: the equity)."""
    book = tables.load_book(con, "market", settings.config_id, start)
    value = book.cash if book is not None else settings.portfolio_value
    first_plan = week_plans(start, end)[0].rebalance_date
    lo = start if book is not None else first_plan
    m = store.read_window(con, "market_returns", "date", lo, end, columns=["date", "mkt_ret"])
    daily = benchmark_daily(m, lo, end - dt.timedelta(days=1), value)
    last = daily["date"][-1] if daily.height else (book.date if book else None)
    # Its book is its equity at each week's last session.
    ends = (daily.with_columns(pl.col("date").dt.truncate("1w").alias("week")).group_by("week", maintain_order=True)
            .agg(pl.col("date").last(), pl.col("equity").last()))
    books = [Book(d, float(e), Book.start(1.0).units) for d, e in ends.select("date", "equity").iter_rows()]
    final = books[-1] if books else Book(last, value, Book.start(1.0).units)
    return BacktestResult(daily, pl.DataFrame(schema=tables.TABLES["backtest_trades"]).drop("strategy", "config_id"),
                          pl.DataFrame(schema=tables.TABLES["backtest_positions"]).drop("strategy", "config_id"),
                          final, books)


def window_frames(results: dict[str, BacktestResult], config_id: str, start: dt.date) -> dict[str, pl.DataFrame]:
    """The rows of every backtest table for the window's results."""
    def cat(table: str, frames: Sequence[pl.DataFrame]) -> pl.DataFrame:
        return pl.concat(frames) if frames else pl.DataFrame(schema=tables.TABLES[table])

    return {
        "backtest_daily": cat("backtest_daily", [tables.with_keys(r.daily, "backtest_daily", s, config_id)
                                                 for s, r in results.items()]),
        "backtest_trades": cat("backtest_trades", [tables.with_keys(r.trades, "backtest_trades", s, config_id)
                                                   for s, r in results.items()]),
        "backtest_positions": cat("backtest_positions", [tables.with_keys(r.positions, "backtest_positions", s, config_id)
                                                         for s, r in results.items()]),
        "backtest_book": cat("backtest_book", [tables.book_rows(b, s, config_id) for s, r in results.items()
                                               for b in r.weekly_books if b.date is not None and b.date >= start]),
    }
