"""The backtest assets end to end: the real dagster executor on a small real DuckDB (the rebalance
tests' warehouse: feat_matrix_v2 for six weeks, sep_base, market_returns, regimes)."""

import datetime as dt
import shutil
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from kairos_dagster.definitions import build_definitions
from kairos_dagster.defs.tags import BACKTEST_OP
from kairos_dagster.instance.runner import run_selection
from kairos_dagster.settings import INSTANCE_YAML, load_settings
from kairos_dagster.warehouse import store
from kairos_dagster_tests.fixtures.rebalance_warehouse import build_warehouse

SELECTION = ["backtest_daily", "backtest_trades", "backtest_positions", "backtest_book", "backtest_capacity",
             "strategy_stats"]
TABLES = (*SELECTION[:4], "backtest_capacity", "strategy_stats")
PICTURES = ("equity_curves", "drawdowns", "rolling_sharpe_52w", "returns_by_year_and_regime", "turnover_and_cost",
            "capacity_curve")
FIRST, LAST = "2025-12-29", "2026-02-02"  # the weeks feat_matrix_v2 covers
WEEKS = ["2025-12-29", "2026-01-05", "2026-01-12", "2026-01-19", "2026-01-26", "2026-02-02"]


@pytest.fixture(scope="module")
def base_db(tmp_path_factory):
    return build_warehouse(tmp_path_factory.mktemp("bt") / "k.duckdb")


def _env(tmp_path, base_db, name):
    db = tmp_path / f"{name}.duckdb"
    shutil.copyfile(base_db, db)
    settings = load_settings({"KAIROS_DUCKDB_PATH": str(db), "KAIROS_START_DATE": "2025-08-04",
                              "KAIROS_OUTPUT_DIR": str(tmp_path / f"{name}-outputs")})
    return build_definitions(settings), settings


def _tables(settings):
    with store.connect(settings.duckdb_path, read_only=True) as con:
        return {t: store.read_window(con, t, None, None, None).sort(
            [c for c in ("strategy", "config_id", "portfolio_value", "date", "ticker", "period")
             if c in store.table_columns(con, t)])
            for t in TABLES}


@pytest.fixture(scope="module")
def span(tmp_path_factory, base_db):
    from dagster import DagsterInstance

    tmp = tmp_path_factory.mktemp("span")
    defs, settings = _env(tmp, base_db, "span")
    with DagsterInstance.ephemeral() as instance:
        result = run_selection(defs, SELECTION, partition_range=(FIRST, LAST), instance=instance, raise_on_error=False)
    return result, settings


def test_a_span_backfill_writes_every_strategy(span):
    result, settings = span
    assert result.success
    t = _tables(settings)
    daily = t["backtest_daily"]
    assert set(daily["strategy"]) == {"ml", "ml_fixed", "v8", "universe_ew", "market"}
    assert set(daily["config_id"]) == {"default", "capacity-1e7", "capacity-1e9"}
    ml = daily.filter((pl.col("strategy") == "ml") & (pl.col("config_id") == "default"))
    # The first rebalance is the first week's last session: 2026-01-02; every session after it is replayed.
    assert ml["date"].min().isoformat() == "2026-01-02" and ml["date"].max().isoformat() == "2026-02-06"
    assert (daily["equity"] > 0).all()
    positions = t["backtest_positions"].filter((pl.col("strategy") == "ml") & (pl.col("config_id") == "default"))
    # A fresh start holds the ML config's top 75; later weeks blend toward the new target under the 30%
    # turnover cap, so names leave over several weeks (as in the live picks).
    per_week = positions.group_by("date").len().sort("date")["len"].to_list()
    assert per_week[0] == 75 and max(per_week) > 75
    stats = t["strategy_stats"]
    assert {"full", "2026", "last_52w", "regime:normal_vol_bull"} <= set(stats["period"])
    assert set(stats["config_id"]) == {"default"}
    assert stats.filter(pl.col("strategy") == "ml")["sharpe"].is_not_null().all()
    md = result.asset_materializations_for_node("strategy_stats")[-1].metadata
    for name in PICTURES:
        assert md[name].value.startswith(f"![{name}](data:image/png;base64,iVBOR"), name
    report = md["report"].value
    assert report == str(settings.output_dir / "backtest" / "backtest_report.html")
    text = Path(report).read_text(encoding="utf-8")
    assert text.count('<img alt="') == len(PICTURES) and 'id="capacity_table"' in text


