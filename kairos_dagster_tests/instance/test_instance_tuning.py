import sqlalchemy

from kairos_dagster.instance import tuning as instance_tuning
from kairos_dagster.settings import INSTANCE_YAML


def _sync_mode(path) -> int:
    engine = sqlalchemy.create_engine(f"sqlite:///{path}", poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as con:
        return con.exec_driver_sql("PRAGMA synchronous").scalar()


def test_only_the_instance_sqlite_files_are_tuned(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("KAIROS_DAGSTER_SQLITE_SYNCHRONOUS", "OFF")
    instance_tuning.install_sqlite_tuning()
    assert _sync_mode(home / "runs.db") == 0  # OFF inside DAGSTER_HOME
    assert _sync_mode(tmp_path / "optuna.db") == 2  # FULL (SQLite's default) anywhere else


def test_bad_mode_names_the_variable(monkeypatch):
    monkeypatch.setenv("KAIROS_DAGSTER_SQLITE_SYNCHRONOUS", "fast")
    try:
        instance_tuning.sqlite_synchronous_mode()
    except ValueError as exc:
        assert "KAIROS_DAGSTER_SQLITE_SYNCHRONOUS" in str(exc)
    else:
        raise AssertionError("a bad mode was accepted")


def test_dagster_yaml_limits_the_duckdb_pool_and_serializes_weekly_runs(tmp_path, monkeypatch):
    import shutil

    from dagster import DagsterInstance

    from kairos_dagster.definitions import build_definitions

    defs = build_definitions()

    shutil.copy(INSTANCE_YAML, tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with DagsterInstance.get() as instance:
        config = instance.get_concurrency_config()
        assert instance.event_log_storage.supports_global_concurrency_limits
        assert config.pool_config.default_pool_limit == 1
        assert {"key": "kairos/serial", "limit": 1} in config.run_queue_config.tag_concurrency_limits
        assert (tmp_path / "history" / "runs.db").exists()  # run storage inside DAGSTER_HOME
    # every asset that touches the warehouse is in the duckdb pool (side tables run in their writer's step)
    graph = defs.resolve_asset_graph()
    pools = {k.to_user_string(): graph.get(k).assets_def.node_def.pool for k in graph.get_all_asset_keys()
             if graph.get(k).is_executable}
    assert set(pools.values()) == {"duckdb"}, pools


def test_single_run_backfill_logs_one_planned_event_per_asset_and_every_week(tmp_path, monkeypatch):
    import shutil

    from dagster import AssetKey, DagsterInstance

    from kairos_dagster.definitions import build_definitions
    from kairos_dagster.instance.runner import run_selection
    from kairos_dagster.settings import load_settings

    shutil.copy(INSTANCE_YAML, tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    defs = build_definitions(load_settings({"KAIROS_DUCKDB_PATH": str(tmp_path / "k.duckdb"),
                                            "KAIROS_SYNTHETIC_TICKERS": "20"}))
    with DagsterInstance.get() as instance:
        result = run_selection(defs, ["tickers", "sep_base"], partition_range=("2024-01-01", "2024-03-25"),
                               instance=instance)
        assert result.success
        planned = [e for e in instance.all_logs(result.run_id)
                   if e.dagster_event and e.dagster_event.event_type_value == "ASSET_MATERIALIZATION_PLANNED"]
        assert len(planned) == 2  # tickers and sep_base, not one per week
        assert len(instance.get_materialized_partitions(AssetKey("sep_base"))) == 13  # every week recorded
