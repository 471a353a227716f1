"""The sync assets on the Nasdaq Data Link path: the real client against the local fake server, with
faults on 20% of calls, give exactly the tables the synthetic source gives directly; a bad key fails
the run at once with a message that names the table and never the key."""

import datetime as dt

import polars as pl
import pytest
from dagster import DagsterInstance, Definitions

from kairos_dagster.definitions import build_definitions
from kairos_dagster.instance.runner import run_selection
from kairos_dagster.resources.source import SharadarSource
from kairos_dagster.settings import load_settings
from kairos_dagster.sources import schemas
from kairos_dagster.sources.synthetic import SyntheticMarket
from kairos_dagster.warehouse import store
from kairos_dagster_tests.fixtures.helpers import materializations
from kairos_dagster_tests.fixtures.nasdaq_server import FakeNasdaqServer

KEY = "nDl-SeCrEt-0042"
N_TICKERS = 20
SYNC = ["tickers", "sep_base", "daily", "sf1", "sf2", "sf3"]
WEEKS = ("2024-02-05", "2024-03-25")


@pytest.fixture(scope="module")
def provider():
    """The fake serves the synthetic market's tables (generated up front: a request must not wait on it)."""
    return published(dt.date(2024, 6, 28))


def published(as_of: dt.date):
    """The synthetic market's tables as the feed serves them on the evening of `as_of`."""
    market = SyntheticMarket(seed=7, n_tickers=N_TICKERS)
    tables = {
        name: market.table(name, None, as_of, as_of=as_of) if schemas.schema(name).pit_column
        else market.table(name, as_of=as_of)  # TICKERS: the symbols of that day
        for name in ("TICKERS", "SEP", "DAILY", "SF1", "SF2", "SF3")
    }
    return tables.__getitem__


def _defs(path, source: SharadarSource) -> Definitions:
    base = build_definitions(load_settings({"KAIROS_DUCKDB_PATH": str(path), "KAIROS_SYNTHETIC_TICKERS": str(N_TICKERS)}))
    return Definitions(assets=list(base.assets), resources={**base.resources, "source": source}, executor=base.executor)


def _tables(path):
    with store.connect(path, read_only=True) as con:
        return {t: store.read_window(con, t, None, None, None) for t in SYNC}


def test_nasdaq_sync_with_faults_equals_direct_synthetic(tmp_path, provider, caplog):
    with DagsterInstance.ephemeral() as instance:
        direct = tmp_path / "direct.duckdb"
        # The synthetic source on the morning of 2024-06-29 serves the feed as of the evening of 2024-06-28.
        assert run_selection(_defs(direct, SharadarSource(synthetic_tickers=N_TICKERS, as_of="2024-06-29")), SYNC,
                             partition_range=WEEKS, instance=instance).success
        with FakeNasdaqServer(provider, api_key=KEY, fault_rate=0.2, seed=3, slow_seconds=1.0) as base_url:
            source = SharadarSource(kind="nasdaq", api_key=KEY, base_url=base_url, timeout_s=0.5,
                                    backoff_base_s=0.001, backoff_max_s=0.01)
            via_api = tmp_path / "api.duckdb"
            result = run_selection(_defs(via_api, source), SYNC, partition_range=WEEKS, instance=instance)
            assert result.success
    got, expected = _tables(via_api), _tables(direct)
    for name in SYNC:
        assert got[name].equals(expected[name]), name
    assert got["sep_base"].height > 0
    assert KEY not in caplog.text


