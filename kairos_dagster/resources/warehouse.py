"""The warehouse resource and the DuckDB polars IO manager with atomic partition writes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
import polars as pl
from dagster import ConfigurableIOManager, ConfigurableResource, InputContext, OutputContext

from kairos_dagster.warehouse import store


class DuckDBWarehouse(ConfigurableResource):
    """The one DuckDB file every asset reads and writes (KAIROS_DUCKDB_PATH)."""

    path: str

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        with store.connect(self.path, read_only=read_only) as con:
            yield con

    def read(
        self,
        table: str,
        start: dt.date | None = None,
        end: dt.date | None = None,
        *,
        column: str = "date",
        columns: list[str] | None = None,
        where: str | None = None,
    ) -> pl.DataFrame:
        """Rows of `table` with `column` in [start, end)."""
        with self.connect() as con:
            return store.read_window(con, table, column, start, end, columns=columns, where=where)

    def query(self, sql: str, params: list | None = None) -> pl.DataFrame:
        with self.connect() as con:
            return con.execute(sql, params or []).pl()


def _table(context: InputContext | OutputContext) -> str:
    return context.asset_key.path[-1]


class KairosDuckDBIOManager(ConfigurableIOManager):
    """Stores polars frames as DuckDB tables named after the asset.

    Partitioned outputs replace exactly their window in one transaction (delete + insert); the
    partition column is the asset's `partition_expr` metadata, `date` by default. Inputs load the
    upstream window that the partition mapping asks for, and can narrow columns with AssetIn
    metadata `{"columns": [...]}`.
    """

    path: str

    def handle_output(self, context: OutputContext, obj: pl.DataFrame) -> None:
        if obj is None:
            return
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(f"{_table(context)}: expected a polars DataFrame, got {type(obj).__name__}")
        table = _table(context)
        with store.connect(self.path) as con:
            if context.has_asset_partitions:
                column = (context.definition_metadata or {}).get("partition_expr", "date")
                start, end = _window_dates(context.asset_partitions_time_window)
                rows = store.replace_window(con, table, obj, column, start, end)
                context.log.debug(f"{table}: replaced {start}..{end} with {rows} rows")
            else:
                rows = store.replace_table(con, table, obj)

    def load_input(self, context: InputContext) -> pl.DataFrame:
        table = _table(context)
        upstream_meta = (context.upstream_output.definition_metadata if context.upstream_output else None) or {}
        columns = (context.definition_metadata or {}).get("columns")
        column = upstream_meta.get("partition_expr", "date")
        start = end = None
        if context.has_asset_partitions:
            start, end = _window_dates(context.asset_partitions_time_window)
        with store.connect(self.path) as con:
            return store.read_window(con, table, column if start else None, start, end, columns=columns)


def _window_dates(window) -> tuple[dt.date, dt.date]:
    """A partition time window as [start, end) dates."""
    return window.start.date(), window.end.date()
