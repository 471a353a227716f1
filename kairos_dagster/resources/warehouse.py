"""The warehouse resource and the DuckDB polars IO manager with atomic partition writes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
import polars as pl
from dagster import (
    ConfigurableIOManager,
    ConfigurableResource,
    DagsterInstance,
    InitResourceContext,
    InputContext,
    OutputContext,
)
from pydantic import Field

from kairos_dagster.warehouse import store

_PATH = "the warehouse: a DuckDB file, or ducklake:postgres:<libpq params> (KAIROS_WAREHOUSE)"
_LAKE_DATA = "a DuckLake's data files: a folder or an S3 URL (KAIROS_LAKE_DATA_PATH); empty for a DuckDB file"


POOL = "duckdb"  # the concurrency pool every warehouse asset declares


class PoolLimitError(RuntimeError):
    """The `duckdb` pool allows more than one writer while the warehouse is a DuckDB file."""


def pool_limit(instance: DagsterInstance) -> int:
    """The `duckdb` pool's limit on this instance (the instance's default_limit, or one set by command)."""
    info = instance.event_log_storage.get_concurrency_info(POOL)
    return info.limit if info.limit is not None else 1


def refuse_parallel_writers_on_a_file(instance: DagsterInstance, file_backend: bool) -> None:
    """A DuckDB file takes one writing process: a pool limit above 1 there would have runs fail on its lock
    at random. DuckLake takes several (different weeks and tables at once; conflicts are retried)."""
    limit = pool_limit(instance)
    if file_backend and limit > 1:
        raise PoolLimitError(
            f"the `{POOL}` pool allows {limit} runs at once, but the warehouse is a DuckDB file (one writer): set "
            f"it to 1 (`dagster instance concurrency set {POOL} 1`, or pools.default_limit in dagster.yaml), or "
            "put the warehouse on DuckLake (KAIROS_WAREHOUSE=ducklake:postgres:...)")


class _WarehouseTarget:
    """`path` and `lake_data_path` (fields of the resources below) as the store's target."""

    @property
    def target(self) -> store.Target:
        return store.target(self.path, self.lake_data_path or None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        # refused at the start of every run, whoever launched it: two writers on one DuckDB file
        if context.instance is not None:
            refuse_parallel_writers_on_a_file(context.instance, not store.is_lake(self.path))


class DuckDBWarehouse(_WarehouseTarget, ConfigurableResource):
    """The warehouse every asset reads and writes: the DuckDB file (KAIROS_DUCKDB_PATH) or a DuckLake."""

    path: str = Field(description=_PATH)
    lake_data_path: str = Field(default="", description=_LAKE_DATA)

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        with store.connect(self.target, read_only=read_only) as con:
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


class KairosDuckDBIOManager(_WarehouseTarget, ConfigurableIOManager):
    """Stores polars frames as DuckDB tables named after the asset.

    Partitioned outputs replace exactly their window in one transaction (delete + insert); the
    partition column is the asset's `partition_expr` metadata, `date` by default. Inputs load the
    upstream window that the partition mapping asks for, and can narrow columns with AssetIn
    metadata `{"columns": [...]}`.
    """

    path: str = Field(description=_PATH)
    lake_data_path: str = Field(default="", description=_LAKE_DATA)

    @contextmanager
    def yield_for_execution(self, context: InitResourceContext) -> Iterator:
        # One checkpoint per run (per process), not one per step's connection: see store.held_open. Held by
        # the IO manager, which every run of warehouse assets opens; not by the warehouse resource, which
        # sensors also take and which must stay a plain (non-generator) resource for them.
        self.setup_for_execution(context)
        with store.held_open(self.target):
            yield self.create_resource(context)

    def handle_output(self, context: OutputContext, obj: pl.DataFrame) -> None:
        if obj is None:
            return
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(f"{_table(context)}: expected a polars DataFrame, got {type(obj).__name__}")
        table = _table(context)
        with store.connect(self.target) as con:
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
        with store.connect(self.target) as con:
            return store.cached_read(self.target, con, table, column if start else None, start, end, columns=columns)


def _window_dates(window) -> tuple[dt.date, dt.date]:
    """A partition time window as [start, end) dates."""
    return window.start.date(), window.end.date()
