"""Dagster instance storage for Kairos: SQLite run history with pooled event-log connections.

Dagster's ``SqliteEventLogStorage`` builds a new SQLAlchemy engine, opens a new SQLite connection
and throws both away for every statement batch: every event of a run costs two engines (the run's
shard and the cross-run index), their compiled-statement caches start empty, and each asset event
adds one more engine to ask whether the tag table exists. A 10-year single-run backfill of the
feature graph writes one materialization event per asset and week (14,000 at 5,000 tickers), and
that bookkeeping took longer than the asset work itself (benchmarks/RESULTS.md).

``PooledSqliteEventLogStorage`` keeps one engine per shard, holding one pooled connection, for the
index and the most recently used run shards; ``has_table`` and the asset-key column probe remember
what they found; an asset's summary row is updated first and inserted only when missing (Dagster
inserts first and catches the duplicate-key error on every event after the asset's first). Everything
else, the file layout included, is Dagster's: an existing ``.dagster_home`` keeps working, and the
webserver and daemon read the same files. Statements stay serialized by the storage's own lock, as
in Dagster's class, so one pooled connection per shard suffices; a forked child builds its own.

``KairosSqliteStorage`` is ``DagsterSqliteStorage`` (``storage: sqlite`` in dagster.yaml) with
that event log; dagster.yaml selects it with ``storage: custom``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy.exc as db_exc
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.schema import AssetKeyTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, _event_logs_directory
from dagster._serdes import ConfigurableClassData
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool, QueuePool

# Run shards kept open besides the index: a run writes to one; the webserver reads a few at a time.
MAX_OPEN_RUN_SHARDS = 8


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` with one long-lived engine (one pooled connection) per shard."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._engines_pid = os.getpid()
        self._tables_found: set[str] = set()
        self._asset_key_columns_found: set[str] = set()
        super().__init__(base_dir, inst_data)

    def _engine(self, shard: str) -> Engine:
        """The shard's engine (caller holds ``_db_lock``); created, and the file initialised, once."""
        if self._engines_pid != os.getpid():  # never share SQLite connections with a forked parent
            self._engines = OrderedDict()
            self._engines_pid = os.getpid()
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        url = self.conn_string_for_shard(shard)
        if shard not in self._initialized_dbs:
            # alembic's stamp needs two connections at once: initialise through a throw-away engine
            init = create_engine(url, poolclass=NullPool, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
            try:
                self._initdb(init)
            finally:
                init.dispose()
            self._initialized_dbs.add(shard)
        engine = create_engine(
            url, poolclass=QueuePool, pool_size=1, max_overflow=0, pool_timeout=SQLITE_BUSY_TIMEOUT_SECONDS,
            # the connection moves between the threads that take _db_lock (webserver, event watcher)
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
        )
        self._engines[shard] = engine
        while len(self._engines) > MAX_OPEN_RUN_SHARDS + 1:
            _, old = self._engines.popitem(last=False)
            old.dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:  # type: ignore[override]
        with self._db_lock, self._engine(shard).connect() as conn, conn.begin():
            yield conn

    def has_table(self, table_name: str) -> bool:
        # Tables are created by migrations, never dropped while a process runs: a hit can be cached.
        if table_name in self._tables_found:
            return True
        found = super().has_table(table_name)
        if found:
            self._tables_found.add(table_name)
        return found

    def _has_asset_key_col_on_connection(self, conn: Connection, column_name: str) -> bool:
        # Dagster asks on every asset event (a PRAGMA table_info); columns only ever get added.
        if column_name in self._asset_key_columns_found:
            return True
        found = super()._has_asset_key_col_on_connection(conn, column_name)
        if found:
            self._asset_key_columns_found.add(column_name)
        return found

    def _store_asset_event(self, conn: Connection, event: EventLogEntry, event_id: int) -> None:
        if not (event.dagster_event and event.dagster_event.asset_key):
            return
        values = self._get_asset_entry_values(event, event_id, self._has_asset_key_index_cols_on_connection(conn))
        if not values:
            return
        key = event.dagster_event.asset_key.to_string()
        updated = conn.execute(AssetKeyTable.update().values(**values).where(AssetKeyTable.c.asset_key == key))
        if updated.rowcount:
            return
        try:
            conn.execute(AssetKeyTable.insert().values(asset_key=key, **values))
        except db_exc.IntegrityError:  # a concurrent writer inserted the key first (as Dagster handles it)
            conn.execute(AssetKeyTable.update().values(**values).where(AssetKeyTable.c.asset_key == key))

    def dispose(self) -> None:
        super().dispose()
        with self._db_lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()


class KairosSqliteStorage(DagsterSqliteStorage):
    """Dagster's SQLite storage (same files under ``base_dir``) with the pooled event log."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        super().__init__(base_dir, inst_data=inst_data)
        self._event_log_storage.dispose()
        self._event_log_storage = PooledSqliteEventLogStorage(_event_logs_directory(base_dir))

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value) -> KairosSqliteStorage:  # type: ignore[override]
        return cls.from_local(inst_data=inst_data, **config_value)
