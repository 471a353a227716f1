import sqlalchemy

from kairos_dagster import instance_tuning


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
