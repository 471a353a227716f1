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
inserts first and catches the duplicate-key error on every event after the asset's first). With
``DAGSTER_EVENT_BATCH_SIZE`` above 0 (set here unless the operator chose), Dagster hands a step's
per-week materializations to ``store_event_batch`` at once, and they are written in one transaction per
shard instead of two per event. Everything else, the file layout included, is Dagster's: an existing
``.dagster_home`` keeps working, and the webserver and daemon read the same files. Statements stay serialized by the storage's own lock, as
in Dagster's class, so one pooled connection per shard suffices; a forked child builds its own.

A run over a range of weeks records one planned event per asset for the whole range (Dagster's
``DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS``), which Dagster's partition status does not read:
such a run's weeks would show as missing when it failed and not as in progress while it runs.
``get_latest_asset_partition_materialization_attempts_without_materializations`` expands those events
into their weeks, so the partitions tab and the catalog say Failed (or in progress) per week.

``KairosSqliteStorage`` is ``DagsterSqliteStorage`` (``storage: sqlite`` in dagster.yaml) with
that event log; dagster.yaml selects it with ``storage: custom``. ``KairosPostgresStorage`` is
``DagsterPostgresStorage`` (``storage: postgres``) with the same partition status, for a shared
deployment (deploy/postgres/dagster.yaml); PostgreSQL needs none of the SQLite pooling.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as db
import sqlalchemy.exc as db_exc
from dagster import AssetKey, DagsterInvariantViolationError
from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import (
    AssetCheckExecutionsTable,
    AssetEventTagsTable,
    AssetKeyTable,
    SqlEventLogStorageTable,
)
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, _event_logs_directory
from dagster._serdes import ConfigurableClassData, deserialize_value, serialize_value
from dagster_postgres import PostgresEventLogStorage
from dagster_postgres.storage import DagsterPostgresStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool, QueuePool

# Run shards kept open besides the index: a run writes to one; the webserver reads a few at a time.
MAX_OPEN_RUN_SHARDS = 8
_BATCHED_KINDS = {DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_OBSERVATION}
# Dagster hands a step's per-week materializations to `store_event_batch` only when this is above 0 (it
# reads the variable on every event). A batch still ends with its step's last event for the output.
EVENT_BATCH_SIZE = "1000"
os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", EVENT_BATCH_SIZE)


class RangeRunPartitionStatus:
    """Partition status that reads range-run planned events (module docstring); for any SQL event log.

    Also the planned rows of a partitioned check in a range run: one row per week, as Dagster writes them,
    but the event serialized once and the rows inserted as one executemany. Dagster serializes the event
    (with its 523-week subset) again for every week and compiles a 523-row VALUES statement: a 10-year
    rebuild's 100-odd checks took 8 s before its first step started."""

    def _store_asset_check_evaluation_planned(self, event: EventLogEntry, event_id: int | None) -> None:
        planned = event.dagster_event.event_specific_data
        weeks = planned.partitions_subset.get_partition_keys() if planned.partitions_subset else [None]
        common = {"asset_key": planned.asset_key.to_string(), "check_name": planned.check_name,
                  "run_id": event.run_id, "execution_status": AssetCheckExecutionRecordStatus.PLANNED.value,
                  "evaluation_event": serialize_value(event),
                  "evaluation_event_timestamp": self._event_insert_timestamp(event),
                  "evaluation_event_storage_id": event_id}
        with self.index_connection() as conn:
            conn.execute(AssetCheckExecutionsTable.insert(), [{**common, "partition": week} for week in weeks])

    def get_latest_asset_partition_materialization_attempts_without_materializations(
        self, asset_key: AssetKey, after_storage_id: int | None = None
    ) -> dict[str, tuple[str, int]]:
        """Dagster's answer (per-week planned events with no later materialization), plus the weeks of
        range-run planned events (one event naming a subset) that no later event of that week answers."""
        found = dict(super().get_latest_asset_partition_materialization_attempts_without_materializations(
            asset_key, after_storage_id))
        table = SqlEventLogStorageTable.c
        planned = db.select(table.id, table.run_id, table.event).where(
            table.asset_key == asset_key.to_string(),
            table.dagster_event_type == DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value,
            table.partition.is_(None),
        ).order_by(table.id)
        if after_storage_id is not None:
            planned = planned.where(table.id > after_storage_id)
        with self.index_connection() as conn:
            ranges = conn.execute(planned).fetchall()
        ranges = [(row.id, row.run_id, _planned_subset(row.event)) for row in ranges]
        ranges = [r for r in ranges if r[2] is not None]
        if not ranges:
            return found
        # the newest per-week materialization or planned event of each week after the oldest range plan
        latest = db.select(table.partition, db.func.max(table.id).label("id")).where(
            table.asset_key == asset_key.to_string(),
            table.partition.is_not(None),
            table.dagster_event_type.in_([DagsterEventType.ASSET_MATERIALIZATION.value,
                                          DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value]),
            table.id > ranges[0][0],
        ).group_by(table.partition)
        with self.index_connection() as conn:
            answered = {row.partition: row.id for row in conn.execute(latest)}
        for event_id, run_id, keys in ranges:  # oldest first: a later range plan supersedes an earlier one
            for key in keys:
                if answered.get(key, 0) > event_id:
                    continue
                if key not in found or found[key][1] < event_id:
                    found[key] = (run_id, event_id)
        return found


