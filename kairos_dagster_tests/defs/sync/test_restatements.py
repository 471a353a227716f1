"""Splits, dividends and corrections in the feed, through the real sync and feature assets and the
restatement sensor: a warehouse synced week by week, each week as the feed served it that Friday
evening, ends equal to a fresh sync as of the last Friday, and so do its features.

The 150-ticker market (seed 7) has, in these weeks: a bad print of WQAE on 2021-08-27 (served that
evening) corrected on 2021-09-01; a 3:1 split of AAMEG (HWUY until 2008) on 2021-08-27, VCPDZ (MAFI until
2020-11) 3:1 and SQRF 1:10 on 2021-09-20; and dividends."""

import datetime as dt

import polars as pl
import pytest
from dagster import AssetSelection, DagsterInstance, build_sensor_context

from kairos_dagster.defs.features.automation import REBUILD_GROUPS
from kairos_dagster.defs.tags import RANGE_END_TAG, RANGE_START_TAG
from kairos_dagster.instance.runner import run_selection
from kairos_dagster.resources.warehouse import DuckDBWarehouse
from kairos_dagster.warehouse import store
from kairos_dagster_tests.fixtures.helpers import defs_as_of, materializations, saturday_after

SYNC = AssetSelection.groups("sync")
FEATURES = AssetSelection.assets("universe", "market_returns", "feat_price_action", "feat_trend",
                                 "feat_vol_volatility")
FEATURE_TABLES = ("universe", "feat_price_action", "feat_trend", "feat_vol_volatility")
HISTORY = ("2021-03-01", "2021-08-23")  # synced as of Friday 2021-08-27
FEATURE_WEEKS = ("2021-08-02", "2021-08-23")
LATER_WEEKS = ("2021-08-30", "2021-09-06", "2021-09-13", "2021-09-20")
LAST_FRIDAY_MORNING_AFTER = "2021-09-25"


def _defs(path, as_of: str):
    return defs_as_of(path, as_of, start=HISTORY[0])


def _read(path, table: str) -> pl.DataFrame:
    with store.connect(path, read_only=True) as con:
        return con.execute(f"SELECT * FROM {table} ORDER BY ticker, date").pl()


def _sensor(defs, path, instance, cursor=None):
    sensor = defs.get_sensor_def("restatement_sensor")
    ctx = build_sensor_context(instance=instance, cursor=cursor, repository_def=defs.get_repository_def(),
                               resources={"warehouse": DuckDBWarehouse(path=str(path))})
    return sensor.evaluate_tick(ctx)


def _worst_relative_difference(a: pl.DataFrame, b: pl.DataFrame) -> dict[str, float]:
    """Per float column, the largest relative difference between a and b on their common keys, and
    inf where one is null and the other is not."""
    assert a.select("ticker", "date").equals(b.select("ticker", "date"))
    out = {}
    for c in a.columns:
        if a.schema[c] != pl.Float64:
            continue
        x, y = a.get_column(c), b.get_column(c)
        if not (x.is_null() == y.is_null()).all():
            out[c] = float("inf")
            continue
        scale = pl.max_horizontal(x.abs(), y.abs(), pl.lit(1e-300))
        d = pl.DataFrame({"x": x, "y": y}).select(((pl.col("x") - pl.col("y")).abs() / scale).max()).item()
        out[c] = d or 0.0
    return out


@pytest.fixture(scope="module")
def warehouses(tmp_path_factory):
    """The incremental warehouse (with what the sensor asked and what each sync reported) and the fresh one."""
    root = tmp_path_factory.mktemp("restatements")
    inc, fresh = root / "inc.duckdb", root / "fresh.duckdb"
    seen: dict = {"reports": {}}
    with DagsterInstance.ephemeral() as instance:
        defs = _defs(inc, "2021-08-28")
        assert run_selection(defs, SYNC, partition_range=HISTORY, instance=instance).success
        assert run_selection(defs, FEATURES, partition_range=FEATURE_WEEKS, instance=instance).success
        seen["bad_print"] = _read(inc, "sep_base").filter(
            (pl.col("ticker") == "WQAE") & (pl.col("date") == dt.date(2021, 8, 27)))
        tick = _sensor(defs, inc, instance)
        assert not tick.run_requests and "no corrected source rows" in tick.skip_message  # nothing restated yet
        cursor = None
        for week in LATER_WEEKS:
            defs = _defs(inc, saturday_after(week))
            before = _read(inc, "sep_base")
            result = run_selection(defs, SYNC, partition_key=week, instance=instance)
            assert result.success
            seen["reports"][week] = materializations(result, "sep_base")[0].metadata
            seen.setdefault("runs", {})[week] = result.run_id
            seen.setdefault("before", {})[week] = before
            seen.setdefault("after", {})[week] = _read(inc, "sep_base")
            assert run_selection(defs, FEATURES, partition_key=week, instance=instance).success
            tick = _sensor(defs, inc, instance, cursor)
            if tick.run_requests:
                (request,) = tick.run_requests
                seen.setdefault("requests", []).append((week, request))
                seen["stale"] = {t: _read(inc, t) for t in FEATURE_TABLES}
                weeks = (request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG])
                assert run_selection(defs, AssetSelection.groups(*REBUILD_GROUPS) & FEATURES.upstream(),
                                     partition_range=weeks, instance=instance).success
            cursor = tick.cursor
        defs = _defs(fresh, LAST_FRIDAY_MORNING_AFTER)
        assert run_selection(defs, SYNC, partition_range=(HISTORY[0], LATER_WEEKS[-1]), instance=instance).success
        assert run_selection(defs, FEATURES, partition_range=(FEATURE_WEEKS[0], LATER_WEEKS[-1]),
                             instance=instance).success
    return inc, fresh, seen


