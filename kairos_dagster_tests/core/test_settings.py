import datetime as dt

import pytest

from kairos_dagster.settings import SettingsError, load_settings


def test_defaults_without_key_are_synthetic():
    s = load_settings({})
    assert s.data_source == "synthetic"
    assert s.start_date == dt.date(2016, 1, 4)
    assert s.synthetic_tickers == 500 and s.synthetic_seed == 7
    assert s.duckdb_path.name == "kairos.duckdb" and s.output_dir.name == "outputs"


def test_key_switches_default_to_nasdaq():
    assert load_settings({"NASDAQ_DATA_LINK_API_KEY": "k"}).data_source == "nasdaq"
    assert load_settings({"NASDAQ_DATA_LINK_API_KEY": "k", "KAIROS_DATA_SOURCE": "synthetic"}).data_source == "synthetic"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"KAIROS_START_DATE": "2016-01-05"}, "KAIROS_START_DATE"),  # a Tuesday
        ({"KAIROS_START_DATE": "soon"}, "KAIROS_START_DATE"),
        ({"KAIROS_SYNTHETIC_TICKERS": "many"}, "KAIROS_SYNTHETIC_TICKERS"),
        ({"KAIROS_SYNTHETIC_TICKERS": "3"}, "KAIROS_SYNTHETIC_TICKERS"),
        ({"KAIROS_SYNTHETIC_SEED": "-1"}, "KAIROS_SYNTHETIC_SEED"),
        ({"KAIROS_SYNTHETIC_SIGNAL": "strong"}, "KAIROS_SYNTHETIC_SIGNAL"),
        ({"KAIROS_SYNTHETIC_SIGNAL": "nan"}, "KAIROS_SYNTHETIC_SIGNAL"),
        ({"KAIROS_SYNTHETIC_SIGNAL": "25"}, "KAIROS_SYNTHETIC_SIGNAL"),
        ({"KAIROS_DATA_SOURCE": "bloomberg"}, "KAIROS_DATA_SOURCE"),
        ({"KAIROS_DATA_SOURCE": "nasdaq"}, "NASDAQ_DATA_LINK_API_KEY"),
        ({"KAIROS_ML_RETRAIN_WEEKS": "0"}, "KAIROS_ML_RETRAIN_WEEKS"),
        ({"KAIROS_XGB_DEVICE": "tpu"}, "KAIROS_XGB_DEVICE"),
        ({"KAIROS_AUTO_PAPER": "maybe"}, "KAIROS_AUTO_PAPER"),
        ({"KAIROS_MAX_DAILY_LOSS_PCT": "3"}, "KAIROS_MAX_DAILY_LOSS_PCT"),
        ({"KAIROS_LIVE_SHARPE_WEEKS": "1"}, "KAIROS_LIVE_SHARPE_WEEKS"),
        ({"KAIROS_KILL_SWITCHES": "sometimes"}, "KAIROS_KILL_SWITCHES"),
    ],
)
def test_bad_values_name_the_variable(env, name):
    with pytest.raises(SettingsError, match=name):
        load_settings(env)


def test_optuna_storage_directory_or_database_url():
    assert load_settings({}).optuna_storage.name == "optuna"
    url = "postgresql://kairos:s3cret@127.0.0.1:5432/optuna"
    assert load_settings({"KAIROS_OPTUNA_STORAGE": url}).optuna_storage == url
    with pytest.raises(SettingsError, match="KAIROS_OPTUNA_STORAGE") as info:
        load_settings({"KAIROS_OPTUNA_STORAGE": "Post gres://user:s3cret@host/db"})
    assert "s3cret" not in str(info.value)


def test_optuna_url_reaches_the_ml_resource_as_an_env_var_not_a_value(monkeypatch):
    from dagster import EnvVar

    from kairos_dagster.resources.ml import MLResource

    url = "postgresql://kairos:s3cret@127.0.0.1:5432/optuna"
    monkeypatch.setenv("KAIROS_OPTUNA_STORAGE", url)
    resource = MLResource.from_settings(load_settings())
    assert resource.optuna_url == EnvVar("KAIROS_OPTUNA_STORAGE")
    assert "s3cret" not in repr(resource)


def test_as_of_replays_the_synthetic_market_only():
    assert load_settings({}).as_of is None
    assert load_settings({"KAIROS_AS_OF": "2027-06-30"}).as_of == dt.date(2027, 6, 30)  # the future: synthetic
    with pytest.raises(SettingsError, match="KAIROS_AS_OF must be an ISO date"):
        load_settings({"KAIROS_AS_OF": "tomorrow"})
    with pytest.raises(SettingsError, match="KAIROS_AS_OF replays the synthetic market"):
        load_settings({"KAIROS_AS_OF": "2026-12-01", "NASDAQ_DATA_LINK_API_KEY": "k"})
    with pytest.raises(SettingsError, match="before KAIROS_START_DATE"):
        load_settings({"KAIROS_AS_OF": "2020-01-01", "KAIROS_START_DATE": "2021-01-04"})


def test_as_of_source_serves_data_through_the_session_before_that_morning():
    from kairos_dagster.resources.source import SharadarSource

    src = SharadarSource(kind="synthetic", synthetic_tickers=30, as_of="2026-04-02").build()  # Thursday
    assert src.latest_date("SEP") == dt.date(2026, 4, 1)
    sep = src.fetch("SEP", dt.date(2026, 3, 30), dt.date(2026, 4, 5))
    assert sep["date"].max() == dt.date(2026, 4, 1)


def test_nasdaq_base_url_setting():
    assert load_settings({}).nasdaq_base_url == "https://data.nasdaq.com/api/v3"
    assert load_settings({"KAIROS_NASDAQ_BASE_URL": "http://127.0.0.1:8080/api/v3/"}).nasdaq_base_url == \
        "http://127.0.0.1:8080/api/v3"
    with pytest.raises(SettingsError, match="KAIROS_NASDAQ_BASE_URL must be an http"):
        load_settings({"KAIROS_NASDAQ_BASE_URL": "data.nasdaq.com"})
