"""Documented feature warm-ups (features/warmup): nulls past them are found, rows inside them counted."""

import datetime as dt

import duckdb
import polars as pl

from kairos_dagster import calendar
from kairos_dagster.features import warmup

FRIDAY = dt.date(2026, 3, 6)


def _warehouse(sessions: int, young_sessions: int, market_lag: int) -> duckdb.DuckDBPyConnection:
    """sep_base: OLD has `sessions` sessions up to FRIDAY, YOUNG the last `young_sessions`; the market has
    returns from the `market_lag`-th session on."""
    days = calendar.sessions_between(dt.date(2020, 1, 1), FRIDAY)[-sessions:]
    rows = [("OLD", d) for d in days] + [("YOUNG", d) for d in days[-young_sessions:]]
    con = duckdb.connect()
    sep = pl.DataFrame(rows, schema=["ticker", "date"], orient="row")
    market = pl.DataFrame({"date": days[market_lag:], "mkt_ret": 0.0})
    con.register("sep_df", sep)
    con.register("mk_df", market)
    con.execute("CREATE TABLE sep_base AS SELECT * FROM sep_df")
    con.execute("CREATE TABLE market_returns AS SELECT * FROM mk_df")
    return con


def test_a_null_past_the_warmup_is_found_and_a_young_listing_is_counted_not_failed():
    con = _warehouse(300, 30, market_lag=20)
    index = warmup.history_index(con, [FRIDAY])
    assert dict(zip(index["ticker"], index["n_ticker"], strict=True)) == {"OLD": 299, "YOUNG": 29}
    assert index["n_market"].to_list() == [279, 279]
    warmups = {"ret_21d": (21, False), "adx_14": (621, False), "beta_252": (252, True), "ret_5d": (5, False)}
    frame = pl.DataFrame({"ticker": ["OLD", "YOUNG"], "date": [FRIDAY, FRIDAY], "ret_21d": [None, 0.1],
                          "adx_14": [None, None], "beta_252": [None, None], "ret_5d": [0.01, None]})
    got = {r["feature"]: r for r in warmup.warmup_nulls(frame, index, warmups).iter_rows(named=True)}
    assert got["ret_21d"]["nulls_past_warmup"] == 1 and got["ret_21d"]["rows_in_warmup"] == 0  # OLD: a real gap
    assert got["adx_14"]["nulls_past_warmup"] == 0 and got["adx_14"]["rows_in_warmup"] == 2  # nobody has 621
    assert got["beta_252"]["nulls_past_warmup"] == 1  # OLD: 299 sessions, the market 279: past 252
    assert got["beta_252"]["rows_in_warmup"] == 1  # YOUNG
    assert got["ret_5d"]["nulls_past_warmup"] == 1  # YOUNG has 29 sessions: its ret_5d must exist


def test_the_market_history_delays_only_the_features_that_read_it():
    con = _warehouse(300, 300, market_lag=100)  # the market's returns start 100 sessions in
    index = warmup.history_index(con, [FRIDAY])
    frame = pl.DataFrame({"ticker": ["OLD", "YOUNG"], "date": [FRIDAY, FRIDAY], "beta_252": [None, None],
                          "dist_high_252": [None, 1.0]})
    got = {r["feature"]: r for r in warmup.warmup_nulls(
        frame, index, {"beta_252": (252, True), "dist_high_252": (251, False)}).iter_rows(named=True)}
    assert got["beta_252"]["nulls_past_warmup"] == 0 and got["beta_252"]["rows_in_warmup"] == 2
    assert got["dist_high_252"]["nulls_past_warmup"] == 1


def test_every_technical_feature_has_its_warmup_and_the_longest_is_the_trend_tables():
    w = warmup.feature_warmups()
    assert len(w) >= 100 and w["adx_14"][0] == warmup.longest_warmup_sessions() and w["beta_252"][1]
    assert not w["ret_1d"][1] and "ret_5d_f" not in w


def test_a_week_fails_on_its_late_nulls_and_counts_its_warming_rows():
    con = _warehouse(300, 30, market_lag=20)
    frame = pl.DataFrame({"ticker": ["OLD", "YOUNG"], "date": [FRIDAY, FRIDAY], "ret_21d": [None, 0.1],
                          "adx_14": [None, None]})
    nulls = warmup.warmup_nulls(frame, warmup.history_index(con, [FRIDAY]),
                                {"ret_21d": (21, False), "adx_14": (621, False)})
    week, empty = warmup.week_verdicts(nulls, [dt.date(2026, 3, 2), dt.date(2026, 3, 9)])
    assert not week.passed and week.nulls_past_warmup == 1 and week.late["feature"].to_list() == ["ret_21d"]
    assert week.rows_in_warmup_max == 2 and "ret_21d (1)" in week.text()
    assert empty.passed and empty.text() == "no rebalance date in the week"
