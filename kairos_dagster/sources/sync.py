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
    """The TICKERS table; duplicate (table, ticker) rows, or one permaticker under two symbols of a table,
    are an error (the keys must be unique)."""
    df = source.fetch(TICKERS.name, None, None)
    dups = df.filter(pl.struct(list(TICKERS.key)).is_duplicated())
    if dups.height:
        sample = dups.select("table", "ticker").unique().head(5).rows()
        raise ValueError(f"TICKERS has {dups.height} rows with a duplicate (table, ticker) key, e.g. {sample}")
    twice = df.filter(pl.struct("table", "permaticker").is_duplicated())
    if twice.height:
        sample = twice.select("table", "permaticker", "ticker").sort("permaticker").head(6).rows()
        raise ValueError(f"TICKERS lists {twice.height} rows of a permaticker under several symbols of one table, "
                         f"e.g. {sample}: a company has one symbol at a time")
    return df.sort(["table", "ticker"])


# Ticker changes. The feed re-keys a company's whole history to its new symbol and keeps its permaticker;
# the warehouse does the same, in place, in every table keyed by `ticker` (features, predictions, picks,
# the backtest's book): a change is a relabelling, never a sale of the old symbol and a buy of the new.
# Logs and rejects keep the symbols they were written with; brokers key their own books by `symbol`
# and re-key them themselves (the simulated broker from `ticker_changes`, Alpaca on the exchange's notice).
TICKER_CHANGES_TABLE = "ticker_changes"
TICKER_CHANGE_KEY = ("permaticker", "old_ticker", "new_ticker", "table_name")
NOT_REKEYED = frozenset({"tickers", "sync_rejects", "sync_restatements", TICKER_CHANGES_TABLE})


def _empty_changes() -> pl.DataFrame:
    return pl.DataFrame(schema={"permaticker": pl.Int64, "old_ticker": pl.String, "new_ticker": pl.String})


def detect_ticker_changes(held: pl.DataFrame | None, served: pl.DataFrame) -> pl.DataFrame:
    """permaticker, old_ticker, new_ticker for each company the warehouse holds under another symbol than
    the feed serves now (the SEP rows of TICKERS: `held` from the warehouse, `served` fresh)."""
    if held is None or not held.height:
        return _empty_changes()

    def sep(df: pl.DataFrame, name: str) -> pl.DataFrame:
        return df.filter(pl.col("table") == "SEP").select(pl.col("permaticker").cast(pl.Int64),
                                                         pl.col("ticker").alias(name)).unique()

    return (sep(held, "old_ticker").join(sep(served, "new_ticker"), on="permaticker")
            .filter(pl.col("old_ticker") != pl.col("new_ticker")).sort("permaticker"))


