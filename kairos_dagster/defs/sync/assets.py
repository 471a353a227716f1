"""Phase 0 — sync SHARADAR tables into the warehouse: `tickers` (full refresh) and weekly partitions."""


import datetime as dt
from collections.abc import Iterator

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    Failure,
    MetadataValue,
    Output,
    PartitionsDefinition,
    asset,
)

from kairos_dagster.defs import checks as check_specs
from kairos_dagster.defs.metadata import add_images, frame_metadata, weekly_output
from kairos_dagster.defs.partitions import SINGLE_RUN, window_dates
from kairos_dagster.defs.side_tables import report_side_tables
from kairos_dagster.resources.source import SharadarSource, SourceConfigError
from kairos_dagster.resources.warehouse import DuckDBWarehouse
from kairos_dagster.settings import SettingsError
from kairos_dagster.sources.migrate import MigrationNeeded, check_current
from kairos_dagster.sources.sync import (
    RESTATABLE,
    SYNC_TABLES,
    Restated,
    SourceBehindWarehouse,
    SyncTable,
    apply_restated,
    apply_ticker_changes,
    detect_ticker_changes,
    fetch_restated,
    fetch_tickers,
    record_rejects,
    stored_window,
    sync_window,
)
from kairos_dagster.sources.validate import DEFAULT_REJECT_THRESHOLD
from kairos_dagster.warehouse import plots, store
from kairos_dagster.warehouse.summary import markdown_table, significant

GROUP = "sync"


@asset(
    name="tickers",
    group_name=GROUP,
    pool="duckdb",
    io_manager_key="warehouse_io",
    kinds={"duckdb", "polars"},
    check_specs=[AssetCheckSpec("unique_table_ticker", asset="tickers",
                                description="One row per (table, ticker) and one symbol per permaticker and table, "
                                            "as stored.")],
)
def tickers(context: AssetExecutionContext, source: SharadarSource, warehouse: DuckDBWarehouse) -> Iterator:
    """SHARADAR TICKERS: one row per (table, ticker) with sector, industry, category and listing dates.

    A company whose symbol changed (same permaticker, new ticker) is re-keyed in every warehouse table
    keyed by `ticker`, in the transaction that stores the new TICKERS, and logged in `ticker_changes`."""
    ident = bind_source(warehouse, source)
    feed = _build(source)
    try:
        df = fetch_tickers(feed)
    except ValueError as exc:
        raise Failure(description=f"tickers: {exc}; nothing was written") from None
    with warehouse.connect() as con:
        held = (con.execute('SELECT "table", permaticker, ticker FROM tickers').pl()
                if store.table_exists(con, "tickers") else None)
        changes = detect_ticker_changes(held, df)
        try:
            log = apply_ticker_changes(con, changes, df, as_of=feed.as_of, run_id=context.run.run_id)
        except ValueError as exc:
            raise Failure(description=str(exc)) from None
        report_side_tables(context, con, ["ticker_changes", "kairos_meta"])
    md = frame_metadata(df, None, nulls=False)
    md["source"] = MetadataValue.text(ident)
    md["sep_tickers"] = MetadataValue.int(df.filter(pl.col("table") == "SEP").height)
    md["delisted"] = MetadataValue.int(df.filter((pl.col("table") == "SEP") & (pl.col("isdelisted") == "Y")).height)
    md["ticker_changes"] = MetadataValue.int(changes.height)
    if changes.height:
        md["ticker_changes_applied"] = MetadataValue.md(markdown_table(
            log.group_by("permaticker", "old_ticker", "new_ticker").agg(
                pl.len().alias("tables"), pl.col("rows").sum()).sort("permaticker")))
    yield Output(df, metadata=md)
    with warehouse.connect() as con:
        stored = con.execute('SELECT count(*) - count(DISTINCT ("table", ticker)), '
                             'count(*) - count(DISTINCT ("table", permaticker)) FROM tickers').fetchone() \
            if store.table_exists(con, "tickers") else (0, 0)
    yield AssetCheckResult(check_name="unique_table_ticker", passed=stored == (0, 0),
                           metadata={"rows": df.height, "duplicate_table_ticker": int(stored[0]),
                                     "duplicate_table_permaticker": int(stored[1])})


