"""`kairos rebalance`: check-only, the not-a-rebalance-day refusal, --no-prior / --prior-holdings, and a
blocked run, through the real Dagster instance (DAGSTER_HOME in a temp folder) and a real DuckDB."""

import json
import shutil

import pytest
from dagster import DagsterInstance, RunsFilter
from typer.testing import CliRunner

from kairos_dagster.cli.main import app
from kairos_dagster.warehouse import store
from kairos_dagster_tests.fixtures.rebalance_warehouse import build_warehouse

runner = CliRunner()


@pytest.fixture(scope="module")
def base_db(tmp_path_factory):
    return build_warehouse(tmp_path_factory.mktemp("base") / "k.duckdb")


@pytest.fixture
def cli_env(tmp_path, base_db, monkeypatch):
    db = tmp_path / "k.duckdb"
    shutil.copyfile(base_db, db)
    monkeypatch.setenv("KAIROS_DUCKDB_PATH", str(db))
    monkeypatch.setenv("KAIROS_OUTPUT_DIR", str(tmp_path / "outputs"))
    home = tmp_path / "dagster_home"
    home.mkdir()
    # A private instance: run storage under this test's DAGSTER_HOME (absolute path).
    (home / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {home / 'storage'}\n"
                                       "telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return db, tmp_path


def _kairos(*args):
    result = runner.invoke(app, ["rebalance", *args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


def _has_table(db, name):
    with store.connect(db, read_only=True) as con:
        return store.table_exists(con, name)


def test_check_only_prints_gates_and_schedule_and_writes_nothing(cli_env):
    db, tmp = cli_env
    # Default date: the latest feat_matrix_v2 date (2026-02-06) -> that week's rebalance, whose signal
    # date has 20% of the ML alpha missing: blocked.
    code, out = _kairos("--check-only")
    assert code == 1, out
    assert "rebalance date 2026-02-06" in out and "[BLOCK] ml_alpha_coverage" in out and "BLOCKED" in out
    code, out = _kairos("--check-only", "--date", "2026-01-16", "--no-prior")
    assert code == 0, out
    assert "[PASS ] feat_matrix_has_signal_date" in out and "[WARN ] min_eligible_warn" in out
    assert "next rebalances 2026-01-23, 2026-01-30" in out and "Would hold" in out
    assert not (tmp / "outputs").exists() and not _has_table(db, "rebalance_picks")


def test_not_a_rebalance_day_is_refused_without_force(cli_env):
    db, tmp = cli_env
    code, out = _kairos("--date", "2026-01-14")
    assert code == 1 and "2026-01-14 is not a rebalance day" in out and "2026-01-16" in out and "--force" in out
    assert not _has_table(db, "rebalance_picks")
    code, out = _kairos("--date", "2026-01-16", "--no-prior", "--prior-holdings", "x.csv")
    assert code == 2 and "either --prior-holdings or --no-prior" in out


def test_runs_through_dagster_no_prior_then_prior_holdings(cli_env):
    db, tmp = cli_env
    parent = tmp / "custom"
    code, out = _kairos("--date", "2026-01-16", "--no-prior", "--output-dir", str(parent), "--portfolio-value", "250000")
    assert code == 0, out
    picks = parent / "2026-01-16" / "picks.csv"
    assert f"Picks: {picks}" in out and "positions, top 5 weight" in out and "regime normal_vol_bull" in out
    s = json.loads((parent / "2026-01-16" / "portfolio_summary.json").read_text())
    assert s["metrics"]["fresh_start"] is True and s["parameters"]["portfolio_value"] == 250000

    # A separate warehouse (no rows of the week before) with the picks file as the prior.
    code, out = _kairos("--date", "2026-01-23", "--prior-holdings", str(picks), "--output-dir", str(parent))
    assert code == 0, out
    s = json.loads((parent / "2026-01-23" / "portfolio_summary.json").read_text())
    assert s["metrics"]["fresh_start"] is False and s["metrics"]["turnover_pre_vol"] <= 0.30 + 1e-9

    # Both runs are in the instance's run history (what the UI shows).
    with DagsterInstance.get() as instance:
        runs = instance.get_runs(RunsFilter(tags={"kairos/trigger": "cli_rebalance"}))
        assert (tmp / "dagster_home" / "storage").is_dir()
    assert len(runs) == 2 and all(r.is_success for r in runs)


def test_blocked_run_exits_non_zero_with_the_reasons(cli_env):
    db, tmp = cli_env
    code, out = _kairos("--date", "2026-02-06")
    assert code == 1
    assert "BLOCKED" in out and "ml_alpha_coverage" in out and "need >= 95%" in out
    assert not (tmp / "outputs" / "rebalance" / "2026-02-06").exists()
