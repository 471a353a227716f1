"""The sync assets on the Nasdaq Data Link path: the real client against the local fake server, with
faults on 20% of calls, give exactly the tables the synthetic source gives directly; a bad key fails
the run at once with a message that names the table and never the key."""

import datetime as dt

import pytest
from dagster import DagsterInstance, Definitions

from kairos_dagster.definitions import build_definitions
from kairos_dagster.resources import SharadarSource
from kairos_dagster.runner import run_selection
from kairos_dagster.settings import load_settings
from kairos_dagster.sources import schemas
from kairos_dagster.sources.synthetic import SyntheticMarket
from kairos_dagster.warehouse import store
from kairos_dagster_tests.fakes.nasdaq_server import FakeNasdaqServer

KEY = "nDl-SeCrEt-0042"
N_TICKERS = 20
SYNC = ["tickers", "sep_base", "daily", "sf1", "sf2", "sf3"]
WEEKS = ("2024-02-05", "2024-03-25")


@pytest.fixture(scope="module")
def provider():
    """The fake serves the synthetic market's tables (generated up front: a request must not wait on it)."""
    market = SyntheticMarket(seed=7, n_tickers=N_TICKERS)
    last = dt.date(2024, 6, 28)
    tables = {
        name: market.table(name, None, last) if schemas.schema(name).pit_column else market.table(name)
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
        assert run_selection(_defs(direct, SharadarSource(synthetic_tickers=N_TICKERS)), SYNC,
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
