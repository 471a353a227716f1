"""rebalance_picks / rebalance_trades end to end: the real dagster executor on a small real DuckDB."""

import datetime as dt
import json
import math
import shutil

import polars as pl
import pytest
from dagster import AssetCheckSeverity

from kairos_dagster.definitions import build_definitions
from kairos_dagster.defs.rebalance.assets import OVERRIDE_FIELDS, RebalanceConfig
from kairos_dagster.defs.tags import REBALANCE_OP as OP_NAME
from kairos_dagster.instance.runner import run_selection
from kairos_dagster.portfolio.config import Risk4Config
from kairos_dagster.portfolio.gates import GATES
from kairos_dagster.portfolio.outputs import PICKS_CSV_COLUMNS, read_picks_csv
from kairos_dagster.portfolio.trades import TRADES_COLUMNS
from kairos_dagster.settings import load_settings
from kairos_dagster.warehouse import store
from kairos_dagster_tests.fixtures.helpers import materializations
from kairos_dagster_tests.fixtures.rebalance_warehouse import build_warehouse

SELECTION = ["rebalance_picks", "rebalance_trades"]


@pytest.fixture(scope="module")
def base_db(tmp_path_factory):
    return build_warehouse(tmp_path_factory.mktemp("base") / "k.duckdb")


@pytest.fixture
def env(tmp_path, base_db):
    """A private copy of the warehouse, its Definitions and an output folder."""
    db = tmp_path / "k.duckdb"
    shutil.copyfile(base_db, db)
    settings = load_settings({"KAIROS_DUCKDB_PATH": str(db), "KAIROS_OUTPUT_DIR": str(tmp_path / "outputs")})
    return build_definitions(settings), settings, tmp_path / "outputs" / "rebalance"


def _run(defs, instance, *, key=None, rng=None, **config):
    return run_selection(defs, SELECTION, partition_key=key, partition_range=rng, instance=instance,
                         run_config={"ops": {OP_NAME: {"config": config}}}, raise_on_error=False)


def _table(settings, name):
    with store.connect(settings.duckdb_path, read_only=True) as con:
        if not store.table_exists(con, name):
            return None
        return store.read_window(con, name, None, None, None).sort("date", "ticker")


def _checks(result):
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _failure(result):
    return "\n".join(e.event_specific_data.user_failure_data.description for e in result.all_events
                     if e.event_type_value == "STEP_FAILURE" and e.event_specific_data.user_failure_data)


def test_one_week_end_to_end(env, instance):
    defs, settings, out = env
    result = _run(defs, instance, key="2026-01-12", no_prior=True)
    assert result.success, _failure(result)
    checks = _checks(result)
    assert set(checks) == {"feat_matrix_has_signal_date", "ml_alpha_coverage", "min_eligible_block", "min_eligible_warn",
                           "sector_coverage", "turnover", "max_position"}
    assert checks["feat_matrix_has_signal_date"].passed and checks["ml_alpha_coverage"].passed
    assert checks["min_eligible_block"].passed and checks["sector_coverage"].passed
    # 240 tickers: fewer than 500 eligible is a warning, not a block.
    assert not checks["min_eligible_warn"].passed and checks["min_eligible_warn"].severity == AssetCheckSeverity.WARN

    folder = out / "2026-01-16"
    assert sorted(p.name for p in folder.iterdir()) == ["picks.csv", "portfolio_summary.json", "schedule.json", "trades.csv"]
    assert (folder / "picks.csv").read_text().splitlines()[0] == ",".join(PICKS_CSV_COLUMNS)
    assert (folder / "trades.csv").read_text().splitlines()[0] == ",".join(TRADES_COLUMNS)
    picks_csv = read_picks_csv(folder / "picks.csv")

    picks = _table(settings, "rebalance_picks")
    assert set(picks.get_column("date").unique()) == {dt.date(2026, 1, 16)}
    assert set(picks.get_column("signal_date").unique()) == {dt.date(2026, 1, 15)}
    assert set(picks.get_column("config").unique()) == {"ml"}
    assert picks.sort("rank").select(PICKS_CSV_COLUMNS).equals(picks_csv.sort("rank"))
    # Sizing: shares = floor(weight x 100,000 / unadjusted price at the signal date).
    with store.connect(settings.duckdb_path, read_only=True) as con:
        px = con.execute("SELECT ticker, price AS px FROM feat_matrix_v2 WHERE date = DATE '2026-01-15'").pl()
    chk = picks.join(px, on="ticker")
    assert chk.height == picks.height
    assert (chk.get_column("price") == chk.get_column("px")).all()
    assert chk.select((pl.col("weight") * 100_000 / pl.col("price") + 1e-9).floor().cast(pl.Int64)
                      == pl.col("shares")).to_series().all()
    assert picks.get_column("weight").max() <= 0.03 + 1e-9 and picks.get_column("weight").sum() <= 1 + 1e-9

    # Fresh start: every trade is a BUY of a new position, one per pick with shares.
    trades = _table(settings, "rebalance_trades")
    assert set(trades.get_column("action")) == {"BUY"} and set(trades.get_column("reason")) == {"new_position"}
    assert trades.height == picks.filter(pl.col("shares") > 0).height

    s = json.loads((folder / "portfolio_summary.json").read_text())
    assert s["rebalance_date"] == "2026-01-16" and s["signal_date"] == "2026-01-15" and s["is_rebalance_day"]
    assert s["regime"] == {"date": "2026-01-15", "regime": "normal_vol_bull", "vol_regime": "normal_vol",
                           "trend_regime": "bull"}
    assert s["data_freshness"]["feat_matrix_v2"] == "2026-01-16" and s["data_freshness"]["sep_base"] == "2026-01-16"
    assert s["portfolio"]["n_positions"] == picks.height and s["metrics"]["fresh_start"]
    sched = json.loads((folder / "schedule.json").read_text())
    assert sched["next_rebalances"][:2] == ["2026-01-23", "2026-01-30"] and len(sched["next_rebalances"]) == 10
    md = materializations(result, "rebalance_picks")[0].metadata
    assert md["picks_csv"].value == str(folder / "picks.csv")


