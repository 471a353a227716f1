"""The warehouse on DuckLake (catalog in a real PostgreSQL, Parquet files in a folder), across processes:
a window replace is atomic and invisible until it commits, a SIGKILLed writer loses nothing, and two
processes writing different weeks of one table at once both land (a conflicting commit is retried)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from kairos_dagster.settings import SettingsError, load_settings
from kairos_dagster.warehouse import store
from kairos_dagster_tests.fixtures.postgres import postgres  # noqa: F401 (fixture)

MONDAY = dt.date(2024, 1, 1)
TICKERS = [f"T{i:03d}" for i in range(300)]


def week_frame(week: int, value: float) -> pl.DataFrame:
    day = MONDAY + dt.timedelta(weeks=week)
    return pl.DataFrame({"ticker": TICKERS, "date": [day] * len(TICKERS), "x": [value] * len(TICKERS)})


# A writer in its own process: replace weeks `weeks` of table t with value `value`; with `hold`, stop
# between the delete and the insert (touching `hold`) until it is killed.
WRITER = """
import datetime as dt, pathlib, sys, time
sys.path.insert(0, {root!r})
from kairos_dagster_tests.warehouse.test_ducklake import week_frame, MONDAY
from kairos_dagster.warehouse import store
lake = store.target({spec!r}, {data!r})
hold = {hold!r}
go = pathlib.Path({go!r})
while not go.exists():
    time.sleep(0.01)
def pause():
    pathlib.Path(hold).touch()
    time.sleep(600)
with store.connect(lake) as con:
    for w in {weeks!r}:
        start = MONDAY + dt.timedelta(weeks=w)
        store.replace_window(con, "t", week_frame(w, {value!r}), "date", start, start + dt.timedelta(days=7),
                             after_delete=pause if hold else None)
