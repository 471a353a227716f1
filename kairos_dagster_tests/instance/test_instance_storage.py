"""The instance storage of dagster.yaml: Dagster's SQLite layout with pooled event-log connections."""

import shutil

import pytest
import sqlalchemy as db
from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSpec,
    AssetKey,
    DagsterInstance,
    Definitions,
    MaterializeResult,
    asset,
)
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable

from kairos_dagster.defs.partitions import SINGLE_RUN, settings_partitions
from kairos_dagster.instance.runner import run_selection
from kairos_dagster.instance.storage import (
    MAX_OPEN_RUN_SHARDS,
    KairosPostgresEventLogStorage,
    KairosSqliteStorage,
    PooledSqliteEventLogStorage,
)
from kairos_dagster.settings import INSTANCE_YAML, PROJECT_ROOT, load_settings
from kairos_dagster_tests.fixtures.postgres import postgres  # noqa: F401 (fixture)

WEEKLY = settings_partitions(load_settings())


@asset(partitions_def=WEEKLY, backfill_policy=SINGLE_RUN)
def weekly_probe(context) -> None:
    context.add_output_metadata({"weeks": len(context.partition_keys)})


def _home(tmp_path, monkeypatch):
    shutil.copy(INSTANCE_YAML, tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    return tmp_path


def test_dagster_yaml_selects_the_pooled_sqlite_storage(tmp_path, monkeypatch):
    _home(tmp_path, monkeypatch)
    with DagsterInstance.get() as instance:
        assert isinstance(instance.get_ref().storage, KairosSqliteStorage)
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)


