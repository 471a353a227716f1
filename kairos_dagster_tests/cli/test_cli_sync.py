"""`kairos sync` and `kairos status` as an operator runs them: a real subprocess, a real warehouse."""

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kairos_dagster.calendar import week_start

KAIROS = str(Path(sys.executable).with_name("kairos"))


def _run(args, env):
    return subprocess.run([KAIROS, *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture()
def env(tmp_path):
    start = week_start(dt.date.today()) - dt.timedelta(weeks=5)
    return {
        **os.environ,
        "KAIROS_DUCKDB_PATH": str(tmp_path / "k.duckdb"),
        "KAIROS_SYNTHETIC_TICKERS": "25",
        "KAIROS_START_DATE": start.isoformat(),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "KAIROS_LOG_LEVEL": "ERROR",
    }


def test_sync_check_only_then_catch_up_then_up_to_date(env):
    first = _run(["sync", "--check-only"], env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("needs weeks") == 5
    assert not Path(env["KAIROS_DUCKDB_PATH"]).exists()  # check-only writes nothing

    partial = _run(["sync", "--tables", "SEP", "DAILY"], env)
    assert partial.returncode == 0, partial.stderr
    assert "Run " in partial.stdout and "SUCCESS" in partial.stdout

    again = _run(["sync", "--check-only"], env)
    lines = {line.split()[0]: line for line in again.stdout.splitlines() if line[:3] in {"SEP", "DAI", "SF1", "SF2", "SF3"}}
    assert "up to date" in lines["SEP"] and "up to date" in lines["DAILY"]
    assert "needs weeks" in lines["SF1"]

    status = _run(["status"], env)
    assert status.returncode == 0
    assert "sep_base" in status.stdout and "tickers" in status.stdout and "sf1" not in status.stdout


def test_sync_unknown_table_is_bad_input(env):
    r = _run(["sync", "--check-only", "--tables", "SEPX"], env)
    assert r.returncode == 2
    assert "unknown table 'SEPX'" in r.stderr


def test_bad_setting_names_the_variable(env):
    r = _run(["status"], {**env, "KAIROS_SYNTHETIC_TICKERS": "lots"})
    assert r.returncode == 2
    assert "KAIROS_SYNTHETIC_TICKERS" in r.stderr
