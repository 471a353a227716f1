"""dagster-webserver on 127.0.0.1 over a small materialized warehouse: it loads the code location with every
asset (GraphQL), and Playwright in Debian's headless Chromium sees the rebalance's pictures on the asset page
(the [Show Markdown] dialog renders each PNG)."""

import contextlib
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
from kairos_dagster.defs.tags import REBALANCE_OP
from kairos_dagster.instance.runner import get_instance, run_selection
from kairos_dagster.settings import PROJECT_ROOT, load_settings
from kairos_dagster_tests.fixtures.rebalance_warehouse import build_warehouse

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


def assert_code_location_loads_with_every_asset(webserver: str) -> None:
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


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WEEK = "2026-01-26"
CHARTS = ("sector_weights_chart", "weight_distribution_chart")


@pytest.fixture()
def materialized(tmp_path, monkeypatch):
    db = build_warehouse(tmp_path / "k.duckdb")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    for k, v in {"DAGSTER_HOME": str(home), "KAIROS_DUCKDB_PATH": str(db),
                 "KAIROS_OUTPUT_DIR": str(tmp_path / "outputs")}.items():
        monkeypatch.setenv(k, v)
    defs = build_definitions(load_settings())
    result = run_selection(defs, ["rebalance_picks", "rebalance_trades"], partition_key=WEEK, instance=get_instance(),
                           run_config={"ops": {REBALANCE_OP: {"config": {}}}}, raise_on_error=False)
    assert result.success
    md = next(e.event_specific_data.materialization.metadata for e in result.get_asset_materialization_events()
              if e.asset_key.to_user_string() == "rebalance_picks")
    for name in CHARTS:
        assert md[name].value.startswith(f"![{name}](data:image/png;base64,iVBORw0KGgo"), name
    return tmp_path


def test_the_code_location_loads_and_the_rebalance_pictures_show_on_the_asset_page(materialized, webserver):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    assert_code_location_loads_with_every_asset(webserver)
    if CHROMIUM is None and not os.environ.get("KAIROS_REQUIRE_BROWSER"):
        pytest.skip("the browser part: Debian's chromium is not installed (.ci/run installs it)")
    assert CHROMIUM, "chromium is required (KAIROS_REQUIRE_BROWSER is set) but not on PATH"
    shown = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{webserver}/assets/rebalance_picks?view=events&partition={WEEK}")
            page.locator("tr", has=page.locator("span", has_text=CHARTS[0])).last.wait_for(timeout=120_000)
            with contextlib.suppress(PlaywrightTimeout):  # the first-visit dialog, a moment after the page
                page.get_by_role("button", name="Skip").click(timeout=10_000)
            for name in CHARTS:
                row = page.locator("tr", has=page.locator("span", has_text=name)).last
                row.get_by_text("[Show Markdown]").click()
                img = page.locator(f'img[alt="{name}"]')
                img.wait_for(timeout=30_000)
                for _ in range(50):
                    size = img.evaluate("i => [i.complete, i.naturalWidth, i.naturalHeight]")
                    if size[0] and size[1]:
                        break
                    time.sleep(0.1)
                shown[name] = size
                page.get_by_role("button", name="Close").last.click()
                img.wait_for(state="detached", timeout=30_000)
            shot = page.screenshot()
        finally:
            browser.close()
    for name in CHARTS:
        done, w, h = shown[name]
        assert done and w > 300 and h > 150, (name, shown[name])
    assert shot.startswith(b"\x89PNG") and len(shot) > 20_000