def rekeyed_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The warehouse tables keyed by `ticker` that a ticker change re-keys."""
    rows = con.execute(
        "SELECT c.table_name FROM information_schema.columns c JOIN information_schema.tables t "
        "USING (table_catalog, table_schema, table_name) WHERE c.column_name = 'ticker' "
        "AND t.table_type = 'BASE TABLE' AND c.table_schema = current_schema() ORDER BY 1").fetchall()
    return [r[0] for r in rows if r[0] not in NOT_REKEYED]


def apply_ticker_changes(con: duckdb.DuckDBPyConnection, changes: pl.DataFrame, tickers: pl.DataFrame, *,
                         as_of: object, run_id: str) -> pl.DataFrame:
    """In one transaction: every re-keyed table's rows of an old symbol take the new one, each change is
    logged per table in `ticker_changes` (permaticker, old_ticker, new_ticker, table_name, rows, as_of,
    run_id, recorded_at), and `tickers` is replaced by the served table, so that no table ever names a
    symbol `tickers` does not. Symbols swapped between companies move together. A table that already
    holds rows under a new symbol (not itself an old one) is an error: nothing is written."""
    log_schema = {**_empty_changes().schema, "table_name": pl.String, "rows": pl.Int64, "as_of": pl.Date,
                  "run_id": pl.String, "recorded_at": pl.Datetime("us")}
    if not changes.height:
        return pl.DataFrame(schema=log_schema)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    counts = []
    with store.transaction(con, "ticker change: re-keying failed",
                           {"_kairos_changes": changes, "_kairos_tickers": tickers}):
        olds = set(changes.get_column("old_ticker"))
        for table in rekeyed_tables(con):
            t = store.ident(table)
            # one scan: rows under an old symbol (to re-key) and under a new one that is not also old
            held = dict(con.execute(
                f"SELECT ticker, count(*) FROM {t} WHERE ticker IN (SELECT old_ticker FROM _kairos_changes "
                "UNION SELECT new_ticker FROM _kairos_changes) GROUP BY ticker").fetchall())
            taken = sorted(k for k in held if k not in olds)
            if taken:
                raise ValueError(
                    f"ticker change: {table} already holds rows under the new symbol(s) {taken[:5]}; "
                    "re-keying would mix two companies' rows (refresh `tickers` before syncing the tables "
                    "after a ticker change); nothing was written")
            n = [(k, v) for k, v in held.items() if k in olds]
            if not n:
                continue
            con.execute(f"UPDATE {t} SET ticker = c.new_ticker FROM _kairos_changes c "
                        f"WHERE {t}.ticker = c.old_ticker")
            counts += [(table, old, int(k)) for old, k in n]
        log = (changes.join(pl.DataFrame(counts, schema={"table_name": pl.String, "old_ticker": pl.String,
                                                         "rows": pl.Int64}, orient="row"),
                            on="old_ticker", how="inner")
               .with_columns(pl.lit(as_of).cast(pl.Date).alias("as_of"), pl.lit(run_id).alias("run_id"),
                             pl.lit(now).alias("recorded_at"))
               .select(list(log_schema)).sort("permaticker", "table_name"))
        con.register("_kairos_change_log", log)
        try:
            con.execute(f"CREATE TABLE IF NOT EXISTS {TICKER_CHANGES_TABLE} AS SELECT * FROM _kairos_change_log "
                        "LIMIT 0")
            con.execute(f"INSERT INTO {TICKER_CHANGES_TABLE} BY NAME SELECT * FROM _kairos_change_log")
        finally:
            con.unregister("_kairos_change_log")
        con.execute("CREATE OR REPLACE TABLE tickers AS SELECT * FROM _kairos_tickers")
    return log


def current_symbols(con: duckdb.DuckDBPyConnection, symbols: pl.Series) -> pl.Series:
    """`symbols` with every symbol the warehouse has re-keyed replaced by the company's current one: for
    holdings recorded before a change (a picks.csv). Changes apply in the order they were recorded, those
    of one sync at once (a swap of two symbols stays a swap), so chains A -> B -> C end at C."""
    if not store.table_exists(con, TICKER_CHANGES_TABLE) or not symbols.len():
        return symbols
    rows = con.execute(f"SELECT DISTINCT recorded_at, old_ticker, new_ticker FROM {TICKER_CHANGES_TABLE} "
                       "ORDER BY ALL").pl()
    mapping: dict[str, str] = {}
    for _, batch in rows.group_by("recorded_at", maintain_order=True):  # one group per sync: a few a year
        step = dict(batch.select("old_ticker", "new_ticker").iter_rows())
        mapping = {k: step.get(v, v) for k, v in mapping.items()}
        mapping.update({k: v for k, v in step.items() if k not in mapping})
    return symbols.replace(mapping) if mapping else symbols


# SHARADAR rewrites rows of these tables after the fact (SEP on every split and dividend, corrections in
# all three) and moves their `lastupdated`: the sync asks for `lastupdated.gte=<newest held>` as well.
RESTATABLE = frozenset(t for t, spec in SYNC_TABLES.items() if "lastupdated" in spec.schema.columns)
RESTATEMENTS_TABLE = "sync_restatements"
RESTATEMENT_KEY = ("table_name", "ticker", "kind", "lastupdated")


@dataclass
class Restated:
    """Rows of a table the feed rewrote outside the synced window, as they now differ from the stored rows."""

    since: dt.date | None  # the `lastupdated.gte` asked (the newest lastupdated held); None: nothing held
    rows: pl.DataFrame  # the changed rows, in the table's schema (to upsert by key)
    summary: pl.DataFrame  # one row per (ticker, kind): rows, first_date, last_date, lastupdated, factor
    fetched: int  # rows the source returned outside the window
    validation: ValidationResult | None

    @property
    def tickers(self) -> int:
        return self.summary.get_column("ticker").n_unique() if self.summary.height else 0


def held_watermark(con: duckdb.DuckDBPyConnection, table: SyncTable) -> dt.date | None:
    """The newest `lastupdated` the warehouse holds for `table`: what the next sync asks the feed for
    (a record of the last sync kept in the table itself, so it can never disagree with the rows)."""
    if not store.table_exists(con, table.asset) or "lastupdated" not in store.table_columns(con, table.asset):
        return None
    return con.execute(f"SELECT max(lastupdated) FROM {store.ident(table.asset)}").fetchone()[0]


def _empty_summary() -> pl.DataFrame:
    return pl.DataFrame(schema={"table_name": pl.String, "ticker": pl.String, "kind": pl.String, "rows": pl.Int64,
                                "first_date": pl.Date, "last_date": pl.Date, "lastupdated": pl.Date,
                                "factor": pl.Float64})


class SourceBehindWarehouse(ValueError):
    """The source serves data as of a day before rows the warehouse already holds: its rows would sit
    beside rows adjusted as of a later day, so nothing is written."""


def fetch_restated(
    source: MarketSource, con: duckdb.DuckDBPyConnection, table: SyncTable, start: dt.date, end: dt.date,
    known_tickers: pl.Series | None, *, not_before: dt.date, not_after: dt.date, since: dt.date | None = None,
) -> Restated:
    """The rows of `table` dated in the held span [not_before, not_after] outside the window [start, end)
    that the feed rewrote since the newest `lastupdated` held, validated, and kept only where they differ
    from what is stored (rows dated after the held span belong to weeks not synced yet). `since`
    overrides the held watermark (the migration asks for every held row)."""
    name, col = table.asset, table.partition_column
    spec = table.schema
    if since is None:
        since = held_watermark(con, table) if name in RESTATABLE else None
    empty = Restated(since, spec.empty(), _empty_summary(), 0, None)
    if since is None:
        return empty
    if since > source.as_of:
        raise SourceBehindWarehouse(
            f"{name}: the source serves data as of {source.as_of}, but the warehouse holds rows updated on {since}: "
            "rows adjusted as of an earlier day would sit beside later ones. Sync into a fresh warehouse (for a "
            "demo of an earlier day: `make clean-data`, or point KAIROS_DUCKDB_PATH at another file); nothing "
            "was written")
    rows = source.fetch_updated(spec.name, since, not_before)
    rows = rows.filter(((pl.col(col) < start) | (pl.col(col) >= end)) & pl.col(col).is_between(not_before, not_after))
    if not rows.height:
        return empty
    lo, hi = rows.get_column(col).min(), rows.get_column(col).max()
    checked = validate_rows(spec, rows, start=lo, end=hi + dt.timedelta(days=1), date_col=col,
                            known_tickers=known_tickers)
    changed, summary = compare_with_stored(con, table, checked.clean)
    return Restated(since, changed, summary, rows.height, checked)


def compare_with_stored(
    con: duckdb.DuckDBPyConnection, table: SyncTable, fresh: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The rows of `fresh` that differ from the stored rows of the same key (or are not stored), and a
    summary per (ticker, kind). `restamped`: only `lastupdated` moved. SEP kinds: `correction` (the raw close changed), `split` (the split-adjusted
    close changed by a common factor), `dividend` (only closeadj changed), `revision` (anything else);
    other tables: `revision`; `late` for a row the warehouse did not hold; SF1 MR rows (restated, dated by
    their report period): `most_recent`."""
    key = list(table.schema.key)
    values = [c for c in fresh.columns if c not in key]
    con.register("_kairos_fresh", fresh.select(key))
    try:
        cond = " AND ".join(f"s.{store.ident(k)} IS NOT DISTINCT FROM f.{store.ident(k)}" for k in key)
        stored = con.execute(
            f"SELECT s.* FROM {store.ident(table.asset)} s SEMI JOIN _kairos_fresh f ON {cond}").pl()
    finally:
        con.unregister("_kairos_fresh")
    stored = stored.select([pl.col(c).cast(fresh.schema[c]) for c in fresh.columns if c in stored.columns]
                           ).with_columns(pl.lit(True).alias("_held"))
    joined = fresh.join(stored, on=key, how="left", suffix="__held", nulls_equal=True).with_columns(
        pl.col("_held").fill_null(False))
    values = [c for c in values if c in stored.columns]
    differs = pl.any_horizontal([pl.col(c).ne_missing(pl.col(f"{c}__held")) for c in values]) if values else pl.lit(False)
    joined = joined.filter(differs | ~pl.col("_held"))

    def moved(c: str) -> pl.Expr:
        return pl.col(c).ne_missing(pl.col(f"{c}__held")) if c in values else pl.lit(False)

    data = [c for c in values if c != "lastupdated"]
    # only `lastupdated` moved (the feed rewrote the row unchanged, e.g. re-keyed on a ticker change)
    restamped = ~pl.any_horizontal([moved(c) for c in data]) if data else pl.lit(True)
    if table.schema.name == "SEP":
        kind = (pl.when(~pl.col("_held")).then(pl.lit("late"))
                .when(restamped).then(pl.lit("restamped"))
                .when(moved("closeunadj")).then(pl.lit("correction"))
                .when(moved("close")).then(pl.lit("split"))
                .when(moved("closeadj")).then(pl.lit("dividend"))
                .otherwise(pl.lit("revision")))
        factor = (pl.col("close__held") / pl.col("close")).median()
    else:
        kind = (pl.when(~pl.col("_held")).then(pl.lit("late")).when(restamped).then(pl.lit("restamped"))
                .otherwise(pl.lit("revision")))
        if table.schema.name == "SF1":  # restated MR rows: no feature reads them (they look ahead)
            kind = pl.when(pl.col("dimension").str.starts_with("MR")).then(pl.lit("most_recent")).otherwise(kind)
        factor = pl.lit(None, pl.Float64)
    date_col = table.partition_column
    summary = (
        joined.with_columns(kind.alias("kind"))
        .group_by("ticker", "kind")
        .agg(pl.len().cast(pl.Int64).alias("rows"), pl.col(date_col).min().alias("first_date"),
             pl.col(date_col).max().alias("last_date"),
             (pl.col("lastupdated").max() if "lastupdated" in fresh.columns else pl.lit(None, pl.Date)
              ).alias("lastupdated"),
             factor.cast(pl.Float64).alias("factor"))
        .with_columns(pl.lit(table.asset).alias("table_name"))
        .select(_empty_summary().columns)
        .sort("ticker", "kind")
    )
    return joined.select(fresh.columns), summary