def bind_source(warehouse: DuckDBWarehouse, source: SharadarSource) -> str:
    """The source this run syncs from, checked against the one the warehouse was built from (recorded in
    kairos_meta at its first sync): a warehouse never holds synthetic rows beside real ones."""
    try:
        ident = source.identity()
    except (SourceConfigError, SettingsError) as exc:
        raise Failure(description=f"data source: {exc}") from None
    with warehouse.connect() as con:
        try:
            check_current(con, warehouse.path)
        except MigrationNeeded as exc:
            raise Failure(description=str(exc)) from None
        held = store.read_meta(con, "data_source")
        if held is None:
            store.write_meta(con, "data_source", ident)
        elif held != ident:
            raise Failure(description=(
                f"warehouse {warehouse.path} holds data from source `{held}`; this run's source is `{ident}`: a "
                "warehouse never mixes sources (point KAIROS_DUCKDB_PATH at another file, or set KAIROS_DATA_SOURCE / "
                "KAIROS_SYNTHETIC_* to the warehouse's); nothing was written"))
    return ident


def _build(source: SharadarSource):
    try:
        return source.build()
    except (SourceConfigError, SettingsError) as exc:
        raise Failure(description=f"data source: {exc}") from None


def _stored_checks(warehouse: DuckDBWarehouse, table: SyncTable, start: dt.date, end: dt.date) -> list[AssetCheckResult]:
    """Checks on what the warehouse now holds for the window (not on what we meant to write)."""
    with warehouse.connect() as con:
        held = stored_window(con, table, start, end)
    results = [
        AssetCheckResult(check_name="unique_keys", passed=held.duplicate_keys == 0,
                         metadata={"duplicate_keys": held.duplicate_keys}),
        AssetCheckResult(check_name="tickers_known", passed=held.unknown_ticker_rows == 0,
                         metadata={"unknown_ticker_rows": held.unknown_ticker_rows}),
    ]
    if held.non_session_dates is not None:
        bad = held.non_session_dates
        results.append(AssetCheckResult(
            check_name="dates_are_sessions", passed=not bad,
            metadata={"non_session_dates": MetadataValue.text(", ".join(map(str, bad)) or "none")}))
    if held.invalid_price_rows is not None:
        results.append(AssetCheckResult(check_name="prices_valid", passed=held.invalid_price_rows == 0,
                                        metadata={"invalid_price_rows": held.invalid_price_rows}))
    return results