"""


def writer(lake: store.Lake, weeks, value: float, go: Path, hold: Path | None = None) -> subprocess.Popen:
    code = WRITER.format(root=str(Path(__file__).resolve().parents[2]), spec=str(lake), data=lake.data_path,
                         weeks=list(weeks), value=value, go=str(go), hold=str(hold) if hold else "")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture()
def lake(postgres, tmp_path) -> store.Lake:  # noqa: F811
    db = postgres.create_database(f"lake_{tmp_path.name[-20:].replace('-', '_').lower()}")
    return store.target(f"ducklake:{'postgres:' + postgres.libpq(db)}", str(tmp_path / "files"))


def stored(lake: store.Lake) -> pl.DataFrame:
    with store.connect(lake) as con:
        return con.execute("SELECT date, count(*) AS n, min(x) AS lo, max(x) AS hi FROM t GROUP BY date "
                           "ORDER BY date").pl()


def test_a_window_replace_is_invisible_until_it_commits_and_a_killed_writer_leaves_the_previous_rows(lake, tmp_path):
    with store.connect(lake) as con:
        for w in range(3):
            start = MONDAY + dt.timedelta(weeks=w)
            store.replace_window(con, "t", week_frame(w, 1.0), "date", start, start + dt.timedelta(days=7))
    before = stored(lake)
    assert before["n"].to_list() == [300] * 3 and before["hi"].to_list() == [1.0] * 3
    go, hold = tmp_path / "go", tmp_path / "holding"
    go.touch()
    proc = writer(lake, [1], 2.0, go, hold)
    deadline = time.monotonic() + 120
    while not hold.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the writer never reached its delete"
        time.sleep(0.05)
    # the writer has deleted week 1 inside its transaction: another process still sees every row
    assert stored(lake).equals(before)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert stored(lake).equals(before)
    # and the lake takes the next write
    with store.connect(lake) as con:
        start = MONDAY + dt.timedelta(weeks=1)
        store.replace_window(con, "t", week_frame(1, 3.0), "date", start, start + dt.timedelta(days=7))
    after = stored(lake)
    assert after["hi"].to_list() == [1.0, 3.0, 1.0] and after["n"].to_list() == [300] * 3


def test_two_processes_writing_different_weeks_of_one_table_at_once_both_land(lake, tmp_path):
    with store.connect(lake) as con:  # the table exists: both writers append to and delete from it
        store.replace_window(con, "t", week_frame(0, 0.0), "date", MONDAY, MONDAY + dt.timedelta(days=7))
    go = tmp_path / "go"
    procs = [writer(lake, range(1, 9, 2), 1.0, go), writer(lake, range(2, 9, 2), 2.0, go)]
    time.sleep(1.0)  # both have attached the lake and wait at the same line
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    got = stored(lake)
    assert got["n"].to_list() == [300] * 9
    assert got["hi"].to_list() == [0.0] + [1.0 if w % 2 else 2.0 for w in range(1, 9)]
    assert got["lo"].to_list() == got["hi"].to_list()


def test_a_conflicting_commit_is_retried_and_other_errors_are_not(lake):
    with store.connect(lake) as a, store.connect(lake) as b:
        store.replace_table(a, "u", pl.DataFrame({"k": [1], "v": [1.0]}))
        calls = []

        def racing_write() -> None:
            calls.append(1)
            a.execute("UPDATE u SET v = v + 1")
            if len(calls) == 1:  # another connection commits a change to the same rows first
                b.execute("UPDATE u SET v = 100")

        store.atomic(a, "u: update failed", racing_write)
        assert len(calls) == 2  # the first commit conflicted and the body ran again
        assert a.execute("SELECT v FROM u").fetchone()[0] == 101.0
        with pytest.raises(store.WarehouseError, match="u: update failed"):
            store.atomic(a, "u: update failed", lambda: a.execute("SELECT * FROM no_such_table"))


def test_the_lake_setting_is_checked_and_never_holds_a_password(tmp_path):
    env = {"KAIROS_WAREHOUSE": "ducklake:postgres:host=127.0.0.1 dbname=lake", "KAIROS_LAKE_DATA_PATH": str(tmp_path)}
    s = load_settings(env)
    assert s.warehouse == store.Lake("postgres:host=127.0.0.1 dbname=lake", str(tmp_path))
    assert str(s.warehouse) == "ducklake:postgres:host=127.0.0.1 dbname=lake"
    with pytest.raises(SettingsError, match="must not hold a password: set PGPASSWORD"):
        load_settings({**env, "KAIROS_WAREHOUSE": env["KAIROS_WAREHOUSE"] + " password=hunter2"})
    with pytest.raises(SettingsError, match="set KAIROS_LAKE_DATA_PATH"):
        load_settings({"KAIROS_WAREHOUSE": env["KAIROS_WAREHOUSE"]})
    with pytest.raises(SettingsError, match="only a PostgreSQL catalog"):
        load_settings({**env, "KAIROS_WAREHOUSE": "ducklake:sqlite:x.db"})
    assert load_settings({"KAIROS_WAREHOUSE": str(tmp_path / "w.duckdb")}).warehouse == tmp_path / "w.duckdb"
    with pytest.raises(SettingsError, match="name two different warehouses"):
        load_settings({"KAIROS_WAREHOUSE": str(tmp_path / "w.duckdb"), "KAIROS_DUCKDB_PATH": str(tmp_path / "v.duckdb")})


def test_several_processes_per_run_need_the_lake_and_select_the_multiprocess_executor(tmp_path):
    from kairos_dagster.definitions import build_definitions

    lake = {"KAIROS_WAREHOUSE": "ducklake:postgres:host=127.0.0.1 dbname=lake", "KAIROS_LAKE_DATA_PATH": str(tmp_path)}
    with pytest.raises(SettingsError, match="KAIROS_PROCESSES=2 needs the warehouse on DuckLake"):
        load_settings({"KAIROS_PROCESSES": "2", "KAIROS_DUCKDB_PATH": str(tmp_path / "w.duckdb")})
    with pytest.raises(SettingsError, match="KAIROS_EXECUTOR=k8s_job needs the warehouse on DuckLake"):
        load_settings({"KAIROS_EXECUTOR": "k8s_job", "KAIROS_DUCKDB_PATH": str(tmp_path / "w.duckdb")})
    with pytest.raises(SettingsError, match="KAIROS_PROCESSES"):
        load_settings({**lake, "KAIROS_PROCESSES": "0"})
    with pytest.raises(SettingsError, match="KAIROS_EXECUTOR must be one of in_process, multiprocess, k8s_job"):
        load_settings({**lake, "KAIROS_EXECUTOR": "celery"})
    with pytest.raises(SettingsError, match="one process runs one step at a time"):
        load_settings({**lake, "KAIROS_EXECUTOR": "in_process", "KAIROS_PROCESSES": "2"})
    executors = {}
    for name, extra in {"one": {}, "three": {"KAIROS_PROCESSES": "3"},
                        "k8s": {"KAIROS_EXECUTOR": "k8s_job", "KAIROS_PROCESSES": "4"}}.items():
        defs = build_definitions(load_settings({**lake, **extra}))
        executors[name] = defs.resolve_implicit_global_asset_job_def().executor_def
    assert executors["one"].name == "in_process"
    assert executors["three"].name == "multiprocess"  # its limit of 3 at once: test_postgres_deployment (2)
    assert executors["k8s"].name == "k8s_job"  # dagster-k8s's, as deploy/helm/values.yaml runs it


def test_an_unreachable_catalog_is_one_clear_error(tmp_path):
    lake = store.target("ducklake:postgres:host=127.0.0.1 port=1 user=kairos dbname=none connect_timeout=2",
                        str(tmp_path / "files"))
    with (pytest.raises(store.WarehouseError, match=r"warehouse ducklake:postgres:host=127.0.0.1 port=1 .* cannot be opened"),
          store.connect(lake)):
        pass
    assert not store.exists(lake)


def test_s3_credentials_from_the_environment_become_a_duckdb_secret_that_is_never_shown():
    import duckdb

    assert store.s3_secret_sql({"AWS_REGION": "eu-west-1"}) is None  # no key: anonymous access
    with pytest.raises(store.WarehouseError, match="AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"):
        store.s3_secret_sql({"AWS_ACCESS_KEY_ID": "AKIAKAIROSTEST"})
    env = {"AWS_ACCESS_KEY_ID": "AKIAKAIROSTEST", "AWS_SECRET_ACCESS_KEY": "s3cr3t'with'quotes",
           "AWS_DEFAULT_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://minio.local:9000"}
    con = duckdb.connect()
    con.execute(f"LOAD '{store._extension_file(*store._HTTPFS)}'")
    con.execute(store.s3_secret_sql(env))
    name, kind, provider, shown = con.execute(
        "SELECT name, type, provider, secret_string FROM duckdb_secrets()").fetchone()
    assert (name, kind, provider) == ("kairos_s3", "s3", "config")
    assert "endpoint=minio.local:9000" in shown and "use_ssl=false" in shown and "region=eu-west-1" in shown
    assert "s3cr3t" not in shown  # DuckDB redacts the secret itself


def test_the_execution_log_upserts_by_client_order_id_on_the_lake_as_on_the_file(lake, tmp_path):
    """execution_orders has a PRIMARY KEY on a file (ON CONFLICT upsert); DuckLake has no constraints,
    so there the engine updates the ids held and inserts the others. Both must keep the same rows."""
    from kairos_dagster.broker import engine

    def row(cid: str, status: str, reason: str) -> dict:
        base = {c: None for c in engine.EXECUTION_ORDERS_SCHEMA}
        return base | {"rebalance_date": dt.date(2024, 6, 28), "client_order_id": cid, "ticker": cid[-4:],
                       "side": "buy", "qty": 10.0, "status": status, "reason": reason}

    def frame(rows: list[dict]) -> pl.DataFrame:
        return pl.DataFrame(rows, schema=engine.EXECUTION_ORDERS_SCHEMA)

    steps = [
        (frame([row("k-AAAA", "filled", "sent"), row("k-BBBB", "skipped", "gap")]), False),
        # a re-run's skipped rows never overwrite an order that was sent; they update skipped ones
        (frame([row("k-AAAA", "skipped", "gap"), row("k-BBBB", "skipped", "gap again"),
                row("k-CCCC", "skipped", "new")]), True),
        (frame([row("k-AAAA", "canceled", "verified")]), False),
    ]
    results = []
    for target in (tmp_path / "w.duckdb", lake):
        with store.connect(target) as con:
            engine.ensure_execution_table(con)
            engine.ensure_execution_table(con)  # idempotent
            for rows, keep in steps:
                engine._upsert(con, rows, keep_existing_sent=keep)
            results.append(con.execute("SELECT client_order_id, status, reason FROM execution_orders "
                                       "ORDER BY client_order_id").fetchall())
    assert results[0] == results[1] == [("k-AAAA", "canceled", "verified"), ("k-BBBB", "skipped", "gap again"),
                                        ("k-CCCC", "skipped", "new")]
