"""A ticker change in the feed, through the real tickers, sync and feature assets, the restatement
sensor, the prior-holdings reader and the simulated broker: the company keeps its permaticker, every
table is re-keyed to the new symbol in place, and the warehouse ends equal to a fresh build as of the
last day. Nothing is rebuilt, sold or bought because of it.

The 150-ticker market (seed 7): DIWB (permaticker 100,019) trades as BUQWU from Wednesday 2021-12-22."""

import datetime as dt

import polars as pl
import pytest
from dagster import AssetSelection, DagsterInstance, build_sensor_context

from kairos_dagster.broker.base import OrderRequest
from kairos_dagster.broker.simulated import SimulatedBroker
from kairos_dagster.constants import NEW_YORK as NY
from kairos_dagster.instance.runner import run_selection
from kairos_dagster.portfolio.weekly import load_prior
from kairos_dagster.resources.warehouse import DuckDBWarehouse
from kairos_dagster.warehouse import store
from kairos_dagster_tests.fixtures.helpers import defs_as_of, materializations, saturday_after

SYNC = AssetSelection.groups("sync")
FEATURES = AssetSelection.assets("universe", "market_returns", "feat_price_action", "feat_trend")
SYNCED = ("tickers", "sep_base", "daily", "sf1", "sf2", "sf3")
FEATURE_TABLES = ("universe", "feat_price_action", "feat_trend")
HISTORY = ("2021-06-07", "2021-12-13")  # synced as of Saturday 2021-12-18
FEATURE_WEEKS = ("2021-11-29", "2021-12-13")
LATER_WEEKS = ("2021-12-20", "2021-12-27")  # Christmas Eve closed
OLD, NEW, PERMATICKER = "DIWB", "BUQWU", 100_019


def _defs(path, as_of: str):
    return defs_as_of(path, as_of, start=HISTORY[0])


def _all(path, table: str) -> pl.DataFrame:
    with store.connect(path, read_only=True) as con:
        return con.execute(f"SELECT * FROM {table} ORDER BY ALL").pl()


class _Clock:
    def __init__(self, t: dt.datetime) -> None:
        self.t = t

    def __call__(self) -> dt.datetime:
        return self.t


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("ticker_changes")
    inc, fresh = root / "inc.duckdb", root / "fresh.duckdb"
    seen: dict = {}
    picks = root / "picks.csv"
    with DagsterInstance.ephemeral() as instance:
        defs = _defs(inc, "2021-12-18")
        assert run_selection(defs, SYNC, partition_range=HISTORY, instance=instance).success
        assert run_selection(defs, FEATURES, partition_range=FEATURE_WEEKS, instance=instance).success
        # Before the change: a picks.csv and a simulated account hold the company under its old symbol,
        # and an order for it is still open.
        pl.DataFrame({"rank": [1, 2], "ticker": [OLD, "AAMEG"], "weight": [0.5, 0.5], "sector": ["Technology"] * 2,
                      "alpha_z": [1.0, 0.5], "vol_blend": [0.3, 0.3], "adv_20": [1e6, 1e6], "price": [20.0, 30.0],
                      "target_value": [200.0, 600.0], "shares": [10, 20]}).write_csv(picks)
        clock = _Clock(dt.datetime(2021, 12, 16, 8, 0, tzinfo=NY))
        with SimulatedBroker(inc, clock=clock) as broker:
            broker.submit(OrderRequest(OLD, 7, "buy", "day", "held"))
            clock.t = dt.datetime(2021, 12, 17, 17, 0, tzinfo=NY)
            assert {p.symbol: p.qty for p in broker.positions()} == {OLD: 7}
            broker.submit(OrderRequest(OLD, 3, "buy", "day", "open"))  # fills on 12-20: no price held yet
        seen["before"] = {t: _all(inc, t) for t in (*SYNCED, *FEATURE_TABLES)}
        sensor_cursor = None
        for week in LATER_WEEKS:
            defs = _defs(inc, saturday_after(week))
            result = run_selection(defs, SYNC, partition_key=week, instance=instance)
            assert result.success
            seen.setdefault("tickers_md", {})[week] = materializations(result, "tickers")[0].metadata
            seen.setdefault("sep_md", {})[week] = materializations(result, "sep_base")[0].metadata
            assert run_selection(defs, FEATURES, partition_key=week, instance=instance).success
            sensor = defs.get_sensor_def("restatement_sensor")
            ctx = build_sensor_context(instance=instance, cursor=sensor_cursor, repository_def=defs.get_repository_def(),
                                       resources={"warehouse": DuckDBWarehouse(path=str(inc))})
            tick = sensor.evaluate_tick(ctx)
            seen.setdefault("ticks", []).append(tick)
            sensor_cursor = tick.cursor
        clock.t = dt.datetime(2021, 12, 29, 12, 0, tzinfo=NY)
        with SimulatedBroker(inc, clock=clock) as broker:
            seen["positions"] = {p.symbol: p.qty for p in broker.positions()}
            seen["open_order"] = broker.order_by_client_id("open")
        with store.connect(inc) as con:
            seen["prior"] = load_prior(con, dt.date(2021, 12, 31), str(picks), False)[0]
        defs = _defs(fresh, saturday_after(LATER_WEEKS[-1]))
        assert run_selection(defs, SYNC, partition_range=(HISTORY[0], LATER_WEEKS[-1]), instance=instance).success
        assert run_selection(defs, FEATURES, partition_range=(FEATURE_WEEKS[0], LATER_WEEKS[-1]),
                             instance=instance).success
    return inc, fresh, seen