def _sync_asset(table: SyncTable, weekly: PartitionsDefinition) -> AssetsDefinition:
    name = table.asset
    checks = ["valid_rows", "unique_keys", "tickers_known"]
    if table.schema.name in {"SEP", "DAILY"}:
        checks.append("dates_are_sessions")
    if table.schema.name == "SEP":
        checks.append("prices_valid")

    @asset(
        name=name,
        group_name=GROUP,
        partitions_def=weekly,
        backfill_policy=SINGLE_RUN,
        deps=["tickers"],
        metadata={"partition_expr": table.partition_column},
        pool="duckdb",
        io_manager_key="warehouse_io",
        kinds={"duckdb", "polars"},
        check_specs=check_specs.specs(name, checks, weekly),
        description=(
            f"SHARADAR {table.schema.name}, rows whose `{table.partition_column}` falls in the partition's week(s). "
            "Invalid rows are rejected by reason (see `sync_rejects`), never dropped silently."
        ),
    )
    def _sync(context: AssetExecutionContext, source: SharadarSource, warehouse: DuckDBWarehouse) -> Iterator:
        start, end = window_dates(context.partition_time_window)
        ident = bind_source(warehouse, source)
        known = warehouse.read("tickers", columns=["ticker"]).get_column("ticker").unique()
        feed = _build(source)
        result = sync_window(feed, table, start, end, known)
        with warehouse.connect() as con:
            try:
                restated = _restated(con, feed, table, start, end, known)
            except SourceBehindWarehouse as exc:
                raise Failure(description=str(exc)) from None
            apply_restated(con, table, restated, run_id=context.run.run_id)
            rejects = result.rejects
            if restated.validation is not None and restated.validation.rejects.height:
                rejects = pl.concat([rejects, restated.validation.rejects], how="vertical_relaxed")
            record_rejects(con, name, rejects, start, end)
            report_side_tables(context, con, ["sync_rejects", "sync_restatements"])
        md = frame_metadata(result.clean, table.partition_column)
        md["source"] = MetadataValue.text(ident)
        md["window"] = MetadataValue.text(f"{start} .. {end - dt.timedelta(days=1)}")
        md["input_rows"] = MetadataValue.int(result.input_rows)
        md["rejected_rows"] = MetadataValue.int(result.rejected)
        md["rejects_by_reason"] = MetadataValue.json(result.counts)
        if result.clean.height and table.partition_column in result.clean.columns:
            counts = (result.clean.group_by(pl.col(table.partition_column).dt.truncate("1w").alias("week"))
                      .agg(pl.len().alias("rows")))
            add_images(md, rows_per_week_chart=plots.rows_per_week_png(
                counts, f"{table.asset}: rows per week ({start} .. {end - dt.timedelta(days=1)})"))
        restated_rejected = restated.validation.rejected if restated.validation is not None else 0
        if name in RESTATABLE:
            md.update(_restated_metadata(restated))
            md["restated_rejected_rows"] = MetadataValue.int(restated_rejected)
        yield weekly_output(context, result.clean, md)
        restated_rate = restated_rejected / restated.fetched if restated.fetched else 0.0
        passed = result.reject_rate <= DEFAULT_REJECT_THRESHOLD and restated_rate <= DEFAULT_REJECT_THRESHOLD
        yield AssetCheckResult(
            check_name="valid_rows",
            passed=passed,
            severity=AssetCheckSeverity.ERROR if not passed else AssetCheckSeverity.WARN,
            metadata={
                "rejected_rows": result.rejected,
                "reject_rate": significant(result.reject_rate),
                # restated rows outside the week, rejected by the same rules (kept in sync_rejects too)
                "restated_rejected_rows": restated_rejected,
                "threshold": DEFAULT_REJECT_THRESHOLD,
                "rejects_by_reason": MetadataValue.json(result.counts),
                "sample": MetadataValue.md(markdown_table(result.rejects)),
            },
        )
        yield from _stored_checks(warehouse, table, start, end)

    return _sync


def _restated(con, feed, table: SyncTable, start: dt.date, end: dt.date, known: pl.Series) -> Restated:
    """The held rows outside the window that the feed rewrote since the last sync."""
    first, last = (store.date_range(con, table.asset, table.partition_column)[:2]
                   if store.table_exists(con, table.asset) else (None, None))
    if first is None:
        return fetch_restated(feed, con, table, start, end, known, not_before=start, not_after=start)
    return fetch_restated(feed, con, table, start, end, known, not_before=first, not_after=last)


def _restated_metadata(restated: Restated) -> dict:
    """What the sync rewrote outside its window: rows, tickers and weeks by kind, and a sample."""
    summary = restated.summary
    by_kind = {k: int(n) for k, n in summary.group_by("kind").agg(pl.col("rows").sum()).sort("kind").iter_rows()}
    md = {
        "restated_since": MetadataValue.text(str(restated.since) if restated.since else "nothing held: a first sync"),
        "restated_rows": MetadataValue.int(int(summary.get_column("rows").sum()) if summary.height else 0),
        "restated_tickers": MetadataValue.int(restated.tickers),
        "restated_rows_by_kind": MetadataValue.json(by_kind),
    }
    if summary.height:
        weeks = summary.select(pl.col("first_date").min(), pl.col("last_date").max()).row(0)
        md["restated_dates"] = MetadataValue.text(f"{weeks[0]} .. {weeks[1]}")
        md["restatements"] = MetadataValue.md(markdown_table(
            summary.sort("rows", descending=True).head(25).drop("table_name")))
    return md


def build_sync_assets(weekly: PartitionsDefinition) -> list[AssetsDefinition]:
    """`tickers` and one weekly asset per SHARADAR table."""
    return [tickers, *(_sync_asset(t, weekly) for t in SYNC_TABLES.values())]