class PooledSqliteEventLogStorage(RangeRunPartitionStatus, SqliteEventLogStorage):
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

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """A step's materialization (or observation) events for the weeks of a range run, written in one
        transaction per shard instead of two per event (Dagster's SQLite storage writes them one by one).
        Each asset's summary row is updated once, with its last event, as Dagster's PostgreSQL storage does."""
        kinds = {e.dagster_event.event_type if e.dagster_event else None for e in events}
        if (len(events) < 2 or not kinds <= _BATCHED_KINDS or len({e.run_id for e in events}) != 1
                or any(not e.dagster_event.asset_key for e in events)):
            super().store_event_batch(events)  # Dagster's: one store_event each
            return
        rows = [self._event_to_row(e) for e in events]
        with self.index_transaction() as conn:
            ids = [conn.execute(SqlEventLogStorageTable.insert().values(**row)).inserted_primary_key[0] for row in rows]
            if any(i is None for i in ids):
                raise DagsterInvariantViolationError("Cannot store asset event tags for null event id.")
            self._store_asset_event_tags(conn, events, ids)
            last = {e.dagster_event.asset_key: (e, i) for e, i in zip(events, ids, strict=True)}
            for event, event_id in last.values():
                self._store_asset_event(conn, event, event_id)
        try:
            with self.run_connection(events[0].run_id) as conn:
                conn.execute(SqlEventLogStorageTable.insert(), rows)
        except Exception:
            # Two files, two transactions: take the index's copies back out, so that Dagster's fallback (it
            # stores a failed batch again one event at a time) leaves each event once in each file.
            with self.index_transaction() as conn:
                conn.execute(AssetEventTagsTable.delete().where(AssetEventTagsTable.c.event_id.in_(ids)))
                conn.execute(SqlEventLogStorageTable.delete().where(SqlEventLogStorageTable.c.id.in_(ids)))
            raise

    def dispose(self) -> None:
        super().dispose()
        with self._db_lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()


def _planned_subset(serialized: str) -> list[str] | None:
    """The weeks a range-run planned event names, or None for an event without a subset."""
    entry = deserialize_value(serialized, EventLogEntry)
    data = entry.dagster_event.event_specific_data if entry.dagster_event else None
    subset = getattr(data, "partitions_subset", None)
    return list(subset.get_partition_keys()) if subset is not None else None


class KairosSqliteStorage(DagsterSqliteStorage):
    """Dagster's SQLite storage (same files under ``base_dir``) with the pooled event log."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        super().__init__(base_dir, inst_data=inst_data)
        self._event_log_storage.dispose()
        self._event_log_storage = PooledSqliteEventLogStorage(_event_logs_directory(base_dir))

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value) -> KairosSqliteStorage:  # type: ignore[override]
        return cls.from_local(inst_data=inst_data, **config_value)


class KairosPostgresEventLogStorage(RangeRunPartitionStatus, PostgresEventLogStorage):
    """Dagster's PostgreSQL event log with the range-run partition status (deploy/postgres/dagster.yaml)."""

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value) -> KairosPostgresEventLogStorage:  # type: ignore[override]
        return cls(inst_data=inst_data, postgres_url=pg_url_from_config(config_value),
                   should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                   token_provider=get_token_provider_from_config(config_value))


class KairosPostgresStorage(DagsterPostgresStorage):
    """``storage: postgres`` (run, event-log and schedule storage in one database) with that event log."""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True,
                 inst_data: ConfigurableClassData | None = None, token_provider=None):
        super().__init__(postgres_url, should_autocreate_tables, inst_data=inst_data, token_provider=token_provider)
        self._event_log_storage.dispose()
        self._event_log_storage = KairosPostgresEventLogStorage(postgres_url, should_autocreate_tables,
                                                                token_provider=token_provider)

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value) -> KairosPostgresStorage:  # type: ignore[override]
        return cls(inst_data=inst_data, postgres_url=pg_url_from_config(config_value),
                   should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                   token_provider=get_token_provider_from_config(config_value))

    @property
    def event_storage_data(self) -> ConfigurableClassData | None:
        return (ConfigurableClassData(__name__, "KairosPostgresEventLogStorage", self.inst_data.config_yaml)
                if self.inst_data else None)