def test_the_synced_tables_equal_a_fresh_sync_under_the_new_symbol(built):
    inc, fresh, seen = built
    for table in SYNCED:
        a, b = _all(inc, table), _all(fresh, table)
        assert a.equals(b), table
        assert OLD not in a["ticker"], table
        if table in ("tickers", "sep_base", "daily"):
            assert OLD in seen["before"][table]["ticker"] and NEW in a["ticker"], table  # it was held
    tick = _all(inc, "tickers").filter(pl.col("permaticker") == PERMATICKER)
    assert set(tick["ticker"]) == {NEW} and set(tick["relatedtickers"]) == {OLD}


def test_the_change_is_logged_per_table_and_reported_once(built):
    inc, _, seen = built
    md = seen["tickers_md"]
    assert md[LATER_WEEKS[0]]["ticker_changes"].value == 1 and md[LATER_WEEKS[1]]["ticker_changes"].value == 0
    assert NEW in md[LATER_WEEKS[0]]["ticker_changes_applied"].value
    log = _all(inc, "ticker_changes")
    assert set(log.select("permaticker", "old_ticker", "new_ticker").unique().rows()) == {(PERMATICKER, OLD, NEW)}
    before = seen["before"]
    rows = dict(log.select("table_name", "rows").iter_rows())
    for table in (*SYNCED[1:], *FEATURE_TABLES):
        assert rows.get(table, 0) == before[table].filter(pl.col("ticker") == OLD).height, table
    assert rows["sep_base"] > 0 and rows["feat_trend"] > 0
    assert "sim_positions" not in rows  # the broker re-keys its own book


def test_the_feeds_rewritten_rows_are_restamps_and_rebuild_nothing(built):
    inc, _, seen = built
    by_kind = seen["sep_md"][LATER_WEEKS[0]]["restated_rows_by_kind"].value
    held = seen["before"]["sep_base"].filter(pl.col("ticker") == OLD).height
    assert by_kind.get("restamped") == held  # every re-keyed row: only lastupdated moved
    log = _all(inc, "sync_restatements").filter(pl.col("ticker") == NEW)
    assert set(log["kind"]) == {"restamped"}
    assert all(not t.run_requests for t in seen["ticks"])  # no feature rebuild for a relabelling


def test_every_feature_week_equals_a_fresh_build(built):
    inc, fresh, seen = built
    for table in FEATURE_TABLES:
        a, b = _all(inc, table), _all(fresh, table)
        assert a.select("ticker", "date").equals(b.select("ticker", "date")), table
        floats = [c for c, t in a.schema.items() if t == pl.Float64]
        for c in floats:
            x, y = a.get_column(c), b.get_column(c)
            assert (x.is_null() == y.is_null()).all(), (table, c)
            worst = pl.DataFrame({"x": x, "y": y}).select(
                ((pl.col("x") - pl.col("y")).abs() / pl.max_horizontal(pl.col("x").abs(), pl.col("y").abs(),
                                                                       pl.lit(1e-300))).max()).item()
            assert worst is None or worst <= 1e-9, (table, c, worst)
        # the re-keyed weeks before the change are the same rows as before, under the new symbol
        old = seen["before"][table].filter(pl.col("ticker") == OLD).drop("ticker")
        assert old.height and a.filter(pl.col("ticker") == NEW).filter(
            pl.col("date") < dt.date.fromisoformat(LATER_WEEKS[0])).drop("ticker").equals(old), table


def test_holdings_follow_the_company_not_the_symbol(built):
    _, _, seen = built
    assert seen["positions"] == {NEW: 7}  # the simulated account re-keyed its position
    order = seen["open_order"]
    assert order.status == "canceled" and OLD in order.reason and NEW in order.reason
    prior = seen["prior"]  # a picks.csv written before the change reads as the current symbol
    assert set(prior["ticker"]) == {NEW, "AAMEG"}
    assert dict(prior.select("ticker", "shares").iter_rows())[NEW] == 10
