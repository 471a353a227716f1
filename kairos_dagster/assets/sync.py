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
    asset,
)

from kairos_dagster import calendar
from kairos_dagster.assets.metadata import frame_metadata, markdown_table, weekly_output
from kairos_dagster.partitions import SINGLE_RUN, WEEKLY, window_dates
from kairos_dagster.resources import SharadarSource, SourceConfigError
from kairos_dagster.settings import SettingsError
from kairos_dagster.sources.sync import SYNC_TABLES, SyncTable, fetch_tickers, sync_window
from kairos_dagster.sources.validate import DEFAULT_REJECT_THRESHOLD
from kairos_dagster.warehouse import store
from kairos_dagster.warehouse.io_manager import DuckDBWarehouse

GROUP = "sync"


@asset(
    name="tickers",
    group_name=GROUP,
    pool="duckdb",
    io_manager_key="warehouse_io",
    kinds={"duckdb", "polars"},
    check_specs=[AssetCheckSpec("unique_table_ticker", asset="tickers")],
)
def tickers(context: AssetExecutionContext, source: SharadarSource, warehouse: DuckDBWarehouse) -> Iterator:
    """SHARADAR TICKERS: one row per (table, ticker) with sector, industry, category and listing dates."""
    ident = bind_source(warehouse, source)
    df = fetch_tickers(_build(source))
    md = frame_metadata(df, None, nulls=False)
    md["source"] = MetadataValue.text(ident)
    md["sep_tickers"] = MetadataValue.int(df.filter(pl.col("table") == "SEP").height)
    md["delisted"] = MetadataValue.int(df.filter((pl.col("table") == "SEP") & (pl.col("isdelisted") == "Y")).height)
    yield Output(df, metadata=md)
    yield AssetCheckResult(check_name="unique_table_ticker", passed=True, metadata={"rows": df.height})


def bind_source(warehouse: DuckDBWarehouse, source: SharadarSource) -> str:
    """The source this run syncs from, checked against the one the warehouse was built from (recorded in
    kairos_meta at its first sync): a warehouse never holds synthetic rows beside real ones."""
    try:
        ident = source.identity()
    except (SourceConfigError, SettingsError) as exc:
        raise Failure(description=f"data source: {exc}") from None
    with warehouse.connect() as con:
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
    name, col = table.asset, table.partition_column
    key = ", ".join(store.ident(k) for k in table.schema.key)
    params = [start, end]
    where = f"{store.ident(col)} >= ? AND {store.ident(col)} < ?"
    with warehouse.connect() as con:
        dup = con.execute(
            f"SELECT count(*) FROM (SELECT {key} FROM {name} WHERE {where} GROUP BY {key} HAVING count(*) > 1)", params
        ).fetchone()[0]
        unknown = con.execute(
            f"SELECT count(*) FROM {name} s WHERE {where.replace(store.ident(col), 's.' + store.ident(col))} "
            "AND s.ticker NOT IN (SELECT ticker FROM tickers)",
            params,
        ).fetchone()[0]
        results = [
            AssetCheckResult(check_name="unique_keys", passed=dup == 0, metadata={"duplicate_keys": int(dup)}),
            AssetCheckResult(check_name="tickers_known", passed=unknown == 0, metadata={"unknown_ticker_rows": int(unknown)}),
        ]
        if table.schema.name in {"SEP", "DAILY"}:
            dates = con.execute(f"SELECT DISTINCT {col} FROM {name} WHERE {where}", params).pl().get_column(col)
            sessions = calendar.sessions_frame(start, end - dt.timedelta(days=1)).get_column("date")
            bad = dates.filter(~dates.is_in(sessions.implode()))
            results.append(
                AssetCheckResult(check_name="dates_are_sessions", passed=bad.len() == 0,
                                 metadata={"non_session_dates": MetadataValue.text(", ".join(map(str, bad.to_list())) or "none")})
            )
        if table.schema.name == "SEP":
            bad_px = con.execute(
                f"SELECT count(*) FROM {name} WHERE {where} AND NOT (open > 0 AND high > 0 AND low > 0 AND close > 0 "
                "AND closeadj > 0 AND low <= least(open, close) * (1 + 1e-9) AND high >= greatest(open, close) * (1 - 1e-9) "
                "AND volume >= 0)",
                params,
            ).fetchone()[0]
            results.append(AssetCheckResult(check_name="prices_valid", passed=bad_px == 0,
                                            metadata={"invalid_price_rows": int(bad_px)}))
    return results