def test_each_week_of_a_span_backfill_has_its_own_metadata(span):
    """A range run records one event per week and table; each tells that week's rows and dates, the rich
    entries (the latest equity table) sit on the last week's, and the run's totals beside them."""
    result, settings = span
    t = _tables(settings)
    for table in SELECTION[:4]:
        mats = [m for m in result.get_asset_materialization_events()
                if m.step_materialization_data.materialization.asset_key.to_user_string() == table]
        mats = [m.step_materialization_data.materialization for m in mats]
        assert [m.partition for m in mats] == WEEKS, table
        week = pl.col("date").dt.truncate("1w").dt.to_string("%Y-%m-%d")
        own = t[table].filter(pl.col("config_id") == "default")  # the capacity sweep's chains are its own
        truth = dict(own.group_by(week.alias("week")).len().iter_rows())
        for m in mats:
            assert m.metadata["rows"].value == truth.get(m.partition, 0), (table, m.partition)
            assert m.metadata["dagster/row_count"].value == truth.get(m.partition, 0)
            if truth.get(m.partition):
                assert m.metadata["first_date"].value >= m.partition and m.metadata["config_id"].value == "default"
        assert mats[-1].metadata["run_rows"].value == own.height
        assert "run_rows" not in mats[0].metadata
    daily = [m.step_materialization_data.materialization for m in result.get_asset_materialization_events()
             if m.step_materialization_data.materialization.asset_key.to_user_string() == "backtest_daily"]
    assert "latest" in daily[-1].metadata and "latest" not in daily[0].metadata


def test_the_capacity_sweep_has_its_own_chains_and_the_default_as_its_smallest(span):
    _, settings = span
    t = _tables(settings)
    cap = t["backtest_capacity"].sort("portfolio_value")
    assert cap["portfolio_value"].to_list() == [1e5, 1e7, 1e9]
    assert cap["config_id"].to_list() == ["default", "capacity-1e7", "capacity-1e9"]
    daily = t["backtest_daily"]
    assert set(daily.filter(pl.col("config_id") != "default")["strategy"]) == {"ml"}
    # The default chain's ml is the $1e5 point; larger books pay more impact per dollar and fill less.
    default_ml = daily.filter((pl.col("config_id") == "default") & (pl.col("strategy") == "ml"))
    assert cap["sessions"][0] == default_ml.height
    # Impact per dollar grows with size; at $1e9 the participation cap leaves most orders unfilled, so the
    # book trades (and pays) less: neither cost nor turnover need grow past the cap.
    drag = cap["annual_cost_drag"].to_list()
    assert drag[0] < drag[1]
    assert cap["unfilled_share"][0] <= cap["unfilled_share"][1] < cap["unfilled_share"][2]
    assert cap["sharpe"][2] < cap["sharpe"][0] and cap["sharpe_vs_smallest"][0] == 1.0


def test_week_by_week_runs_equal_the_span(tmp_path, base_db, span, instance):
    _, span_settings = span
    defs, settings = _env(tmp_path, base_db, "weekly")
    for week in WEEKS:
        assert run_selection(defs, SELECTION, partition_key=week, instance=instance, raise_on_error=False).success
    a, b = _tables(span_settings), _tables(settings)
    # Equal to float rounding (sums over a week's grid and over the span's add in different orders),
    # keys, dates, counts and reasons exactly.
    for table in TABLES:
        assert_frame_equal(a[table], b[table], check_exact=False, rtol=1e-9, atol=1e-9)


def test_a_non_default_configuration_needs_its_own_config_id(tmp_path, base_db, instance):
    defs, settings = _env(tmp_path, base_db, "cfg")
    bad = run_selection(defs, SELECTION[:4], partition_range=(FIRST, LAST), instance=instance, raise_on_error=False,
                        run_config={"ops": {BACKTEST_OP: {"config": {"half_spread_bps": 20.0}}}})
    assert not bad.success
    ok = run_selection(defs, SELECTION[:4], partition_range=(FIRST, LAST), instance=instance, raise_on_error=False,
                       run_config={"ops": {BACKTEST_OP: {"config": {"half_spread_bps": 20.0, "config_id": "wide",
                                                                    "strategies": ["ml"]}}}})
    assert ok.success
    run_selection(defs, SELECTION[:4], partition_range=(FIRST, LAST), instance=instance)
    with store.connect(settings.duckdb_path, read_only=True) as con:
        daily = store.read_window(con, "backtest_daily", None, None, None)
    wide = daily.filter(pl.col("config_id") == "wide")
    base = daily.filter((pl.col("config_id") == "default") & (pl.col("strategy") == "ml"))
    assert set(wide["strategy"]) == {"ml"} and wide.height == base.height
    assert wide["cost"].sum() > base["cost"].sum()  # the wider spread costs more, and the default chain survives