def test_backfill_chains_weeks_and_equals_week_by_week(env, instance, tmp_path, base_db):
    defs, settings, out = env
    result = _run(defs, instance, rng=("2026-01-05", "2026-01-19"))
    assert result.success, _failure(result)
    picks = _table(settings, "rebalance_picks")
    dates = [dt.date(2026, 1, 9), dt.date(2026, 1, 16), dt.date(2026, 1, 23)]
    assert sorted(picks.get_column("date").unique()) == dates
    summaries = [json.loads((out / d.isoformat() / "portfolio_summary.json").read_text()) for d in dates]
    assert summaries[0]["metrics"]["fresh_start"] is True
    # One verdict per gate and week, each naming its week (the range run's own partition is none).
    evals = result.get_asset_check_evaluations()
    assert sorted({(e.check_name, e.partition) for e in evals}) == sorted(
        (name, week) for name, _, _ in GATES for week in ("2026-01-05", "2026-01-12", "2026-01-19"))
    assert len(evals) == 3 * len(GATES)
    # One event per week and table, each telling its own week: 75 picks, its dates, its book's numbers.
    mats = materializations(result, "rebalance_picks")
    assert [m.partition for m in mats] == ["2026-01-05", "2026-01-12", "2026-01-19"]
    for m, d, s in zip(mats, dates, summaries, strict=True):
        assert m.metadata["rows"].value == picks.filter(pl.col("date") == d).height == s["portfolio"]["n_positions"]
        assert m.metadata["first_date"].value == m.metadata["last_date"].value == d.isoformat()
        assert m.metadata["n_positions"].value == s["portfolio"]["n_positions"]
    assert "picks_csv" in mats[-1].metadata and "picks_csv" not in mats[0].metadata
    assert "gates" in mats[-1].metadata and "gates" not in mats[0].metadata
    tmats = materializations(result, "rebalance_trades")
    all_trades = _table(settings, "rebalance_trades")
    assert [m.metadata["rows"].value for m in tmats] == [all_trades.filter(pl.col("date") == d).height for d in dates]
    for s in summaries[1:]:
        # Each later week starts from the week before: smoothing caps the one-way turnover at 30%.
        assert s["metrics"]["fresh_start"] is False
        assert s["metrics"]["turnover_pre_vol"] <= 0.30 + 1e-9
    trades = _table(settings, "rebalance_trades").filter(pl.col("date") == dates[1])
    prev = picks.filter(pl.col("date") == dates[0]).select("ticker", pl.col("shares").alias("prev"))
    cur = picks.filter(pl.col("date") == dates[1]).select("ticker", pl.col("shares").alias("cur"))
    book = prev.join(cur, on="ticker", how="full", coalesce=True).fill_null(0)
    signed = trades.select("ticker", pl.when(pl.col("action") == "BUY").then(pl.col("shares"))
                           .otherwise(-pl.col("shares")).alias("delta"))
    got = book.join(signed, on="ticker", how="left").fill_null(0)
    assert (got.get_column("prev") + got.get_column("delta") == got.get_column("cur")).all()
    assert trades.filter(pl.col("current_value") > 0).height > 0

    # Week by week in a fresh warehouse (each run's prior = the previous run's rows) gives the same rows.
    db2 = tmp_path / "k2.duckdb"
    shutil.copyfile(base_db, db2)
    s2 = load_settings({"KAIROS_DUCKDB_PATH": str(db2), "KAIROS_OUTPUT_DIR": str(tmp_path / "o2")})
    defs2 = build_definitions(s2)
    for key in ["2026-01-05", "2026-01-12", "2026-01-19"]:
        r = _run(defs2, instance, key=key)
        assert r.success, _failure(r)
    assert _table(s2, "rebalance_picks").equals(picks)
    assert _table(s2, "rebalance_trades").equals(_table(settings, "rebalance_trades"))

    # The default prior of a later run is the latest earlier rebalance_picks in DuckDB.
    r = _run(defs, instance, key="2026-01-26")
    assert r.success, _failure(r)
    md = materializations(r, "rebalance_picks")[0].metadata
    assert md["prior_source"].value == "rebalance_picks of 2026-01-23"
    s = json.loads((out / "2026-01-30" / "portfolio_summary.json").read_text())
    assert s["metrics"]["fresh_start"] is False and s["metrics"]["turnover_pre_vol"] <= 0.30 + 1e-9