def apply_restated(con: duckdb.DuckDBPyConnection, table: SyncTable, restated: Restated, *, run_id: str,
                   kind: str | None = None) -> None:
    """Rewrite the restated rows in place (by key) and record them in `sync_restatements`, in one
    transaction: a restatement applied is a restatement recorded (the rebuild sensor reads the log).
    `kind` replaces the per-row kinds with one per ticker (the migration's `migrated`)."""
    if not restated.rows.height:
        return
    summary = restated.summary
    if kind is not None:
        summary = summary.group_by("table_name", "ticker").agg(
            pl.col("rows").sum(), pl.col("first_date").min(), pl.col("last_date").max(),
            pl.col("lastupdated").max(), pl.col("factor").first()).with_columns(pl.lit(kind).alias("kind"))
    log = summary.select(_empty_summary().columns).with_columns(
        pl.lit(run_id).alias("run_id"), pl.lit(restated.since).cast(pl.Date).alias("since"),
        pl.lit(dt.datetime.now(dt.UTC).replace(tzinfo=None)).alias("recorded_at"))
    store.upsert_many(con, [(table.asset, restated.rows, list(table.schema.key)),
                            (RESTATEMENTS_TABLE, log, list(RESTATEMENT_KEY))])


def restatement_counts(con: duckdb.DuckDBPyConnection, run_id: str) -> list[tuple[str, str, int, int]]:
    """(table, kind, tickers, rows) that run `run_id` restated."""
    if not store.table_exists(con, RESTATEMENTS_TABLE):
        return []
    return con.execute(f"SELECT table_name, kind, count(DISTINCT ticker), sum(rows) FROM {RESTATEMENTS_TABLE} "
                       "WHERE run_id = ? GROUP BY ALL ORDER BY ALL", [run_id]).fetchall()


