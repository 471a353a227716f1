"""`kairos migrate` on warehouses built by earlier releases' code (checked out from git and run in a
subprocess): the sync refuses them until they are migrated, `--check` writes nothing, and a migrated
warehouse equals one this release builds from scratch on the same day. The 40-ticker market has a ticker
change in the window (VBBQ trades as MAVSC from 2022-08-08), which neither release knew."""

import datetime as dt
import os
import shutil
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import polars as pl
import pytest

from kairos_dagster.warehouse import store

# (commit, its schema version): the last commits before versions 2 (the warehouse mirrors the feed) and
# 3 (ticker changes re-key every table by permaticker)
RELEASES = (("56eb11c", 1), ("3839a10", 2))
RENAMED = ("VBBQ", "MAVSC")
REPO = Path(__file__).resolve().parents[2]
WEEKS = ("2023-06-05", "2023-08-28")
BUILD = f"""
from kairos_dagster.definitions import build_definitions
from kairos_dagster.instance.runner import run_selection
from kairos_dagster.settings import load_settings
from dagster import AssetSelection
defs = build_definitions(load_settings())
assert run_selection(defs, AssetSelection.groups("sync"), partition_range={WEEKS!r}).success
assert run_selection(defs, ["universe", "feat_trend", "feat_vol_volatility"], partition_range={WEEKS!r}).success
"""
PRICE_LEVELS = ("ema_12", "ema_26", "macd", "macd_signal", "macd_hist", "atr_14", "bb_upper_20", "bb_middle_20",
                "bb_lower_20")


