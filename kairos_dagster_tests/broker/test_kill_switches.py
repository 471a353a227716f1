"""The kill switches as pure functions (each tripped and not, armed and not) and each broker's session change:
the simulated account from sep_base, Alpaca's portfolio history through alpaca-py against the local fake."""

import datetime as dt
import math

import duckdb
import polars as pl
import pytest

from kairos_dagster.broker.alpaca import AlpacaBroker, AlpacaCredentials
from kairos_dagster.broker.base import SessionChange
from kairos_dagster.broker.kill_switches import KillSwitchConfig, evaluate, live_sharpe
from kairos_dagster.broker.simulated import SimulatedBroker
from kairos_dagster.constants import NEW_YORK as NY
from kairos_dagster_tests.fixtures.alpaca_server import FakeAlpaca
from kairos_dagster_tests.fixtures.execution_setup import build_sep

CFG = KillSwitchConfig(live_sharpe_weeks=4)


def track(returns, backtest=None):
    dates = [dt.date(2025, 10, 3) + dt.timedelta(weeks=i) for i in range(len(returns))]
    return pl.DataFrame({"date": dates, "held_return": returns,
                         "backtest_return": backtest if backtest is not None else [None] * len(returns)},
                        schema={"date": pl.Date, "held_return": pl.Float64, "backtest_return": pl.Float64})


def by_switch(frame):
    return {r["switch"]: r for r in frame.iter_rows(named=True)}


def test_daily_loss_trips_beyond_the_limit_and_is_not_armed_without_two_closes():
    day = dt.date(2026, 1, 15)
    s = by_switch(evaluate(CFG, session=SessionChange(day, 100_000.0, 96_900.0), track=track([])))["max_daily_loss"]
    assert s["armed"] and s["tripped"] and s["blocking"] and s["value"] == pytest.approx(0.031)
    assert "change over the session of 2026-01-15: -3.10%" in s["detail"]
    s = by_switch(evaluate(CFG, session=SessionChange(day, 100_000.0, 97_100.0), track=track([])))["max_daily_loss"]
    assert s["armed"] and not s["tripped"]
    s = by_switch(evaluate(CFG, session=SessionChange(day, 100_000.0, 150_000.0), track=track([])))["max_daily_loss"]
    assert not s["tripped"]  # a gain is no loss
    s = by_switch(evaluate(CFG, session=None, track=track([])))["max_daily_loss"]
    assert not s["armed"] and not s["tripped"] and "no two session closes" in s["detail"]


def test_live_sharpe_is_armed_only_once_n_weeks_are_tracked_then_trips_below_the_minimum():
    losing = [-0.01, 0.002, -0.015, 0.001, -0.008]
    s = by_switch(evaluate(CFG, session=None, track=track(losing[:3])))["min_live_sharpe"]
    assert not s["armed"] and not s["tripped"] and s["detail"] == "not armed: 3 of 4 tracked rebalances"
    s = by_switch(evaluate(CFG, session=None, track=track(losing)))["min_live_sharpe"]
    last4 = pl.Series(losing[1:])
    assert s["armed"] and s["tripped"] and s["value"] == pytest.approx(
        last4.mean() / last4.std() * math.sqrt(52))  # the trailing 4, not all 5
    winning = [0.01, 0.004, 0.012, -0.002]
    s = by_switch(evaluate(CFG, session=None, track=track(winning)))["min_live_sharpe"]
    assert s["armed"] and not s["tripped"] and s["value"] > 0.5
    # Weeks not measured (held_return null) do not count toward N.
    s = by_switch(evaluate(CFG, session=None, track=track([0.01, None, 0.004, 0.012])))["min_live_sharpe"]
    assert not s["armed"]
    assert live_sharpe(pl.Series([0.01, 0.01, 0.01])) is None  # flat: no Sharpe, and a flat track trips
    assert by_switch(evaluate(CFG, session=None, track=track([0.0] * 4)))["min_live_sharpe"]["tripped"]


def test_live_vs_backtest_gap_warns_and_never_blocks():
    live, back = [0.01] * 4, [0.03] * 4  # live 4.06% vs backtest 12.55%
    s = by_switch(evaluate(CFG, session=None, track=track(live, back)))["live_vs_backtest_gap"]
    assert s["armed"] and s["tripped"] and not s["blocking"]
    assert s["value"] == pytest.approx(1.01 ** 4 - 1.03 ** 4)
    s = by_switch(evaluate(CFG, session=None, track=track(live, [0.011] * 4)))["live_vs_backtest_gap"]
    assert s["armed"] and not s["tripped"]
    s = by_switch(evaluate(CFG, session=None, track=track(live, [0.03, None, None, 0.03])))["live_vs_backtest_gap"]
    assert not s["armed"] and "2 of 4 tracked weeks" in s["detail"]