def _sync_asset(table: SyncTable) -> AssetsDefinition:
    name = table.asset
    checks = ["valid_rows", "unique_keys", "tickers_known"]
    if table.schema.name in {"SEP", "DAILY"}:
        checks.append("dates_are_sessions")
    if table.schema.name == "SEP":
        checks.append("prices_valid")

    @asset(
        name=name,
        group_name=GROUP,
        partitions_def=WEEKLY,
        backfill_policy=SINGLE_RUN,
        deps=["tickers"],
        metadata={"partition_expr": table.partition_column},
        pool="duckdb",
        io_manager_key="warehouse_io",
        kinds={"duckdb", "polars"},
        check_specs=[AssetCheckSpec(c, asset=name) for c in checks],
        description=(
            f"SHARADAR {table.schema.name}, rows whose `{table.partition_column}` falls in the partition's week(s). "
            "Invalid rows are rejected by reason (see `sync_rejects`), never dropped silently."
        ),
    )
    def _sync(context: AssetExecutionContext, source: SharadarSource, warehouse: DuckDBWarehouse) -> Iterator:
        start, end = window_dates(context.partition_time_window)
        ident = bind_source(warehouse, source)
        known = warehouse.read("tickers", columns=["ticker"]).get_column("ticker").unique()
        result = sync_window(_build(source), table, start, end, known)
        _record_rejects(warehouse, name, result.rejects, start, end)
        md = frame_metadata(result.clean, table.partition_column)
        md["source"] = MetadataValue.text(ident)
        md["window"] = MetadataValue.text(f"{start} .. {end - dt.timedelta(days=1)}")
        md["input_rows"] = MetadataValue.int(result.input_rows)
        md["rejected_rows"] = MetadataValue.int(result.rejected)
        md["rejects_by_reason"] = MetadataValue.json(result.counts)
        yield weekly_output(context, result.clean, md)
        passed = result.reject_rate <= DEFAULT_REJECT_THRESHOLD
        yield AssetCheckResult(
            check_name="valid_rows",
            passed=passed,
            severity=AssetCheckSeverity.ERROR if not passed else AssetCheckSeverity.WARN,
            metadata={
                "rejected_rows": result.rejected,
                "reject_rate": result.reject_rate,
                "threshold": DEFAULT_REJECT_THRESHOLD,
                "rejects_by_reason": MetadataValue.json(result.counts),
                "sample": MetadataValue.md(markdown_table(result.rejects)),
            },
        )
        yield from _stored_checks(warehouse, table, start, end)

    return _sync


def _record_rejects(warehouse: DuckDBWarehouse, table: str, rejects: pl.DataFrame, start: dt.date, end: dt.date) -> None:
    """Keep rejected rows inspectable in `sync_rejects`, replacing this table's window."""
    rows = rejects.select(
        pl.lit(table).alias("table_name"),
        pl.lit(start).alias("window_start"),
        pl.lit(end).alias("window_end"),
        "reason",
        "ticker",
        "date",
    )
    with warehouse.connect() as con:
        store.replace_window(con, "sync_rejects", rows, "window_start", start, end, scope={"table_name": table})


SYNC_ASSETS: list[AssetsDefinition] = [tickers, *(_sync_asset(t) for t in SYNC_TABLES.values())]
