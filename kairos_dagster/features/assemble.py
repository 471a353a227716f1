"""Glue between warehouse windows and the feature functions (pure polars, no dagster import).

Feature functions compute over each ticker's full stored history; a weekly asset then keeps exactly
the universe rows of its window. These helpers do that restriction, find which table holds a column,
and join the inputs a composite needs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping

import numpy as np
import polars as pl

from kairos_dagster import calendar
from kairos_dagster.features import keys
from kairos_dagster.features.composites import COMPOSITES
from kairos_dagster.features.fundamental import FUNDAMENTAL_TABLES
from kairos_dagster.features.technical import TECHNICAL_TABLES

KEY = ["ticker", "date"]
UNKNOWN_SECTOR = "Unknown"
REGIME_TABLE = "regime_history_academic"
REGIME_COLUMNS = ("regime", "vol_regime", "trend_regime")


def in_window(df: pl.DataFrame, start: dt.date, end: dt.date, column: str = "date") -> pl.DataFrame:
    """Rows with `column` in [start, end)."""
    return df.filter((pl.col(column) >= start) & (pl.col(column) < end))


def _same_keys(a: pl.DataFrame, b: pl.DataFrame, on: list[str]) -> bool:
    """Whether two frames hold the same key rows in the same order (then a join is a column stack)."""
    return a.height == b.height and all(a.get_column(k).equals(b.get_column(k)) for k in on)


def _left_join(left: pl.DataFrame, right: pl.DataFrame, on: list[str]) -> pl.DataFrame:
    """`left` with `right`'s other columns, matched on `on` (null where absent).

    Stored feature tables hold exactly the universe rows sorted by (ticker, date), so the usual case
    is a column stack; anything else falls back to a hash join with the same result.
    """
    value_cols = [c for c in right.columns if c not in on]
    if _same_keys(left, right, on):
        return left.hstack(right.select(value_cols))
    if on == KEY and all(f.schema["ticker"] == pl.String and f.schema["date"] == pl.Date for f in (left, right)):
        return keys.left_join(left, right, "date", value_cols)  # one Int64 key: several times faster
    return left.join(right.select(on + value_cols), on=on, how="left", maintain_order="left")


def restrict_to_rows(rows: pl.DataFrame, df: pl.DataFrame) -> pl.DataFrame:
    """Exactly the (ticker, date) rows of `rows`, in their order, with `df`'s columns (null where absent)."""
    return _left_join(rows.select(KEY), df, KEY)


def sector_map(tickers: pl.DataFrame) -> pl.DataFrame:
    """ticker -> sector, industry from the SEP rows of TICKERS; a missing sector becomes 'Unknown'."""
    return (
        tickers.filter(pl.col("table") == "SEP")
        .select("ticker", pl.col("sector").fill_null(UNKNOWN_SECTOR), pl.col("industry").fill_null(UNKNOWN_SECTOR))
        .unique("ticker", keep="first")
        .sort("ticker")
    )


def column_sources() -> dict[str, str]:
    """Which warehouse table holds each feature column (Phases 2-5; never feat_targets)."""
    out: dict[str, str] = {}
    for name, spec in TECHNICAL_TABLES.items():
        if name == "feat_targets":
            continue
        out.update({c: name for c in spec.columns})
    for name, table in FUNDAMENTAL_TABLES.items():
        out.update({c: name for c in table.columns if c not in out})
    out.update({name: name for name in COMPOSITES})
    out.update({c: REGIME_TABLE for c in REGIME_COLUMNS})
    return out


def tables_for(columns: Iterable[str]) -> dict[str, list[str]]:
    """Group the columns a consumer needs by the table that holds them."""
    sources = column_sources()
    missing = [c for c in columns if c not in sources]
    if missing:
        raise KeyError(f"no feature table provides columns {missing}")
    grouped: dict[str, list[str]] = {}
    for c in columns:
        grouped.setdefault(sources[c], []).append(c)
    return grouped


def join_inputs(
    rows: pl.DataFrame,
    frames: Mapping[str, pl.DataFrame],
    columns: Iterable[str],
    *,
    tickers: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """`rows` (ticker, date) with the requested columns joined from their tables, plus sector/industry.

    The regime table is keyed by date alone; every other table by (ticker, date).
    """
    out = rows.select(KEY)
    for table, cols in tables_for(list(dict.fromkeys(columns))).items():
        if table not in frames:
            raise KeyError(f"input table {table} was not loaded (needed for {cols})")
        frame = frames[table]
        on = ["date"] if table == REGIME_TABLE else KEY
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise KeyError(f"table {table} has no columns {missing}")
        out = _left_join(out, frame.select(on + cols), on) if on == KEY else out.join(
            frame.select(on + cols), on=on, how="left", maintain_order="left")
    if tickers is not None:
        out = out.join(sector_map(tickers), on="ticker", how="left", maintain_order="left").with_columns(
            pl.col("sector").fill_null(UNKNOWN_SECTOR), pl.col("industry").fill_null(UNKNOWN_SECTOR)
        )
    return out


def past_warmup(rows: pl.DataFrame, first_dates: pl.DataFrame, lookback_sessions: int) -> pl.Series:
    """Whether each (ticker, date) row has at least `lookback_sessions` stored sessions before it.

    `first_dates` is (ticker, first_date): the first stored price of each ticker.
    """
    if rows.height == 0:
        return pl.Series("past_warmup", [], dtype=pl.Boolean)
    lo = min(rows.get_column("date").min(), first_dates.get_column("first_date").min())
    hi = rows.get_column("date").max()
    days = calendar.sessions_array(lo, hi)
    idx = pl.DataFrame({"d": days, "i": np.arange(len(days), dtype=np.int64)}).with_columns(pl.col("d").cast(pl.Date))
    r = (
        rows.select(KEY)
        .join(first_dates, on="ticker", how="left", maintain_order="left")
        .join(idx.rename({"d": "date", "i": "i_date"}), on="date", how="left", maintain_order="left")
        .join(idx.rename({"d": "first_date", "i": "i_first"}), on="first_date", how="left", maintain_order="left")
    )
    return ((r.get_column("i_date") - r.get_column("i_first")) >= lookback_sessions).fill_null(False).alias("past_warmup")