def test_the_kairos_backtest_command(tmp_path, base_db):
    import os
    import subprocess
    import sys

    db = tmp_path / "cli.duckdb"
    shutil.copyfile(base_db, db)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(INSTANCE_YAML, home / "dagster.yaml")
    env = {**os.environ, "KAIROS_DUCKDB_PATH": str(db), "KAIROS_START_DATE": "2025-08-04", "DAGSTER_HOME": str(home)}
    kairos = str(Path(sys.executable).parent / "kairos")
    out = subprocess.run([kairos, "backtest", "--from", "2025-12-29", "--to", "2026-02-06", "--strategies",
                          "ml,universe_ew", "--half-spread-bps", "20"], env=env, capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "config_id cli-half_spread_bps=20.0-ml+universe_ew" in out.stdout
    lines = [line.split()[0] for line in out.stdout.splitlines() if line.startswith(("ml ", "universe_ew "))]
    assert sorted(lines) == ["ml", "universe_ew"]
    with store.connect(db, read_only=True) as con:
        ids = {r[0] for r in con.execute("SELECT DISTINCT config_id FROM strategy_stats").fetchall()}
    assert ids == {"cli-half_spread_bps=20.0-ml+universe_ew"}  # the default chain was not touched
    bad = subprocess.run([kairos, "backtest", "--strategies", "ml,nope"], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert bad.returncode == 2 and "unknown nope" in bad.stderr


def test_each_weeks_target_is_the_live_rebalance_given_the_backtests_own_prior(span):
    """For several weeks: the prior rebuilt from the stored tables alone (the units after the previous
    rebalance, marked at the signal session's close, over that day's equity) fed to the rebalance asset's
    own loader and compute path gives the weights the backtest bought at the open."""
    from kairos_dagster.portfolio import weekly as live
    from kairos_dagster.portfolio.config import ML_CONFIG
    from kairos_dagster.portfolio.rebalance_weeks import HOLDINGS_SCHEMA, week_plans

    _, settings = span
    t = _tables(settings)
    ml = pl.col("strategy") == "ml"
    default = pl.col("config_id") == "default"
    positions = t["backtest_positions"].filter(ml & default)
    daily = t["backtest_daily"].filter(ml & default)
    plans = week_plans(dt.date.fromisoformat(WEEKS[1]), dt.date(2026, 2, 9))
    rebalance_dates = sorted(set(positions["date"].to_list()))
    checked = blocked = 0
    with store.connect(settings.duckdb_path, read_only=True) as con:
        for plan in plans:
            before = [d for d in rebalance_dates if d < plan.rebalance_date]
            if not before or plan.rebalance_date not in rebalance_dates:
                continue
            held = positions.filter(pl.col("date") == before[-1]).select("ticker", "units")
            marks = con.execute("SELECT ticker, closeadj AS mark FROM sep_base WHERE date = ?", [plan.signal_date]).pl()
            equity = daily.filter(pl.col("date") == plan.signal_date)["equity"][0]
            prior = (held.join(marks, on="ticker", how="left")
                     .select("ticker", (pl.col("units") * pl.col("mark") / equity).alias("weight"),
                             pl.lit(None, pl.String).alias("sector"), pl.lit(0, pl.Int64).alias("shares"),
                             pl.lit(None, pl.Float64).alias("price")).cast(HOLDINGS_SCHEMA))
            # Costs can leave cash a hair below zero: a long-only prior is then scaled to sum to 1 (Book.holdings).
            total = float(prior["weight"].sum())
            prior = prior.with_columns(pl.col("weight") / max(total, 1.0))
            inputs = live.load_inputs(con, [plan], ML_CONFIG, no_prior=True)
            inputs = type(inputs)(**{**inputs.__dict__, "prior": prior, "prior_source": "backtest book"})
            (week,) = live.compute_rebalance(inputs, [plan], ML_CONFIG)
            bought = positions.filter(pl.col("date") == plan.rebalance_date).select("ticker", "weight").sort("ticker")
            if week.blocked:
                # A week the live gates block (the fixture's last week lacks 20% of its ML alphas) is held:
                # the same units as the week before, no new names.
                assert [g.name for g in week.blocked] == ["ml_alpha_coverage"]
                units = positions.filter(pl.col("date") == plan.rebalance_date).select("ticker", "units").sort("ticker")
                assert_frame_equal(units, held.sort("ticker"))
                blocked += 1
                continue
            picks = week.result.picks.select("ticker", "weight").sort("ticker")
            assert picks["ticker"].to_list() == bought["ticker"].to_list(), plan
            assert_frame_equal(picks, bought, check_exact=False, rtol=1e-9, atol=1e-12)
            checked += 1
    assert checked >= 3 and blocked == 1