def _env(tmp_path: Path, name: str, code: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAIROS_", "NASDAQ_"))}
    env.update({"KAIROS_DUCKDB_PATH": str(tmp_path / f"{name}.duckdb"), "KAIROS_SYNTHETIC_TICKERS": "40",
                "KAIROS_START_DATE": WEEKS[0], "KAIROS_AS_OF": "2023-09-06", "DAGSTER_HOME": str(tmp_path / name),
                "KAIROS_OUTPUT_DIR": str(tmp_path / f"{name}-out")})
    (tmp_path / name).mkdir(exist_ok=True)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    return env


def _release(tmp_path: Path, commit: str) -> Path:
    """A release's package, from git (a clone of the repository has its history)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "kairos_dagster"],
                             capture_output=True, check=False)
    assert archive.returncode == 0, f"git archive {commit}: {archive.stderr.decode()[:500]}"
    out = tmp_path / f"release-{commit}"
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(out, filter="data")
    return out


def _kairos(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kairos_dagster.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=600, cwd=str(REPO))


def _read(path: Path, sql: str) -> pl.DataFrame:
    with store.connect(path, read_only=True) as con:
        return con.execute(sql).pl()


@pytest.fixture(scope="module")
def built_now(tmp_path_factory):
    """A warehouse this release builds from scratch."""
    tmp = tmp_path_factory.mktemp("migrate-new")
    new = subprocess.run([sys.executable, "-c", BUILD], env=_env(tmp, "new"), capture_output=True, text=True,
                         timeout=600, cwd=str(tmp))
    assert new.returncode == 0, new.stderr[-3000:]
    return Path(_env(tmp, "new")["KAIROS_DUCKDB_PATH"])


@pytest.fixture(scope="module", params=RELEASES, ids=[f"v{v}" for _, v in RELEASES])
def warehouses(request, tmp_path_factory, built_now):
    commit, version = request.param
    tmp = tmp_path_factory.mktemp(f"migrate-v{version}")
    code = _release(tmp, commit)
    old = subprocess.run([sys.executable, "-c", BUILD], env=_env(tmp, "old", code), capture_output=True, text=True,
                         timeout=600, cwd=str(tmp))
    assert old.returncode == 0, old.stderr[-3000:]
    return tmp, version, built_now


def test_an_earlier_release_warehouse_is_refused_then_migrated_in_place(warehouses):
    tmp, version, _ = warehouses
    env = _env(tmp, "old")
    path = Path(env["KAIROS_DUCKDB_PATH"])
    old_levels = _read(path, "SELECT * FROM feat_trend ORDER BY ticker, date")
    # The sync refuses a warehouse of the last release, naming the command.
    refused = _kairos(env, "backfill", "2023-08-28", "2023-08-28", "--select", "sync")
    assert refused.returncode != 0
    assert "run `kairos migrate` first" in refused.stdout + refused.stderr
    # --check writes nothing.
    before = path.stat().st_mtime_ns, _read(path, "SELECT * FROM sep_base ORDER BY ALL")
    check = _kairos(env, "migrate", "--check")
    assert check.returncode == 0, check.stderr
    assert f"schema version {version} -> 3" in check.stdout and "Nothing was written" in check.stdout
    assert "would re-key every table" in check.stdout
    assert _read(path, "SELECT * FROM sep_base ORDER BY ALL").equals(before[1])
    assert _read(path, "SELECT * FROM feat_trend ORDER BY ticker, date").equals(old_levels)
    done = _kairos(env, "migrate")
    assert done.returncode == 0, done.stderr
    assert "Migrated to schema version 3" in done.stdout and "sep_base:" in done.stdout
    assert f"{RENAMED[0]}->{RENAMED[1]}" in done.stdout
    again = _kairos(env, "migrate")
    assert "up to date" in again.stdout  # idempotent


def test_the_migrated_warehouse_equals_one_built_by_this_release(warehouses):
    tmp, version, new = warehouses
    # Its own copy, migrated here: the test does not depend on the other one running first (or at all)
    # on this worker; a copy already migrated by it is left as it is ("up to date").
    env = _env(tmp, "own")
    old = Path(env["KAIROS_DUCKDB_PATH"])
    shutil.copyfile(_env(tmp, "old")["KAIROS_DUCKDB_PATH"], old)
    done = _kairos(env, "migrate")
    assert done.returncode == 0, done.stderr
    assert _read(old, "SELECT value FROM kairos_meta WHERE key = 'schema_version'").item() == "3"
    for table in ("tickers", "sep_base", "daily", "sf1", "sf2", "sf3"):
        a = _read(old, f"SELECT * FROM {table} ORDER BY ALL")
        b = _read(new, f"SELECT * FROM {table} ORDER BY ALL")
        assert a.equals(b), table
    assert "close" not in _read(old, "SELECT * FROM universe LIMIT 1").columns
    a = _read(old, "SELECT * FROM feat_trend JOIN feat_vol_volatility USING (ticker, date) ORDER BY ticker, date")
    b = _read(new, "SELECT * FROM feat_trend JOIN feat_vol_volatility USING (ticker, date) ORDER BY ticker, date")
    assert a.select("ticker", "date").equals(b.select("ticker", "date"))
    for c in PRICE_LEVELS:
        x, y = a.get_column(c), b.get_column(c)
        assert (x.is_null() == y.is_null()).all(), c
        rel = ((x - y).abs() / y.abs().clip(lower_bound=1e-12)).drop_nulls()
        assert rel.max() is None or rel.max() < 1e-9, (c, rel.max())
    changes = _read(old, "SELECT * FROM ticker_changes")
    assert set(changes.select("old_ticker", "new_ticker").unique().rows()) == {RENAMED}
    assert {"sep_base", "feat_trend", "universe"} <= set(changes.get_column("table_name"))
    with store.connect(old, read_only=True) as con:
        log = (con.execute("SELECT * FROM sync_restatements WHERE kind = 'migrated'").pl()
               if store.table_exists(con, "sync_restatements") else pl.DataFrame({"run_id": [], "first_date": []}))
    if version == 1:  # version 1 never restated anything: the reconcile rewrites the split histories
        assert log.height > 0
    assert log.get_column("run_id").unique().to_list() in ([], ["kairos-migrate"])
    assert log.height == 0 or dt.date.fromisoformat(WEEKS[0]) <= log.get_column("first_date").min()
