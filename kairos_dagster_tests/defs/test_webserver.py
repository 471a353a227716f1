"""dagster-webserver on 127.0.0.1 over a small materialized warehouse: it loads the code location with every
asset (GraphQL), and Playwright in Debian's headless Chromium sees the rebalance's pictures on the asset page
(the [Show Markdown] dialog renders each PNG)."""

import contextlib
import os
import shutil
import signal
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
from kairos_dagster.settings import INSTANCE_YAML, PROJECT_ROOT, load_settings
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
    """`kairos ui` (what `make ui` runs: webserver and daemon) started as a background job of a script is:
    its own process group, SIGINT ignored. Yields (base URL, process, log path)."""
    home = tmp_path / "dagster_home"  # a test may have run in this home (and warehouse) before: it serves them
    home.mkdir(exist_ok=True)
    shutil.copy(INSTANCE_YAML, home / "dagster.yaml")
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "KAIROS_DUCKDB_PATH": str(tmp_path / "k.duckdb")}
    log = tmp_path / "ui.log"
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("kairos")), "ui", "--host", "127.0.0.1", "--port", str(port)],
        cwd=PROJECT_ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):  # start-up loads the code location: allow a loaded 2-core machine up to 2 minutes
            if proc.poll() is not None:
                raise RuntimeError(f"kairos ui exited: {log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError("the webserver did not answer within 2 minutes")
        yield base, proc, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def press_ctrl_c(proc: subprocess.Popen) -> list[str]:
    """SIGINT to the whole process group, as a terminal's Ctrl-C: the pids of the group still alive once
    the `kairos ui` process has exited (it must within a minute)."""
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    for _ in range(40):  # the webserver and daemon exit with it; give their last writes a moment
        left = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if not left:
            break
        time.sleep(0.5)
    return left


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
    shutil.copy(INSTANCE_YAML, home / "dagster.yaml")
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
    return result.run_id


CHECKS_QUERY = """
query ($check: String!) {
  assetCheckExecutions(assetKey: {path: ["rebalance_picks"]}, checkName: $check, limit: 5) {
    runId status partition evaluation { partition description }
  }
}
"""


def _screenshot(page, name: str, shots: dict) -> None:
    shots[name] = page.screenshot()


def test_the_ui_shows_the_rebalance_its_partitions_checks_pictures_and_cli_run_and_stops_on_ctrl_c(materialized,
                                                                                                  webserver):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    run_id = materialized
    base, proc, log = webserver
    assert_code_location_loads_with_every_asset(base)
    # The gates' verdicts name the week they judged (partitioned checks), one per gate.
    for check in ("feat_matrix_has_signal_date", "max_position"):
        r = httpx.post(f"{base}/graphql", json={"query": CHECKS_QUERY, "variables": {"check": check}}, timeout=30)
        (execution,) = r.json()["data"]["assetCheckExecutions"]
        assert execution["runId"] == run_id and execution["partition"] == WEEK, execution
        assert execution["evaluation"]["partition"] == WEEK and execution["evaluation"]["description"], execution
    if CHROMIUM is None and not os.environ.get("KAIROS_REQUIRE_BROWSER"):
        pytest.skip("the browser part: Debian's chromium is not installed (.ci/run installs it)")
    assert CHROMIUM, "chromium is required (KAIROS_REQUIRE_BROWSER is set) but not on PATH"
    shown, shots, texts = {}, {}, {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/assets/rebalance_picks?view=events&partition={WEEK}")
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
            _screenshot(page, "events", shots)
            # The partitions tab: the weekly partitions, the one materialized week counted as such.
            page.goto(f"{base}/assets/rebalance_picks?view=partitions")
            page.get_by_text("Materialized (1)").first.wait_for(timeout=60_000)
            texts["partitions"] = page.inner_text("body")
            _screenshot(page, "partitions", shots)
            # The checks tab lists the gates.
            page.goto(f"{base}/assets/rebalance_picks?view=checks")
            page.get_by_text("feat_matrix_has_signal_date").first.wait_for(timeout=60_000)
            _screenshot(page, "checks", shots)
            # The run the CLI launched is a run of the code location's asset job: its job page lists it.
            page.goto(f"{base}/locations/kairos/jobs/__ASSET_JOB/runs")
            page.get_by_text(run_id[:8]).first.wait_for(timeout=60_000)
            texts["job_runs"] = page.inner_text("body")
            _screenshot(page, "job_runs", shots)
        finally:
            browser.close()
    for name in CHARTS:
        done, w, h = shown[name]
        assert done and w > 300 and h > 150, (name, shown[name])
    for name, shot in shots.items():  # a page that rendered: a PNG with real content, not a blank canvas
        assert shot.startswith(b"\x89PNG") and len(shot) > 20_000, (name, len(shot))
    assert "Pipeline not found" not in texts["job_runs"]
    assert "Failed (0)" in texts["partitions"] and "Partitions Selected" in texts["partitions"]
    # Ctrl-C stops the webserver and the daemon; start-up printed nothing an operator must decode.
    assert press_ctrl_c(proc) == []
    out = log.read_text()
    assert "Dagster services shut down" in out, out[-2000:]
    noise = [line for line in out.splitlines() if "WARNING" in line or "Warning" in line]
    assert not noise, noise
