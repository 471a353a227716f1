"""Smoke test: dagster-webserver on 127.0.0.1 loads the code location with every asset (through GraphQL)."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from kairos_dagster.definitions import build_definitions
from kairos_dagster.settings import PROJECT_ROOT

defs = build_definitions()

QUERY = """
{
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
  assetNodes { assetKey { path } }
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def webserver(tmp_path: Path):
    home = tmp_path / "dagster_home"  # a test may have run in this home (and warehouse) before: it serves them
    home.mkdir(exist_ok=True)
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "KAIROS_DUCKDB_PATH": str(tmp_path / "k.duckdb")}
    exe = Path(sys.executable).with_name("dagster-webserver")
    proc = subprocess.Popen(
        [str(exe), "-h", "127.0.0.1", "-p", str(port), "-w", str(PROJECT_ROOT / "workspace.yaml")],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):  # start-up loads the code location: allow a loaded 2-core machine up to 2 minutes
            if proc.poll() is not None:
                raise RuntimeError(f"dagster-webserver exited: {proc.stdout.read().decode()[-3000:]}")
            try:
                if httpx.get(f"{base}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError("dagster-webserver did not answer within 2 minutes")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_code_location_loads_with_every_asset(webserver):
    body = None
    for _ in range(120):  # the location may still be loading right after the server answers
        r = httpx.post(f"{webserver}/graphql", json={"query": QUERY}, timeout=30)
        assert r.status_code == 200
        body = r.json()["data"]
        entries = body["workspaceOrError"]["locationEntries"]
        if entries and entries[0]["locationOrLoadError"] is not None:
            break
        time.sleep(0.5)
    entries = body["workspaceOrError"]["locationEntries"]
    assert [e["name"] for e in entries] == ["kairos"]
    assert entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation", entries[0]
    served = {"/".join(n["assetKey"]["path"]) for n in body["assetNodes"]}
    expected = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert expected <= served
    assert {"sep_base", "feat_matrix_v2", "alpha_composite_v8", "regime_history_academic"} <= served
