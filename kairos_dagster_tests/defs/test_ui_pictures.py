"""The pictures in the UI: a rebalance run's metadata holds its sector-weights and weight-distribution
charts, and dagster-webserver on 127.0.0.1, driven by Playwright in Debian's headless Chromium, shows
them on the asset's page (the [Show Markdown] dialog renders the PNG)."""

import os
import shutil
import time

import pytest

from kairos_dagster.definitions import build_definitions
from kairos_dagster.defs.tags import REBALANCE_OP
from kairos_dagster.instance.runner import get_instance, run_selection
from kairos_dagster.settings import PROJECT_ROOT, load_settings
from kairos_dagster_tests.defs.test_webserver import webserver  # noqa: F401 (the fixture)
from kairos_dagster_tests.fixtures.rebalance_warehouse import build_warehouse

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


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("KAIROS_REQUIRE_BROWSER"),
                    reason="Debian's chromium is not installed (.ci/run installs it and sets KAIROS_REQUIRE_BROWSER)")
def test_the_rebalance_pictures_show_on_the_asset_page(materialized, webserver):  # noqa: F811
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "chromium is required (KAIROS_REQUIRE_BROWSER is set) but not on PATH"
    shown = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{webserver}/assets/rebalance_picks?view=events&partition={WEEK}")
            for name in CHARTS:
                row = page.locator("tr", has=page.locator("span", has_text=name)).last
                row.wait_for(timeout=120_000)
                skip = page.get_by_role("button", name="Skip")
                if skip.count():  # Dagster's first-visit community dialog
                    skip.first.click()
                row.get_by_text("[Show Markdown]").click()
                img = page.locator(f'img[alt="{name}"]')
                img.wait_for(timeout=30_000)
                for _ in range(50):
                    size = img.evaluate("i => [i.complete, i.naturalWidth, i.naturalHeight]")
                    if size[0] and size[1]:
                        break
                    time.sleep(0.1)
                shown[name] = size
                page.get_by_role("button", name="Close").click()
            shot = page.screenshot()
        finally:
            browser.close()
    for name in CHARTS:
        done, w, h = shown[name]
        assert done and w > 300 and h > 150, (name, shown[name])
    assert shot.startswith(b"\x89PNG") and len(shot) > 20_000