def test_bad_key_fails_fast_and_names_the_table_not_the_key(tmp_path, provider, caplog):
    with DagsterInstance.ephemeral() as instance, FakeNasdaqServer(provider, api_key=KEY) as base_url:
        source = SharadarSource(kind="nasdaq", api_key="wrong-" + KEY, base_url=base_url, timeout_s=2.0,
                                backoff_base_s=0.001, backoff_max_s=0.01)
        result = run_selection(_defs(tmp_path / "k.duckdb", source), ["tickers"], instance=instance,
                               raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.event_specific_data.error.to_string()
    assert "TICKERS" in message
    assert KEY not in message and KEY not in caplog.text


def _nasdaq_env(tmp_path, base_url: str) -> dict[str, str]:
    return {"KAIROS_DUCKDB_PATH": str(tmp_path / "k.duckdb"), "KAIROS_DATA_SOURCE": "nasdaq",
            "NASDAQ_DATA_LINK_API_KEY": KEY, "KAIROS_NASDAQ_BASE_URL": base_url, "KAIROS_START_DATE": "2024-01-01"}


def test_a_partial_run_config_keeps_the_configured_source(tmp_path, provider, monkeypatch):
    """Setting only a timeout (or a base URL) through run config must not switch to the synthetic market."""
    with DagsterInstance.ephemeral() as instance, FakeNasdaqServer(provider, api_key=KEY, slow_seconds=1.0) as url:
        fake_env = _nasdaq_env(tmp_path, url)
        for k, v in fake_env.items():
            monkeypatch.setenv(k, v)
        defs = build_definitions(load_settings())
        cfg = {"resources": {"source": {"config": {"timeout_s": 5.0}}}}
        result = run_selection(defs, ["tickers", "sep_base"], partition_key="2024-02-05", run_config=cfg,
                               instance=instance)
        assert result.success
        with store.connect(tmp_path / "k.duckdb", read_only=True) as con:
            assert store.read_meta(con, "data_source") == "nasdaq"
        md = materializations(result, "sep_base")[0].metadata
        assert md["source"].value == "nasdaq"
        # a base URL alone: still nasdaq, now pointed at a dead port (the run fails, it does not invent prices)
        cfg = {"resources": {"source": {"config": {"base_url": "http://127.0.0.1:9", "timeout_s": 0.2,
                                                   "backoff_base_s": 0.001, "backoff_max_s": 0.01}}}}
        bad = run_selection(defs, ["sep_base"], partition_key="2024-02-12", run_config=cfg, instance=instance,
                            raise_on_error=False)
        assert not bad.success


def test_a_warehouse_never_mixes_sources(tmp_path, provider, monkeypatch):
    with DagsterInstance.ephemeral() as instance:
        monkeypatch.setenv("KAIROS_DUCKDB_PATH", str(tmp_path / "k.duckdb"))
        monkeypatch.setenv("KAIROS_SYNTHETIC_TICKERS", str(N_TICKERS))
        assert run_selection(build_definitions(load_settings()), ["tickers", "sep_base"], partition_key="2024-02-05",
                             instance=instance).success
        with store.connect(tmp_path / "k.duckdb", read_only=True) as con:
            before = store.read_window(con, "sep_base", None, None, None)
            assert store.read_meta(con, "data_source") == f"synthetic seed=7 tickers={N_TICKERS} signal=1"
        with FakeNasdaqServer(provider, api_key=KEY) as url:
            for k, v in _nasdaq_env(tmp_path, url).items():
                monkeypatch.setenv(k, v)
            result = run_selection(build_definitions(load_settings()), ["tickers", "sep_base"],
                                   partition_key="2024-02-12", instance=instance, raise_on_error=False)
        assert not result.success
        from kairos_dagster.instance.runner import failure_messages

        text = "\n".join(failure_messages(result))
        assert "holds data from source `synthetic seed=7" in text and "this run's source is `nasdaq`" in text
        with store.connect(tmp_path / "k.duckdb", read_only=True) as con:
            assert store.read_window(con, "sep_base", None, None, None).equals(before)  # nothing written


def test_nasdaq_without_a_key_fails_the_run(tmp_path, monkeypatch):
    from dagster import Definitions

    from kairos_dagster.resources.source import source_resource

    monkeypatch.delenv("NASDAQ_DATA_LINK_API_KEY", raising=False)
    base = build_definitions(load_settings({"KAIROS_DUCKDB_PATH": str(tmp_path / "k.duckdb")}))
    settings = load_settings({"KAIROS_DUCKDB_PATH": str(tmp_path / "k.duckdb")})
    defs = Definitions(assets=list(base.assets), executor=base.executor,
                       resources={**base.resources, "source": source_resource(settings)})
    cfg = {"resources": {"source": {"config": {"kind": "nasdaq"}}}}
    with DagsterInstance.ephemeral() as instance:
        result = run_selection(defs, ["tickers"], run_config=cfg, instance=instance, raise_on_error=False)
    from kairos_dagster.instance.runner import failure_messages

    assert not result.success
    assert "data source 'nasdaq' needs NASDAQ_DATA_LINK_API_KEY" in "\n".join(failure_messages(result))


def test_kairos_sync_against_nasdaq_through_the_real_client(tmp_path, provider):
    """`kairos sync --check-only`, then `kairos sync --tables SEP`, against the local fake, the key only in the
    environment (the command used to fail before its first request: it read an EnvVar outside Dagster)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    kairos = str(Path(sys.executable).with_name("kairos"))
    with FakeNasdaqServer(provider, api_key=KEY) as url:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("KAIROS_")}, **_nasdaq_env(tmp_path, url),
               "DAGSTER_HOME": str(tmp_path / "home"), "KAIROS_START_DATE": "2024-05-06"}
        check = subprocess.run([kairos, "sync", "--check-only"], env=env, capture_output=True, text=True, timeout=300)
        assert check.returncode == 0, check.stderr
        assert "SEP    sep_base  held=None source=2024-06-28  needs weeks 2024-05-06 .. 2024-06-24" in check.stdout
        assert not (tmp_path / "k.duckdb").exists()
        sync = subprocess.run([kairos, "sync", "--tables", "SEP"], env=env, capture_output=True, text=True, timeout=300)
        assert sync.returncode == 0, sync.stderr
        assert KEY not in check.stdout + check.stderr + sync.stdout + sync.stderr
    with store.connect(tmp_path / "k.duckdb", read_only=True) as con:
        sep = store.read_window(con, "sep_base", None, None, None)
        assert store.read_meta(con, "data_source") == "nasdaq"
    assert sep["date"].min() == dt.date(2024, 5, 6) and sep["date"].max() == dt.date(2024, 6, 28)


def test_an_incremental_nasdaq_sync_mirrors_the_restated_feed(tmp_path):
    """Week by week through the real client against a fake that republishes the feed as of each Friday:
    SRRX's bad print of 2024-01-19 (served on that evening) is corrected on 2024-01-25; the second sync asks
    `lastupdated.gte` and the warehouse then equals a fresh synthetic sync as of 2024-01-26."""
    with DagsterInstance.ephemeral() as instance:
        direct = tmp_path / "direct.duckdb"
        assert run_selection(_defs(direct, SharadarSource(synthetic_tickers=N_TICKERS, as_of="2024-01-27")), SYNC,
                             partition_range=("2024-01-08", "2024-01-22"), instance=instance).success
        server = FakeNasdaqServer(published(dt.date(2024, 1, 19)), api_key=KEY)
        with server as base_url:
            source = SharadarSource(kind="nasdaq", api_key=KEY, base_url=base_url, timeout_s=5.0,
                                    backoff_base_s=0.001, backoff_max_s=0.01)
            via_api = tmp_path / "api.duckdb"
            defs = _defs(via_api, source)
            assert run_selection(defs, SYNC, partition_range=("2024-01-08", "2024-01-15"), instance=instance).success
            bad = _tables(via_api)["sep_base"].filter((pl.col("ticker") == "SRRX") & (pl.col("date") == dt.date(2024, 1, 19)))
            server.republish(published(dt.date(2024, 1, 26)))
            result = run_selection(defs, SYNC, partition_key="2024-01-22", instance=instance)
            assert result.success
            asked = [r["params"] for r in server.requests if r["path"].endswith("SEP.json")]
    assert any(p.get("lastupdated.gte") == "2024-01-19" for p in asked), asked
    got, expected = _tables(via_api), _tables(direct)
    for name in SYNC:
        assert got[name].equals(expected[name]), name
    fixed = got["sep_base"].filter((pl.col("ticker") == "SRRX") & (pl.col("date") == dt.date(2024, 1, 19)))
    assert fixed["lastupdated"].item() == dt.date(2024, 1, 25) and bad["lastupdated"].item() == dt.date(2024, 1, 19)
    assert abs(bad["close"].item() / fixed["close"].item() - 1) > 0.01  # the bad print was off, now corrected
    md = materializations(result, "sep_base")[0].metadata
    assert md["restated_rows_by_kind"].value.get("correction") == 1
