"""Warehouse SQL of the backtest: what a window of weeks reads, and the tables it writes, keyed by
(strategy, config_id) so that a non-default configuration never overwrites the weekly chain."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import duckdb
import polars as pl

from kairos_dagster import calendar as cal
from kairos_dagster.backtest.engine import DAILY_SCHEMA, POSITIONS_SCHEMA, TRADES_SCHEMA, Book
from kairos_dagster.backtest.stats import STATS_SCHEMA
from kairos_dagster.portfolio.rebalance_weeks import daily_returns
from kairos_dagster.warehouse import store

DEFAULT_CONFIG_ID = "default"
KEYS = {"strategy": pl.String, "config_id": pl.String}
TABLES = {
    "backtest_daily": {**KEYS, **DAILY_SCHEMA},
    "backtest_trades": {**KEYS, **TRADES_SCHEMA},
    "backtest_positions": {**KEYS, **POSITIONS_SCHEMA},
    # The book after the window's last session: the next week's run continues from it.
    "backtest_book": {**KEYS, "date": pl.Date, "cash": pl.Float64, "ticker": pl.String, "units": pl.Float64,
                      "mark": pl.Float64},
}
STATS_TABLE_SCHEMA = {"config_id": pl.String, **STATS_SCHEMA}
SEP_COLUMNS = ["ticker", "date", "open", "close", "closeadj", "closeunadj"]


def load_matrix(con: duckdb.DuckDBPyConnection, signal_dates: Sequence[dt.date], columns: Sequence[str]) -> pl.DataFrame:
    """feat_matrix_v2 rows of the signal dates (the columns the strategies read)."""
    if not signal_dates or not store.table_exists(con, "feat_matrix_v2"):
        return pl.DataFrame(schema={"ticker": pl.String, "date": pl.Date})
    have = store.table_columns(con, "feat_matrix_v2")
    cols = [c for c in dict.fromkeys(["ticker", "date", *columns]) if c in have]
    sel = ", ".join(store.ident(c) for c in cols)
    return con.execute(f"SELECT {sel} FROM feat_matrix_v2 WHERE list_contains($d::DATE[], date) ORDER BY date, ticker",
                       {"d": list(signal_dates)}).pl()


def matrix_dates(con: duckdb.DuckDBPyConnection, lo: dt.date, hi: dt.date) -> list[dt.date]:
    if not store.table_exists(con, "feat_matrix_v2"):
        return []
    return [r[0] for r in con.execute("SELECT DISTINCT date FROM feat_matrix_v2 WHERE date >= ? AND date <= ? "
                                      "ORDER BY 1", [lo, hi]).fetchall()]


def load_prices(con: duckdb.DuckDBPyConnection, start: dt.date, end: dt.date) -> pl.DataFrame:
    """sep_base rows of [start, end) with the columns the engine reads."""
    return store.read_window(con, "sep_base", "date", start, end, columns=SEP_COLUMNS)


def load_returns(con: duckdb.DuckDBPyConnection, first_signal: dt.date, last_signal: dt.date, window: int) -> pl.DataFrame:
    """Daily closeadj returns of the `window` sessions before the first signal date through the last."""
    lo = cal.sessions_offset(first_signal, -window)
    px = store.read_window(con, "sep_base", "date", lo, last_signal + dt.timedelta(days=1),
                           columns=["ticker", "date", "closeadj"])
    return daily_returns(px)


def load_book(con: duckdb.DuckDBPyConnection, strategy: str, config_id: str, before: dt.date) -> Book | None:
    """The stored book of the latest session before `before`, or None (the chain starts here)."""
    if not store.table_exists(con, "backtest_book"):
        return None
    last = con.execute("SELECT max(date) FROM backtest_book WHERE strategy = ? AND config_id = ? AND date < ?",
                       [strategy, config_id, before]).fetchone()[0]
    if last is None:
        return None
    rows = con.execute("SELECT cash, ticker, units, mark FROM backtest_book WHERE strategy = ? AND config_id = ? "
                       "AND date = ?", [strategy, config_id, last]).pl()
    units = rows.filter(pl.col("ticker").is_not_null()).select("ticker", "units", "mark")
    return Book(last, float(rows["cash"][0]), units)


def book_rows(book: Book, strategy: str, config_id: str) -> pl.DataFrame:
    """The book as backtest_book rows (one row with a null ticker when it holds only cash)."""
    units = book.units if book.units.height else pl.DataFrame({"ticker": [None], "units": [0.0], "mark": [None]},
                                                             schema={"ticker": pl.String, "units": pl.Float64,
                                                                     "mark": pl.Float64})
    return units.select(pl.lit(strategy).alias("strategy"), pl.lit(config_id).alias("config_id"),
                        pl.lit(book.date).alias("date"), pl.lit(book.cash).alias("cash"), "ticker", "units", "mark"
                        ).cast(TABLES["backtest_book"])


def with_keys(df: pl.DataFrame, table: str, strategy: str, config_id: str) -> pl.DataFrame:
    return df.with_columns(pl.lit(strategy).alias("strategy"), pl.lit(config_id).alias("config_id")).select(
        list(TABLES[table])).cast(TABLES[table])


def write_window(con: duckdb.DuckDBPyConnection, frames: dict[str, pl.DataFrame], start: dt.date, end: dt.date,
                 config_id: str) -> None:
    """Replace the window's rows of one configuration in every backtest table (the book last: the chain
    moves on only once the rows it summarizes are stored)."""
    for table in ("backtest_daily", "backtest_trades", "backtest_positions", "backtest_book"):
        df = frames.get(table, pl.DataFrame(schema=TABLES[table]))
        store.replace_window(con, table, df, "date", start, end, scope={"config_id": config_id})


def load_daily(con: duckdb.DuckDBPyConnection, config_id: str, end: dt.date) -> pl.DataFrame:
    """Every stored backtest_daily row of a configuration before `end`."""
    if not store.table_exists(con, "backtest_daily"):
        return pl.DataFrame(schema=TABLES["backtest_daily"])
    return con.execute("SELECT * FROM backtest_daily WHERE config_id = ? AND date < ? ORDER BY strategy, date",
                       [config_id, end]).pl()


def write_stats(con: duckdb.DuckDBPyConnection, config_id: str, stats: pl.DataFrame) -> None:
    # NaN (a metric without meaning, e.g. the Sharpe of a book that never traded) is stored as NULL.
    floats = [c for c, t in STATS_TABLE_SCHEMA.items() if t == pl.Float64]
    rows = stats.with_columns(pl.lit(config_id).alias("config_id"), *[pl.col(c).fill_nan(None) for c in floats]
                              ).select(list(STATS_TABLE_SCHEMA)).cast(STATS_TABLE_SCHEMA)
    store.upsert_rows(con, "strategy_stats", rows, ["config_id"])


def load_strategy_daily(con: duckdb.DuckDBPyConnection, config_id: str, strategy: str, end: dt.date) -> pl.DataFrame:
    """One strategy's stored backtest_daily rows of a configuration before `end`."""
    if not store.table_exists(con, "backtest_daily"):
        return pl.DataFrame(schema=TABLES["backtest_daily"])
    return con.execute("SELECT * FROM backtest_daily WHERE config_id = ? AND strategy = ? AND date < ? ORDER BY date",
                       [config_id, strategy, end]).pl()


def fill_totals(con: duckdb.DuckDBPyConnection, config_id: str, strategy: str, end: dt.date) -> tuple[float, float]:
    """(ordered $, unfilled $) of one strategy's stored orders before `end` (absolute values)."""
    if not store.table_exists(con, "backtest_trades"):
        return 0.0, 0.0
    ordered, unfilled = con.execute(
        "SELECT coalesce(sum(abs(order_value)), 0), coalesce(sum(abs(unfilled_value)), 0) FROM backtest_trades "
        "WHERE config_id = ? AND strategy = ? AND date < ?", [config_id, strategy, end]).fetchone()
    return float(ordered), float(unfilled)


def load_capacity(con: duckdb.DuckDBPyConnection) -> pl.DataFrame | None:
    return store.read_window(con, "backtest_capacity", None, None, None) if store.table_exists(
        con, "backtest_capacity") else None


def write_capacity(con: duckdb.DuckDBPyConnection, rows: pl.DataFrame) -> None:
    # The sweep is recomputed whole from the stored chains: the table is replaced in one transaction.
    store.replace_table(con, "backtest_capacity", rows)
