"""The performance core on hand-computed numbers: held units across a split, total-return prices,
the picks' return, drift, shortfall and contributions; a week without fills is marked, not invented."""

import datetime as dt

import polars as pl
import pytest

from kairos_dagster.broker.performance import measure

R, N, EARLIER = dt.date(2026, 1, 16), dt.date(2026, 1, 23), dt.date(2026, 1, 9)
# ticker, date, open, close, closeadj, closeunadj (sep_base as served after everything below)
PRICES = pl.DataFrame([
    ("AAA", R, 100.0, 100.0, 100.0, 100.0), ("AAA", N, 110.0, 110.0, 110.0, 110.0),
    ("BBB", R, 50.0, 50.0, 49.0, 50.0), ("BBB", N, 45.0, 45.0, 44.1, 45.0),  # a dividend after R
    ("CCC", EARLIER, 100.0, 100.0, 100.0, 200.0),  # split 2:1 after 01-09: it traded at $200
    ("CCC", R, 105.0, 105.0, 105.0, 105.0), ("CCC", N, 126.0, 126.0, 126.0, 126.0),
], schema=["ticker", "date", "open", "close", "closeadj", "closeunadj"], orient="row")
FILLS = pl.DataFrame([
    (EARLIER, "CCC", "buy", 10.0, 200.0, "filled"),
    (R, "AAA", "buy", 10.0, 100.5, "filled"), (R, "BBB", "buy", 20.0, 49.9, "filled"),
    (R, "DDD", "buy", 5.0, None, "rejected"),
], schema=["rebalance_date", "ticker", "side", "filled_qty", "filled_avg_price", "status"], orient="row").with_columns(
    pl.col("filled_qty").fill_null(0.0))
PICKS = pl.DataFrame({"ticker": ["AAA", "BBB"], "weight": [0.30, 0.10]})


def test_the_week_measured_from_the_fills_to_the_next_fills():
    perf = measure(R, N, fills=FILLS, picks=PICKS, prices=PRICES,
                   benchmarks={"market": 0.01, "universe_ew": 0.02, "backtest": None})
    s = perf.summary.row(0, named=True)
    pos = {r["ticker"]: r for r in perf.positions.iter_rows(named=True)}
    assert pos["CCC"]["units"] == pytest.approx(20.0)  # 10 shares bought before the 2:1 split
    values = {"AAA": 1000.0, "BBB": 1000.0, "CCC": 2100.0}
    for t, v in values.items():
        assert pos[t]["weight_held"] == pytest.approx(v / 4100)
    assert pos["BBB"]["return"] == pytest.approx(-0.10)  # total return: the dividend counts
    assert s["held_return"] == pytest.approx((100 - 100 + 2100 * 0.2) / 4100)
    assert s["picks_return"] == pytest.approx(0.75 * 0.10 + 0.25 * -0.10)
    assert s["excess_vs_market"] == pytest.approx(s["held_return"] - 0.01) and s["backtest_return"] is None
    assert s["shortfall_bps"] == pytest.approx((50 * 1005 - 20 * 998) / 2003)
    assert {r["ticker"]: r["shortfall_bps"] for r in perf.orders.iter_rows(named=True)} == pytest.approx(
        {"AAA": 50.0, "BBB": -20.0})
    assert s["max_drift"] == pytest.approx(2100 / 4100) and "drift" in s["note"]
    assert perf.positions["contribution"].sum() == pytest.approx(s["held_return"])
    assert s["status"] == "executed" and s["orders_filled"] == 2


def test_a_week_without_fills_is_marked_and_missing_prices_are_named():
    none = measure(N, dt.date(2026, 1, 30), fills=FILLS, picks=PICKS, prices=PRICES, benchmarks={})
    assert none.summary["status"].item() == "not executed" and none.summary["held_return"].item() is None
    with pytest.raises(ValueError, match="no open on 2026-01-16 for held"):
        measure(R, N, fills=FILLS, picks=PICKS, prices=PRICES.filter(~((pl.col("ticker") == "CCC")
                                                                     & (pl.col("date") == R))), benchmarks={})


def test_a_holding_delisted_before_the_rebalance_stays_in_the_book_at_its_last_close(tmp_path):
    """CCC, bought earlier, stopped trading after 01-14 (its sell could never fill): measure_week values it at
    its last close, flat, and says so, instead of failing the week."""
    import duckdb

    from kairos_dagster.broker.performance import measure_week
    from kairos_dagster.warehouse import store

    last = dt.date(2026, 1, 14)
    prices = pl.concat([PRICES.filter(~((pl.col("ticker") == "CCC") & pl.col("date").is_in([R, N]))),
                        pl.DataFrame([("CCC", last, 104.0, 104.0, 104.0, 104.0)], schema=PRICES.schema, orient="row")])
    with duckdb.connect(str(tmp_path / "k.duckdb")) as con:
        store.replace_table(con, "sep_base", prices)
        store.replace_table(con, "execution_orders", FILLS)
        store.replace_table(con, "rebalance_picks", PICKS.with_columns(date=pl.lit(R)))
        perf = measure_week(con, R, tmp_path / "unused.csv")
    s = perf.summary.row(0, named=True)
    pos = {r["ticker"]: r for r in perf.positions.iter_rows(named=True)}
    assert s["status"] == "executed" and pos["CCC"]["return"] == 0.0
    assert pos["CCC"]["weight_held"] == pytest.approx(20 * 104 / (1000 + 1000 + 20 * 104))
    assert "1 holding(s) without a price on 2026-01-16 (delisted?) valued at their last close, flat: CCC (2026-01-14)" \
        in s["note"]
