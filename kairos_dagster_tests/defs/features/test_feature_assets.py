"""The feature graph through the real dagster executor on a small synthetic market.

Proves at the asset level what the pure tests prove per function: a week computed from history that
ends at that week equals the same week from a longer, later run (no look-ahead), a single-run backfill
equals week-by-week runs, and every table holds exactly the universe rows of its window.
"""

import polars as pl
import pytest
from dagster import AssetSelection, DagsterInstance

from kairos_dagster.definitions import build_definitions
from kairos_dagster.defs.features.automation import FEATURE_GROUPS
from kairos_dagster.instance.runner import run_selection
from kairos_dagster.settings import load_settings
from kairos_dagster.warehouse import store

N_TICKERS = 50
SYNC = AssetSelection.groups("sync")
FEATURES = AssetSelection.groups(*[g for g in FEATURE_GROUPS if not g.startswith(("phase6", "phase7"))])
FEATURES_NO_ML = FEATURES - AssetSelection.groups("reports")
MARKET = AssetSelection.assets("universe", "market_returns")
HISTORY = ("2022-01-03", "2023-10-30")  # sync range (weeks)
W = "2023-10-30"  # the week under test
LATER = "2023-11-27"


def _defs(path):
    # One feed snapshot (served on the evening of 2024-01-02) for both warehouses, whatever the day the test runs.
    return build_definitions(load_settings({"KAIROS_DUCKDB_PATH": str(path), "KAIROS_SYNTHETIC_TICKERS": str(N_TICKERS),
                                            "KAIROS_AS_OF": "2024-01-03"}))