def test_range_run_events_are_all_stored_and_visible_to_a_second_instance(tmp_path, monkeypatch):
    _home(tmp_path, monkeypatch)
    keys = WEEKLY.get_partition_keys()[-30:]
    defs = Definitions(assets=[weekly_probe])
    batches = []
    original = PooledSqliteEventLogStorage.store_event_batch

    def spy(self, events):
        batches.append([(e.dagster_event.event_type_value, e.dagster_event.partition) for e in events])
        original(self, events)

    monkeypatch.setattr(PooledSqliteEventLogStorage, "store_event_batch", spy)
    with DagsterInstance.get() as writer:
        result = run_selection(defs, ["weekly_probe"], partition_range=(keys[0], keys[-1]), instance=writer)
        assert result.success
        run_id = result.run_id
    # The 30 weekly materializations were written as one batch (two transactions, not sixty).
    assert [(kind, key) for kind, key in batches[-1]] == [("ASSET_MATERIALIZATION", k) for k in keys]
    # A fresh instance on the same files (the webserver's view) sees every week and the run's events.
    with DagsterInstance.get() as reader:
        assert reader.get_materialized_partitions(AssetKey("weekly_probe")) == set(keys)
        mats = [e for e in reader.all_logs(run_id)
                if e.dagster_event and e.dagster_event.event_type_value == "ASSET_MATERIALIZATION"]
        assert len(mats) == 30
        assert reader.get_run_by_id(run_id).is_success
        latest = reader.get_latest_materialization_event(AssetKey("weekly_probe"))
        assert latest.run_id == run_id and latest.dagster_event.partition == keys[-1]
        assert reader.get_latest_materialization_code_versions([AssetKey("weekly_probe")])
        # A second run updates the asset's summary row (latest materialization, last run).
        again = run_selection(defs, ["weekly_probe"], partition_key=keys[3], instance=reader)
        latest = reader.get_latest_materialization_event(AssetKey("weekly_probe"))
        assert latest.run_id == again.run_id and latest.dagster_event.partition == keys[3]
        assert reader.get_asset_keys() == [AssetKey("weekly_probe")]
        assert len(reader.fetch_materializations(AssetKey("weekly_probe"), limit=100).records) == 31
    # Stock Dagster reads the same files: the layout is Dagster's own.
    (tmp_path / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {tmp_path}\n")
    with DagsterInstance.get() as stock:
        assert type(stock.event_log_storage).__name__ == "SqliteEventLogStorage"
        assert stock.get_materialized_partitions(AssetKey("weekly_probe")) == set(keys)


def test_open_engines_are_bounded_and_released(tmp_path):
    storage = PooledSqliteEventLogStorage(str(tmp_path / "runs"))
    for i in range(MAX_OPEN_RUN_SHARDS + 5):
        with storage.run_connection(f"run{i}") as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM event_logs").scalar() == 0
    with storage.index_connection() as conn:
        conn.exec_driver_sql("SELECT 1")
    assert len(storage._engines) == MAX_OPEN_RUN_SHARDS + 1
    assert "index" in storage._engines and "run0" not in storage._engines  # least recently used go first
    storage.dispose()
    assert storage._engines == {}
    with storage.run_connection("run0") as conn:  # usable again after dispose, like Dagster's class
        assert conn.exec_driver_sql("SELECT count(*) FROM event_logs").scalar() == 0
    storage.dispose()


FAILING_WEEK: list[str] = []


@asset(partitions_def=WEEKLY, backfill_policy=SINGLE_RUN)
def weekly_fragile(context) -> None:
    if FAILING_WEEK and FAILING_WEEK[0] in context.partition_keys:
        raise ValueError(f"no data for {FAILING_WEEK[0]}")


def _failed_and_materialized(instance) -> tuple[set[str], set[str]]:
    from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

    value = get_and_update_asset_status_cache_value(instance, AssetKey("weekly_fragile"), WEEKLY)
    return (set(value.deserialize_failed_partition_subsets(WEEKLY).get_partition_keys()),
            set(value.deserialize_materialized_partition_subsets(WEEKLY).get_partition_keys()))


@pytest.fixture(params=["sqlite", "postgres"])
def home(request, tmp_path, monkeypatch):
    """DAGSTER_HOME with the single-machine instance (SQLite), or the shared one on a real PostgreSQL."""
    if request.param == "sqlite":
        return _home(tmp_path, monkeypatch)
    server = request.getfixturevalue("postgres")
    db = server.create_database(f"dagster_{tmp_path.name[-16:].replace('-', '_').lower()}")
    for k, v in server.dagster_env(db).items():
        monkeypatch.setenv(k, v)
    # the shared instance admits several writers: Kairos refuses it unless the warehouse is a DuckLake
    monkeypatch.setenv("KAIROS_WAREHOUSE", f"ducklake:postgres:{server.libpq(db)}")
    monkeypatch.setenv("KAIROS_LAKE_DATA_PATH", str(tmp_path / "lake"))
    shutil.copy(PROJECT_ROOT / "deploy" / "postgres" / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with DagsterInstance.get() as instance:
        assert isinstance(instance.event_log_storage, KairosPostgresEventLogStorage)
    return tmp_path


def test_a_failed_range_run_marks_each_of_its_weeks_failed_until_a_later_run_materializes_it(home, monkeypatch):
    monkeypatch.setenv("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "true")  # one planned event per range
    keys = WEEKLY.get_partition_keys()[-5:]
    defs = Definitions(assets=[weekly_fragile])
    FAILING_WEEK[:] = [keys[3]]
    try:
        with DagsterInstance.get() as instance:
            failed = run_selection(defs, ["weekly_fragile"], partition_range=(keys[0], keys[-1]),
                                   instance=instance, raise_on_error=False)
            assert not failed.success
            planned = [e for e in instance.all_logs(failed.run_id)
                       if e.dagster_event and e.dagster_event.event_type_value == "ASSET_MATERIALIZATION_PLANNED"]
            assert len(planned) == 1  # the range is one event, yet every week of it is failed
            assert _failed_and_materialized(instance) == (set(keys), set())
            # The last week alone succeeds: it is materialized, the other four stay failed.
            assert run_selection(defs, ["weekly_fragile"], partition_key=keys[4], instance=instance).success
            assert _failed_and_materialized(instance) == (set(keys[:4]), {keys[4]})
            # A later range run over the first three succeeds: only the week that still fails is failed.
            assert run_selection(defs, ["weekly_fragile"], partition_range=(keys[0], keys[2]), instance=instance).success
            assert _failed_and_materialized(instance) == ({keys[3]}, set(keys) - {keys[3]})
        # A fresh instance on the same files (the webserver's) computes the same from scratch.
        with DagsterInstance.get() as reader:
            from dagster._core.storage.partition_status_cache import (
                build_failed_and_in_progress_partition_subset,
            )

            failed_subset, in_progress, _ = build_failed_and_in_progress_partition_subset(
                reader, AssetKey("weekly_fragile"), WEEKLY, last_planned_materialization_storage_id=10**9)
            assert set(failed_subset.get_partition_keys()) == {keys[3]}
            assert not in_progress.get_partition_keys()
    finally:
        FAILING_WEEK.clear()


@pytest.mark.parametrize("refusing_file", ["run", "index"])
def test_a_batch_that_one_file_refuses_is_stored_once_by_the_fallback(tmp_path, monkeypatch, refusing_file):
    """A batch goes to two SQLite files in two transactions. When either refuses it, nothing of it stays in
    the other, and Dagster's fallback stores the events one by one: each week once in each file, none lost."""
    from contextlib import contextmanager

    _home(tmp_path, monkeypatch)
    keys = WEEKLY.get_partition_keys()[-5:]
    original_run, original_tags = (PooledSqliteEventLogStorage.run_connection,
                                   PooledSqliteEventLogStorage._store_asset_event_tags)
    refused = []

    class _Refusing:
        def __init__(self, conn):
            self.conn = conn

        def execute(self, statement, params=None):
            if isinstance(params, list):  # the batch's one multi-row insert
                refused.append(len(params))
                raise RuntimeError("disk full")
            return self.conn.execute(statement) if params is None else self.conn.execute(statement, params)

    @contextmanager
    def refusing_run(self, run_id=None):
        with original_run(self, run_id) as conn:
            yield _Refusing(conn)

    def refusing_tags(self, conn, events, ids):
        if len(events) > 1:  # the batch's tags, after its index rows were inserted
            refused.append(len(events))
            raise RuntimeError("disk full")
        return original_tags(self, conn, events, ids)

    if refusing_file == "run":
        monkeypatch.setattr(PooledSqliteEventLogStorage, "run_connection", refusing_run)
    else:
        monkeypatch.setattr(PooledSqliteEventLogStorage, "_store_asset_event_tags", refusing_tags)
    defs = Definitions(assets=[weekly_probe])
    with DagsterInstance.get() as instance:
        result = run_selection(defs, ["weekly_probe"], partition_range=(keys[0], keys[-1]), instance=instance)
        assert result.success and refused == [5]
        monkeypatch.setattr(PooledSqliteEventLogStorage, "run_connection", original_run)
        in_run = [e.dagster_event.partition for e in instance.all_logs(result.run_id)
                  if e.dagster_event and e.dagster_event.event_type_value == "ASSET_MATERIALIZATION"]
        assert in_run == keys
        indexed = instance.fetch_materializations(AssetKey("weekly_probe"), limit=100).records
        assert sorted(r.partition_key for r in indexed) == keys


@asset(partitions_def=WEEKLY, backfill_policy=SINGLE_RUN,
       check_specs=[AssetCheckSpec("weekly_ok", asset="weekly_checked", partitions_def=WEEKLY)])
def weekly_checked(context):
    from kairos_dagster.defs.checks import week_check_events

    yield MaterializeResult()
    yield from week_check_events(context, "weekly_checked", "weekly_ok",
                                 [(week, AssetCheckResult(passed=True)) for week in context.partition_keys])


def test_a_range_runs_planned_check_rows_are_dagsters_own_and_each_week_gets_its_result(home, tmp_path, monkeypatch):
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

    monkeypatch.setenv("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "true")
    keys = WEEKLY.get_partition_keys()[-5:]
    check = AssetCheckKey(AssetKey("weekly_checked"), "weekly_ok")
    with DagsterInstance.get() as instance:
        result = run_selection(Definitions(assets=[weekly_checked]), ["weekly_checked"],
                               partition_range=(keys[0], keys[-1]), instance=instance)
        assert result.success
        (planned,) = [e for e in instance.all_logs(result.run_id)
                      if e.dagster_event and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION_PLANNED"]
        records = instance.event_log_storage.get_asset_check_execution_history(check, limit=20)
        assert sorted(r.partition for r in records) == keys  # one row per week, each with its result
        assert {r.status.value for r in records} == {"SUCCEEDED"}
    # The rows Kairos writes for a planned event are the rows Dagster's own storage writes for it.
    ours, theirs = PooledSqliteEventLogStorage(str(tmp_path / "ours")), SqliteEventLogStorage(str(tmp_path / "theirs"))

    def rows(storage):
        storage._store_asset_check_evaluation_planned(planned, 42)
        with storage.index_connection() as conn:
            return conn.execute(db.select(*[c for c in AssetCheckExecutionsTable.c if c.name != "id"])
                                .order_by(AssetCheckExecutionsTable.c.partition)).fetchall()

    mine = rows(ours)
    assert len(mine) == 5 and mine == rows(theirs)