@pytest.mark.parametrize(
    ("key", "config", "gate", "why"),
    [
        ("2026-02-09", {}, "feat_matrix_has_signal_date", "no rows at signal date 2026-02-12"),
        ("2026-02-02", {}, "ml_alpha_coverage", "need >= 95%"),
        ("2026-01-12", {"min_adv": 1.0e8}, "min_eligible_block", "eligible stocks (block below 50)"),
    ],
)
def test_blocking_gates_write_nothing(env, instance, key, config, gate, why):
    defs, settings, out = env
    assert _run(defs, instance, key="2026-01-05", no_prior=True).success  # earlier rows must survive
    before = _table(settings, "rebalance_picks")
    result = _run(defs, instance, key=key, **config)
    assert not result.success
    checks = _checks(result)
    assert checks[gate].passed is False and checks[gate].severity == AssetCheckSeverity.ERROR
    assert {e.partition for e in checks.values()} == {key}  # each verdict names the week it judged
    if gate == "feat_matrix_has_signal_date":
        # Stale data is one cause: the warn gates are skipped with it, not failed.
        for name in ("min_eligible_warn", "sector_coverage", "turnover", "max_position"):
            assert checks[name].passed and checks[name].metadata["verdict"].value == "SKIP", name
            assert checks[name].description.startswith("skipped: no portfolio was built"), name
    message = _failure(result)
    assert "BLOCKED" in message and gate in message and why in message, message
    assert not materializations(result, "rebalance_picks")
    assert _table(settings, "rebalance_picks").equals(before)
    assert sorted(p.name for p in out.iterdir()) == ["2026-01-09"]


def test_bad_run_config_fails_with_a_clear_message(env, instance):
    defs, _, out = env
    r = _run(defs, instance, key="2026-01-12", max_position_pct=1.5)
    assert not r.success and "max_position_pct" in _failure(r)
    r = _run(defs, instance, key="2026-01-12", rebalance_date="2026-01-14")
    assert not r.success and "not a rebalance day" in _failure(r)
    assert not out.exists()
    # With force, an as-of date inside the week runs from the session before it.
    r = _run(defs, instance, key="2026-01-12", rebalance_date="2026-01-14", force=True, no_prior=True, config="v8",
             portfolio_value=500_000)
    assert r.success, _failure(r)
    s = json.loads((out / "2026-01-14" / "portfolio_summary.json").read_text())
    assert s["signal_date"] == "2026-01-13" and s["is_rebalance_day"] is False
    assert s["parameters"]["alpha_column"] == "alpha_composite_v8" and s["parameters"]["portfolio_value"] == 500_000
    assert math.isclose(s["parameters"]["target_vol"], 0.20)


def test_run_config_exposes_every_risk4_parameter():
    assert set(OVERRIDE_FIELDS) == set(Risk4Config.__dataclass_fields__) - {"name"}
    assert set(OVERRIDE_FIELDS) <= set(RebalanceConfig.model_fields)