def _tables(path) -> dict[str, pl.DataFrame]:
    out = {}
    with store.connect(path, read_only=True) as con:
        names = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        for t in names:
            if t.startswith(("feat_", "alpha_", "universe", "sep_base_academic", "regime_", "market_returns")):
                out[t] = store.read_window(con, t, None, None, None)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Warehouse A: data through week W only. Warehouse B: data through LATER, features W..LATER in one run."""
    root = tmp_path_factory.mktemp("features")
    with DagsterInstance.ephemeral() as instance:
        a, b = root / "a.duckdb", root / "b.duckdb"
        defs_a, defs_b = _defs(a), _defs(b)
        assert run_selection(defs_a, SYNC, partition_range=HISTORY, instance=instance).success
        # The universe and the market over the whole history (the regime's windows read it), everything
        # else for the last weeks.
        market_a = run_selection(defs_a, MARKET, partition_range=HISTORY, instance=instance)
        assert market_a.success
        assert run_selection(defs_a, FEATURES_NO_ML, partition_range=("2023-09-04", W), instance=instance).success
        assert run_selection(defs_b, SYNC, partition_range=(HISTORY[0], LATER), instance=instance).success
        assert run_selection(defs_b, MARKET, partition_range=HISTORY, instance=instance).success
        result_b = run_selection(defs_b, FEATURES, partition_range=("2023-09-04", LATER), instance=instance)
        assert result_b.success
        yield a, b, result_b, defs_b, instance, market_a


def assert_frames_close(a: pl.DataFrame, b: pl.DataFrame, name: str, rtol: float = 1e-9) -> None:
    """Same keys, same nulls, same non-float values; floats equal to `rtol` relative.

    polars' rolling kernels split long columns into chunks whose boundaries depend on the column length,
    so sums over a window can differ in the last bit (~1e-16 relative) between runs that loaded more or
    fewer rows; anything above float rounding is a real dependence on later data and fails here.
    """
    assert a.columns == b.columns and a.height == b.height, name
    for c in a.columns:
        x, y = a.get_column(c), b.get_column(c)
        assert (x.is_null() == y.is_null()).all(), f"{name}.{c}: nulls differ"
        if x.dtype.is_float():
            xv, yv = x.drop_nulls(), y.drop_nulls()
            bad = (xv - yv).abs() > (yv.abs().clip(lower_bound=1.0) * rtol)
            assert not bad.any(), f"{name}.{c}: differs beyond {rtol} relative"
        else:
            assert x.equals(y), f"{name}.{c}: differs"


def _week(df: pl.DataFrame, key: str) -> pl.DataFrame:
    import datetime as dt

    start = dt.date.fromisoformat(key)
    col = "date"
    return df.filter((pl.col(col) >= start) & (pl.col(col) < start + dt.timedelta(days=7)))


def test_week_w_does_not_change_when_later_data_arrives(built):
    a, b, *_ = built
    ta, tb = _tables(a), _tables(b)
    assert {"universe", "feat_trend", "feat_value_v2", "alpha_composite_v8", "regime_history_academic"} <= set(ta)
    for name, frame in ta.items():
        if name == "feat_targets":  # the one table that looks ahead: its horizon fills in later
            continue
        wa, wb = _week(frame, W), _week(tb[name], W)
        assert wa.height > 0, name
        assert_frames_close(wa, wb, name)


def test_targets_fill_in_later_and_are_null_when_incomplete(built):
    a, b, *_ = built
    ta, tb = _tables(a)["feat_targets"], _tables(b)["feat_targets"]
    wa, wb = _week(ta, W), _week(tb, W)
    assert wa.get_column("ret_21d_f").null_count() == wa.height  # nothing after W is known in A
    assert wb.get_column("ret_5d_f").null_count() < wb.height  # in B the horizon has arrived


def test_every_table_holds_exactly_the_universe_rows(built):
    _, b, result, *_ = built
    tables = _tables(b)
    universe = tables["universe"].select("ticker", "date")
    for name, frame in tables.items():
        if name in {"universe", "regime_history_academic", "market_returns"}:
            continue
        keys = frame.select("ticker", "date")
        assert keys.is_unique().all(), name
        assert keys.sort(["ticker", "date"]).equals(
            universe.filter(pl.col("date") >= keys.get_column("date").min()).sort(["ticker", "date"])
        ), name
    failed = [(e.asset_key.to_user_string(), e.check_name) for e in result.get_asset_check_evaluations()
              if not e.passed and e.check_name != "null_rate_after_warmup"]
    assert failed == []


def test_universe_and_market_checks_pass_from_the_first_stored_week(built):
    """The first weeks of stored history have no 20-session ADV yet: their sessions are exempt (and
    counted), every later session must have a universe and a market return."""
    *_, market_a = built
    evals = {(e.asset_key.to_user_string(), e.check_name): e for e in market_a.get_asset_check_evaluations()}
    for key in [("universe", "every_session_covered"), ("market_returns", "one_row_per_session")]:
        ev = evals[key]
        assert ev.passed, (key, ev.metadata)
        assert ev.metadata["warmup_sessions_exempt"].value > 0  # the run started at the first stored week
    universe = _tables(built[0])["universe"]
    first_covered = universe["date"].min()
    assert evals[("universe", "every_session_covered")].metadata["warmup_sessions_exempt"].value == 19
    assert first_covered.isoformat() > HISTORY[0]


def test_single_run_equals_week_by_week_for_recent_weeks(built, tmp_path):
    _, b, _, defs_b, instance, _ = built
    import shutil

    c = tmp_path / "c.duckdb"
    shutil.copy(b, c)
    defs_c = _defs(c)
    for week in ("2023-11-20", "2023-11-27"):
        assert run_selection(defs_c, FEATURES_NO_ML, partition_key=week, instance=instance).success
    tb, tc = _tables(b), _tables(c)
    for name in tb:
        assert_frames_close(tb[name], tc[name], name)


def test_factor_report_metadata(built):
    _, b, result, *_ = built
    mats = result.asset_materializations_for_node("factor_ic")
    # one event per week; the rich metadata is on the run's last week, the others point to it
    assert len(mats) > 1 and "summary_to_date" in mats[-1].metadata
    assert mats[-1].partition == max(m.partition for m in mats)
    assert "summary_to_date" not in mats[0].metadata
    assert mats[0].metadata["rich_metadata_on"].value.startswith(f"week {mats[-1].partition}")
    ic = _tables(b)["feat_targets"]
    assert ic.height > 0


def test_each_week_of_a_range_run_carries_its_own_numbers(built):
    """In the single-run backfill of B, every week's event says that week's rows, dates and null rate,
    as stored; the preview (on the last week) shows the run's newest rows."""
    import datetime as dt

    _, b, result, *_ = built
    stored = _tables(b)["feat_trend"]
    mats = {m.partition: m.metadata for m in result.asset_materializations_for_node("feat_trend")}
    assert len(mats) > 4
    counts = set()
    for week, md in mats.items():
        rows = _week(stored, week)
        assert md["dagster/row_count"].value == md["rows"].value == rows.height, week
        counts.add(rows.height)
        start = dt.date.fromisoformat(week)
        assert start <= dt.date.fromisoformat(md["first_date"].value) <= dt.date.fromisoformat(md["last_date"].value) \
            < start + dt.timedelta(days=7)
        assert 0.0 <= md["max_null_rate"].value <= 1.0
    assert len(counts) > 1  # a real weekly series, not one number copied into every week
    last = mats[max(mats)]
    assert last["run_rows"].value == sum(md["rows"].value for md in mats.values())
    newest = str(stored.get_column("date").max())
    assert newest in last["preview"].value and str(stored.get_column("date").min()) not in last["preview"].value