def test_an_override_excuses_only_a_tripped_switch_and_disabled_switches_never_trip():
    loss = SessionChange(dt.date(2026, 1, 15), 100_000.0, 90_000.0)
    s = by_switch(evaluate(CFG, session=loss, track=track([]), overrides={"max_daily_loss": "carol"}))
    assert s["max_daily_loss"]["tripped"] and s["max_daily_loss"]["overridden_by"] == "carol"
    assert "(overridden by carol)" in s["max_daily_loss"]["detail"]
    s = by_switch(evaluate(CFG, session=SessionChange(loss.session, 1.0, 1.0), track=track([]),
                           overrides={"max_daily_loss": "carol"}))
    assert s["max_daily_loss"]["overridden_by"] is None  # nothing tripped, nothing excused
    off = evaluate(KillSwitchConfig(enabled=False), session=loss, track=track([-0.05] * 30))
    assert not off["tripped"].any() and not off["armed"].any()
    with pytest.raises(ValueError, match="max_daily_loss_pct must be between 0 and 1"):
        KillSwitchConfig(max_daily_loss_pct=3.0)


def test_the_simulated_account_values_its_holdings_at_the_last_two_closes(tmp_path):
    db = tmp_path / "k.duckdb"
    build_sep(db)  # flat prices: AAA 50, BBB 100
    con = duckdb.connect(str(db))
    clock = [dt.datetime(2026, 1, 16, 9, 0, tzinfo=NY)]
    b = SimulatedBroker(con, clock=lambda: clock[0], starting_cash=92_000.0)
    assert b.last_session_change() == SessionChange(dt.date(2026, 1, 15), 92_000.0, 92_000.0)  # cash only
    con.execute("INSERT INTO sim_positions VALUES ('sim-paper', 'AAA', 80, 50, DATE '2026-01-14'), "
                "('sim-paper', 'BBB', 40, 100, DATE '2026-01-14')")
    # 01-15: AAA halves; BBB splits 2:1 (adjusted close halves back through history, unadjusted 50 on the day)
    con.execute("UPDATE sep_base SET close = 25, closeunadj = 25, closeadj = 25 WHERE ticker = 'AAA' AND date = '2026-01-15'")
    con.execute("UPDATE sep_base SET close = close / 2, open = open / 2 WHERE ticker = 'BBB'")
    con.execute("UPDATE sep_base SET closeunadj = 50 WHERE ticker = 'BBB' AND date >= '2026-01-15'")
    b = SimulatedBroker(con, clock=lambda: clock[0])  # a restated sep_base comes with a sync: a new broker
    change = b.last_session_change()  # the position is now 80 BBB after the split: no loss from it
    assert change.session == dt.date(2026, 1, 15)
    assert change.equity_before == pytest.approx(92_000 + 4_000 + 4_000)
    assert change.equity_after == pytest.approx(92_000 + 2_000 + 80 * 50)
    assert change.change == pytest.approx(-0.02)
    con.execute("DELETE FROM sep_base WHERE ticker = 'AAA' AND date >= '2026-01-15'")  # AAA stops trading
    change = SimulatedBroker(con, clock=lambda: clock[0]).last_session_change()  # a delisted holding: flat
    assert change.equity_after - change.equity_before == pytest.approx(0.0)
    con.execute("INSERT INTO sim_positions VALUES ('sim-paper', 'ZZZ', 5, 10, DATE '2026-01-14')")
    assert SimulatedBroker(con, clock=lambda: clock[0]).last_session_change() is None  # never priced: no figure
    con.close()


def test_alpaca_session_change_reads_the_daily_portfolio_history():
    with FakeAlpaca(now=dt.datetime(2026, 1, 16, 9, 0, tzinfo=NY)) as fake:
        broker = AlpacaBroker(AlpacaCredentials("PKTESTKEY", "fake-secret-value", fake.base_url, fake.base_url))
        assert broker.last_session_change() is None
        fake.equity_history = [(dt.date(2026, 1, 13), 101_000.0), (dt.date(2026, 1, 14), 100_000.0),
                               (dt.date(2026, 1, 15), 96_000.0), (dt.date(2026, 1, 16), 95_000.0)]
        # Before 16:00 on the 16th, today's point is the session in progress: the last complete one is the 15th.
        assert broker.last_session_change() == SessionChange(dt.date(2026, 1, 15), 100_000.0, 96_000.0)
        fake.now = dt.datetime(2026, 1, 16, 16, 30, tzinfo=NY)
        assert broker.last_session_change() == SessionChange(dt.date(2026, 1, 16), 96_000.0, 95_000.0)
        assert fake.calls[("GET", "/v2/account/portfolio/history")] == 3


def test_the_track_record_is_what_was_known_on_the_rebalance_morning(tmp_path):
    """The week before a rebalance is measured to that rebalance's open: on its morning it is not known, so
    the live Sharpe never reads it, even when a replay finds it stored."""
    from kairos_dagster.broker.kill_switches import tracked_before
    from kairos_dagster.warehouse import store

    reb = dt.date(2026, 1, 16)
    dates = [dt.date(2026, 1, 2), dt.date(2026, 1, 9)]
    rows = pl.DataFrame({"date": dates, "next_date": [dt.date(2026, 1, 9), reb], "held_return": [0.01, -0.5],
                         "backtest_return": [0.0, 0.0]})
    with duckdb.connect(str(tmp_path / "k.duckdb")) as con:
        store.replace_table(con, "rebalance_performance", rows)
        known = tracked_before(con, reb)
    assert known["date"].to_list() == [dt.date(2026, 1, 2)]