def test_the_synced_tables_equal_a_fresh_sync_as_of_the_last_day(warehouses):
    inc, fresh, _ = warehouses
    for table in ("sep_base", "daily", "sf1", "tickers"):
        with store.connect(inc, read_only=True) as a, store.connect(fresh, read_only=True) as b:
            assert a.execute(f"SELECT * FROM {table} ORDER BY ALL").pl().equals(
                b.execute(f"SELECT * FROM {table} ORDER BY ALL").pl()), table


def test_each_sync_reports_and_rewrites_exactly_the_restated_rows(warehouses):
    inc, _, seen = warehouses
    reports = seen["reports"]
    assert reports["2021-08-30"]["restated_rows_by_kind"].value.get("correction") == 1
    assert reports["2021-09-20"]["restated_rows_by_kind"].value.get("split", 0) > 0
    with store.connect(inc, read_only=True) as con:
        log = con.execute("SELECT * FROM sync_restatements WHERE table_name = 'sep_base'").pl()
    splits = log.filter(pl.col("kind") == "split")
    assert set(splits.get_column("ticker")) >= {"VCPDZ", "SQRF"}
    factors = dict(splits.select("ticker", "factor").iter_rows())
    assert factors["VCPDZ"] == pytest.approx(3.0) and factors["SQRF"] == pytest.approx(0.1)
    assert log.filter(pl.col("kind") == "correction").select("ticker", "first_date").rows() == [
        ("WQAE", dt.date(2021, 8, 27))]
    # Outside the synced week, only the rows of restated tickers changed, and only those the log names.
    for week in LATER_WEEKS:
        start = dt.date.fromisoformat(week)
        old = seen["before"][week]
        new = seen["after"][week].filter(pl.col("date") < start)
        changed = new.join(old, on=new.columns, how="anti", nulls_equal=True)
        named = log.filter(pl.col("run_id") == seen["runs"][week]).get_column("ticker")
        assert set(changed.get_column("ticker")) == set(named), week
        n = int(reports[week]["restated_rows"].value)
        assert changed.height == n, week


def test_a_split_day_return_is_the_true_adjusted_return(warehouses):
    inc, _, _ = warehouses
    sep = _read(inc, "sep_base").filter(pl.col("ticker").is_in(["VCPDZ", "SQRF"]))
    day = sep.filter(pl.col("date").is_between(dt.date(2021, 9, 17), dt.date(2021, 9, 20)))
    for ticker, rows in day.group_by("ticker"):
        close = rows.sort("date").get_column("close").to_list()
        assert abs(close[1] / close[0] - 1) < 0.3, ticker  # split-adjusted: no -67% (3:1) or +900% (1:10)
    feats = _read(inc, "feat_price_action").filter(
        pl.col("ticker").is_in(["VCPDZ", "SQRF"]) & (pl.col("date") == dt.date(2021, 9, 20)))
    assert feats.height and (feats.get_column("ret_1d").abs() < 0.3).all()


def test_the_correction_is_stored_and_the_features_that_read_it_are_rebuilt(warehouses):
    inc, fresh, seen = warehouses
    bad = seen["bad_print"]
    fixed = _read(inc, "sep_base").filter((pl.col("ticker") == "WQAE") & (pl.col("date") == dt.date(2021, 8, 27)))
    assert abs(bad["close"].item() / fixed["close"].item() - 1) > 0.01
    assert fixed["lastupdated"].item() == dt.date(2021, 9, 1)
    (week, request), = seen["requests"]  # one rebuild: the correction (splits and dividends need none)
    assert week == "2021-08-30"
    assert request.tags[RANGE_START_TAG] == FEATURE_WEEKS[0]  # 20 sessions of forward targets, clipped
    assert request.tags[RANGE_END_TAG] == "2021-08-23"
    # Before the rebuild, WQAE's features of 2021-08-27 still read the bad print: the rebuild is needed.
    stale = seen["stale"]["feat_price_action"].filter(
        (pl.col("ticker") == "WQAE") & (pl.col("date") == dt.date(2021, 8, 27)))
    now = _read(fresh, "feat_price_action").filter(
        (pl.col("ticker") == "WQAE") & (pl.col("date") == dt.date(2021, 8, 27)))
    assert abs(stale["ret_1d"].item() - now["ret_1d"].item()) > 0.01


def test_every_feature_week_equals_a_fresh_build_as_of_the_last_day(warehouses):
    inc, fresh, _ = warehouses
    for table in FEATURE_TABLES:
        a, b = _read(inc, table), _read(fresh, table)
        worst = _worst_relative_difference(a, b)
        assert max(worst.values()) <= 1e-9, (table, {k: v for k, v in worst.items() if v > 1e-9})
