"""Sync core: fetch a window of a SHARADAR table from a source, validate it, plan what is missing, and
read back what the warehouse stored (no dagster import)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb
import polars as pl

from kairos_dagster import calendar
from kairos_dagster.sources.schemas import DAILY, SEP, SF1, SF2, SF3, SF3_KNOWN_LAG_DAYS, TICKERS, TableSchema
from kairos_dagster.sources.source import MarketSource
from kairos_dagster.sources.validate import ValidationResult, validate_rows
from kairos_dagster.warehouse import store


@dataclass(frozen=True)
class SyncTable:
    schema: TableSchema
    partition_column: str  # the warehouse column that places a row in a weekly partition

    @property
    def asset(self) -> str:
        return self.schema.warehouse_table

    def partition_date(self, source_date: dt.date | None) -> dt.date | None:
        """A source point-in-time date expressed in this table's partition column."""
        if source_date is None or self.schema is not SF3:
            return source_date
        return source_date + dt.timedelta(days=SF3_KNOWN_LAG_DAYS)


SYNC_TABLES: dict[str, SyncTable] = {
    t.asset: t
    for t in (
        SyncTable(SEP, "date"),
        SyncTable(DAILY, "date"),
        SyncTable(SF1, "datekey"),
        SyncTable(SF2, "filingdate"),
        # 13F holdings become known 45 days after the quarter: the sync stores that date as `datekey`.
        SyncTable(SF3, "datekey"),
    )
}


def fetch_window(source: MarketSource, table: SyncTable, start: dt.date, end: dt.date) -> pl.DataFrame:
    """Rows of `table` whose partition column lies in [start, end)."""
    last = end - dt.timedelta(days=1)
    if table.schema is SF3:
        lag = dt.timedelta(days=SF3_KNOWN_LAG_DAYS)
        rows = source.fetch(SF3.name, start - lag, last - lag)
        return rows.with_columns((pl.col("calendardate") + pl.duration(days=SF3_KNOWN_LAG_DAYS)).alias("datekey"))
    return source.fetch(table.schema.name, start, last)


def sync_window(
    source: MarketSource, table: SyncTable, start: dt.date, end: dt.date, known_tickers: pl.Series | None
) -> ValidationResult:
    """Fetch and validate one window; the clean frame is what the warehouse stores."""
    rows = fetch_window(source, table, start, end)
    result = validate_rows(
        table.schema, rows, start=start, end=end, date_col=table.partition_column, known_tickers=known_tickers
    )
    sort_cols = [c for c in ("ticker", table.partition_column) if c in result.clean.columns]
    result.clean = result.clean.sort(sort_cols, maintain_order=True)
    return result


def fetch_tickers(source: MarketSource) -> pl.DataFrame:
    """The TICKERS table; duplicate (table, ticker) rows are an error (the key must be unique)."""
    df = source.fetch(TICKERS.name, None, None)
    dups = df.filter(pl.struct(list(TICKERS.key)).is_duplicated())
    if dups.height:
        sample = dups.select("table", "ticker").unique().head(5).rows()
        raise ValueError(f"TICKERS has {dups.height} rows with a duplicate (table, ticker) key, e.g. {sample}")
    return df.sort(["table", "ticker"])


@dataclass(frozen=True)
class SyncStatus:
    """One table's state for `kairos sync --check-only`: what the warehouse holds versus the source."""

    asset: str
    held_latest: dt.date | None
    source_latest: dt.date | None
    first_week: str | None  # the partition range to materialize, None when up to date
    last_week: str | None

    @property
    def up_to_date(self) -> bool:
        return self.first_week is None


def plan_sync(
    asset: str,
    held_latest: dt.date | None,
    source_latest: dt.date | None,
    *,
    start_date: dt.date,
    current_week: str,
    force: bool = False,
) -> SyncStatus:
    """Which weeks a table needs: from the week of its latest held date (re-synced, it may be partial)
    through the week of the source's latest date; everything from `start_date` when nothing is held."""
    from kairos_dagster.calendar import week_start

    if source_latest is None:
        return SyncStatus(asset, held_latest, source_latest, None, None)
    last = min(week_start(source_latest).isoformat(), current_week)
    if held_latest is None:
        first = week_start(start_date).isoformat()
    elif held_latest >= source_latest and not force:
        return SyncStatus(asset, held_latest, source_latest, None, None)
    else:
        first = max(week_start(min(held_latest, source_latest)).isoformat(), week_start(start_date).isoformat())
    if first > last:
        return SyncStatus(asset, held_latest, source_latest, None, None)
    return SyncStatus(asset, held_latest, source_latest, first, last)


@dataclass(frozen=True)
class StoredWindow:
    """What the warehouse holds for a table's window after a sync: the facts its checks judge."""

    duplicate_keys: int
    unknown_ticker_rows: int
    non_session_dates: list[dt.date] | None  # SEP and DAILY only
    invalid_price_rows: int | None  # SEP only


def stored_window(con: duckdb.DuckDBPyConnection, table: SyncTable, start: dt.date, end: dt.date) -> StoredWindow:
    """Duplicate keys, unknown tickers, non-session dates and invalid prices among the stored rows of
    [start, end) (checked on what was written, not on what was meant to be written)."""
    name, col = table.asset, table.partition_column
    key = ", ".join(store.ident(k) for k in table.schema.key)
    params = [start, end]
    where = f"{store.ident(col)} >= ? AND {store.ident(col)} < ?"
    dup = con.execute(
        f"SELECT count(*) FROM (SELECT {key} FROM {name} WHERE {where} GROUP BY {key} HAVING count(*) > 1)", params
    ).fetchone()[0]
    unknown = con.execute(
        f"SELECT count(*) FROM {name} s WHERE {where.replace(store.ident(col), 's.' + store.ident(col))} "
        "AND s.ticker NOT IN (SELECT ticker FROM tickers)",
        params,
    ).fetchone()[0]
    bad_dates = None
    if table.schema.name in {"SEP", "DAILY"}:
        dates = con.execute(f"SELECT DISTINCT {col} FROM {name} WHERE {where}", params).pl().get_column(col)
        sessions = calendar.sessions_frame(start, end - dt.timedelta(days=1)).get_column("date")
        bad_dates = dates.filter(~dates.is_in(sessions.implode())).to_list()
    bad_px = None
    if table.schema.name == "SEP":
        bad_px = int(con.execute(
            f"SELECT count(*) FROM {name} WHERE {where} AND NOT (open > 0 AND high > 0 AND low > 0 AND close > 0 "
            "AND closeadj > 0 AND low <= least(open, close) * (1 + 1e-9) AND high >= greatest(open, close) * (1 - 1e-9) "
            "AND volume >= 0)",
            params,
        ).fetchone()[0])
    return StoredWindow(int(dup), int(unknown), bad_dates, bad_px)


def record_rejects(con: duckdb.DuckDBPyConnection, table: str, rejects: pl.DataFrame, start: dt.date,
                   end: dt.date) -> None:
    """Keep rejected rows inspectable in `sync_rejects`, replacing this table's window."""
    rows = rejects.select(
        pl.lit(table).alias("table_name"),
        pl.lit(start).alias("window_start"),
        pl.lit(end).alias("window_end"),
        "reason",
        "ticker",
        "date",
    )
    store.replace_window(con, "sync_rejects", rows, "window_start", start, end, scope={"table_name": table})
