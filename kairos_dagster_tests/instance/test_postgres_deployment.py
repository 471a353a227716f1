"""The shared deployment on one machine: the Dagster instance on a real PostgreSQL (deploy/postgres/
dagster.yaml) and the warehouse on DuckLake (catalog in the same server, Parquet files in a folder).

Through the real `kairos` CLI: a backfill there equals the same backfill on the embedded defaults (a
DuckDB file, SQLite run history) row for row within 1e-9; a separately started dagster-webserver sees
those runs over GraphQL; the feature backfill there runs its independent steps in two processes at once
(Dagster's multiprocess executor, KAIROS_PROCESSES=2) and still equals the single-process one; and a pool
limit above 1 is refused while the warehouse is a DuckDB file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from kairos_dagster.settings import INSTANCE_YAML, PROJECT_ROOT
from kairos_dagster.warehouse import store
from kairos_dagster_tests.fixtures.helpers import cli_env
from kairos_dagster_tests.fixtures.postgres import free_port, postgres  # noqa: F401 (fixture)

KAIROS = str(Path(sys.executable).parent / "kairos")
POSTGRES_YAML = PROJECT_ROOT / "deploy" / "postgres" / "dagster.yaml"
SYNC = ("2023-01-02", "2023-08-28")
FEATURES = ("2023-07-03", "2023-08-28")
FEATURE_GROUPS = "phase1_universe,phase2_technical"
# columns that name the run or the moment it wrote, not the data
VOLATILE = {"run_id", "recorded_at", "synced_at", "created_at", "updated_at", "written_at"}


def base_env(root: Path, instance_yaml: Path, **extra: str) -> dict[str, str]:
    return cli_env(root, instance_yaml, KAIROS_SYNTHETIC_TICKERS="40", KAIROS_START_DATE=SYNC[0],
                   KAIROS_AS_OF="2023-09-05", **extra)


def kairos(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([KAIROS, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=Path(env["DAGSTER_HOME"]).parent)


def backfill(env: dict[str, str], feature_processes: int = 1) -> None:
    for (start, end), select, processes in ((SYNC, "sync", 1), (FEATURES, FEATURE_GROUPS, feature_processes)):
        out = kairos(env | {"KAIROS_PROCESSES": str(processes)}, "backfill", start, end, "--select", select)
        assert out.returncode == 0, out.stderr[-3000:]


def tables(where: Path | store.Lake) -> dict[str, pl.DataFrame]:
    with store.connect(where) as con:
        out = {}
        for t in store.table_names(con):
            df = store.read_window(con, t, None, None, None)
            keep = [c for c in df.columns if c not in VOLATILE]
            out[t] = df.select(keep).sort(keep, nulls_last=True) if keep else df
        return out


@pytest.fixture(scope="module")
def deployment(postgres, tmp_path_factory):  # noqa: F811
    """The same two backfills on the embedded defaults and on PostgreSQL + DuckLake, there the feature
    backfill with two processes."""
    embedded = tmp_path_factory.mktemp("embedded")
    backfill(base_env(embedded, INSTANCE_YAML))
    shared = tmp_path_factory.mktemp("shared")
    postgres.create_database("dagster")
    postgres.create_database("lake")
    lake_env = base_env(shared, POSTGRES_YAML, **postgres.dagster_env("dagster"),
                        KAIROS_WAREHOUSE=f"ducklake:postgres:{postgres.libpq('lake')}",
                        KAIROS_LAKE_DATA_PATH=str(shared / "lake_files"))
    backfill(lake_env, feature_processes=2)
    lake = store.target(lake_env["KAIROS_WAREHOUSE"], lake_env["KAIROS_LAKE_DATA_PATH"])
    return embedded / "kairos.duckdb", lake, lake_env


def test_a_backfill_on_ducklake_and_postgres_equals_the_same_backfill_on_the_embedded_defaults(deployment):
    file, lake, env = deployment
    assert not (Path(env["DAGSTER_HOME"]).parent / "kairos.duckdb").exists()  # nothing went to a file
    a, b = tables(file), tables(lake)
    assert set(a) == set(b)
    assert {"sep_base", "daily", "universe", "feat_beta", "sync_rejects"} <= set(a)
    for name in sorted(a):
        assert a[name].height == b[name].height, name
        assert_frame_equal(a[name], b[name], check_exact=False, rel_tol=1e-9, abs_tol=1e-12,
                           check_column_order=False, check_dtypes=True)
    assert any((Path(lake.data_path)).rglob("*.parquet"))  # the rows live in the lake's Parquet files


def test_the_two_process_feature_backfill_ran_independent_assets_at_once_in_separate_processes(deployment):
    from dagster import DagsterEventType, DagsterInstance

    _, _, env = deployment
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith("DAGSTER_")})
    try:
        with DagsterInstance.get() as instance:
            run = next(r for r in instance.get_runs()
                       if r.tags.get("dagster/asset_partition_range_start") == FEATURES[0])
            assert run.tags.get("kairos/pid")  # launched by the CLI, guarded as every CLI run
            starts = instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_START)
            ends = instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_SUCCESS)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    # every step in a child process of its own, none in the CLI's
    pids = {e.step_key: e.dagster_event.pid for e in starts}
    assert len(pids) >= 4 and len(set(pids.values())) == len(pids)
    assert int(run.tags["kairos/pid"]) not in set(pids.values())
    # and two of them at once: a step started before another one had ended
    began = {e.step_key: e.timestamp for e in starts}
    ended = {e.step_key: e.timestamp for e in ends}
    assert set(ended) == set(began)
    assert any(began[a] < began[b] < ended[a] for a in began for b in began if a != b)
    # never more than the two processes KAIROS_PROCESSES allows
    assert max(sum(began[b] <= began[a] < ended[b] for b in began) for a in began) <= 2


RUNS = """{ runsOrError { ... on Runs { results { runId status jobName tags { key value } } } } }"""


def test_a_separately_started_webserver_on_postgres_sees_the_runs(deployment, tmp_path):
    _, _, env = deployment
    port = free_port()
    log = tmp_path / "webserver.log"
    proc = subprocess.Popen([str(Path(sys.executable).with_name("dagster-webserver")), "-h", "127.0.0.1",
                             "-p", str(port), "-w", "workspace.yaml"], cwd=PROJECT_ROOT, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        runs = None
        for _ in range(240):
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": RUNS}, timeout=10)
                if r.status_code == 200:
                    runs = r.json()["data"]["runsOrError"]["results"]
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert runs is not None, "the webserver did not answer within 2 minutes"
        assert len(runs) == 2 and {r["status"] for r in runs} == {"SUCCESS"}
        assert {r["jobName"] for r in runs} == {"__ASSET_JOB"}
        ranges = sorted(next(t["value"] for t in r["tags"] if t["key"] == "dagster/asset_partition_range_start")
                        for r in runs)
        assert ranges == sorted([SYNC[0], FEATURES[0]])
        # the instance is PostgreSQL's: no SQLite history was written in DAGSTER_HOME
        home = Path(env["DAGSTER_HOME"])
        assert not (home / "history").exists() and not list(home.rglob("*.db"))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def test_a_pool_limit_above_one_is_refused_while_the_warehouse_is_a_duckdb_file(deployment, tmp_path):
    _, _, env = deployment
    # the shared instance (pools.default_limit 4) with the warehouse moved back to a DuckDB file
    file_env = {k: v for k, v in env.items() if k not in {"KAIROS_WAREHOUSE", "KAIROS_LAKE_DATA_PATH"}}
    file_env["KAIROS_DUCKDB_PATH"] = str(tmp_path / "k.duckdb")
    out = kairos(file_env, "backfill", *SYNC, "--select", "sync", timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "the `duckdb` pool allows 4 runs at once, but the warehouse is a DuckDB file" in out.stderr
    assert not (tmp_path / "k.duckdb").exists()