# Kinds that change what features read. Splits and dividends rescale a ticker's history by one factor,
# which no feature sees (returns are ratios; levels are in prices as known on their own date); a
# restamped row is unchanged.
REBUILD_KINDS = ("correction", "revision", "late")


def pending_rebuilds(con: duckdb.DuckDBPyConnection, after: dt.datetime | None, *,
                     run_id: str | None = None) -> pl.DataFrame:
    """Restatements recorded after `after` (all when None; only those of `run_id` when given) that change
    feature inputs: table_name, ticker, kind, rows, first_date, last_date, recorded_at."""
    if not store.table_exists(con, RESTATEMENTS_TABLE):
        return _empty_summary().select("table_name", "ticker", "kind", "rows", "first_date", "last_date").with_columns(
            pl.lit(None, pl.Datetime("us")).alias("recorded_at"))
    where, params = "kind IN (SELECT unnest(?))", [list(REBUILD_KINDS)]
    if after is not None:
        where += " AND recorded_at > ?"
        params.append(after)
    if run_id is not None:
        where += " AND run_id = ?"
        params.append(run_id)
    return con.execute(
        f"SELECT table_name, ticker, kind, rows, first_date, last_date, recorded_at FROM {RESTATEMENTS_TABLE} "
        f"WHERE {where} ORDER BY recorded_at, table_name, ticker", params).pl()


def rebuild_span(pending: pl.DataFrame, lookahead_sessions: int) -> tuple[dt.date, dt.date] | None:
    """The dates whose features read a restated row: from `lookahead_sessions` before the first restated
    date (forward targets read ahead) through the last one; rolling windows after that read the
    corrected rows when their own week is built. None when nothing is pending."""
    if not pending.height:
        return None
    first, last = pending.get_column("first_date").min(), pending.get_column("last_date").max()
    return calendar.sessions_offset(first, -lookahead_sessions), last


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
