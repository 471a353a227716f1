"""SimulatedBroker on a real DuckDB file, and the pure order/approval functions."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import duckdb
import polars as pl
import pytest

from kairos_dagster.broker.approval import make_approval, picks_content_hash, validate_approval
from kairos_dagster.broker.base import Broker, DuplicateClientOrderIdError, OrderRequest
from kairos_dagster.broker.engine import ExecutionConfig, execute, verify
from kairos_dagster.broker.orders import (
    ExecutionRefusedError,
    PlanInputError,
    client_order_id,
    order_timing,
    plan_orders,
)
from kairos_dagster.broker.simulated import SimulatedBroker

NY = ZoneInfo("America/New_York")


def _sep(path) -> None:
    con = duckdb.connect(str(path))
    # Thu 2026-01-15, Fri 01-16, (Mon 01-19 is MLK day: closed), Tue 01-20. MSFT split 2:1 later, so its
    # split-adjusted prices are half the prices it really traded at (closeunadj).
    con.execute("""CREATE TABLE sep_base AS SELECT * FROM (VALUES
        ('AAPL', DATE '2026-01-15', 99.0, 100.0, 100.0), ('AAPL', DATE '2026-01-16', 101.0, 102.0, 102.0),
        ('MSFT', DATE '2026-01-15', 199.0, 200.0, 400.0), ('MSFT', DATE '2026-01-16', 202.0, 204.0, 408.0)
        ) t(ticker, date, open, close, closeunadj)""")
    con.close()


class Clock:
    def __init__(self, t: dt.datetime) -> None:
        self.t = t

    def __call__(self) -> dt.datetime:
        return self.t


def test_simulated_fills_next_open_with_slippage_and_persists(tmp_path):
    db = tmp_path / "w.duckdb"
    _sep(db)
    clock = Clock(dt.datetime(2026, 1, 15, 12, 0, tzinfo=NY))  # Thursday midday
    with SimulatedBroker(db, clock=clock, slippage_bps=10.0) as b:
        assert isinstance(b, Broker)
        s = b.submit(OrderRequest("AAPL", 10, "buy", "day", "c1"))
        assert s.status == "accepted"  # fills at Friday's open, not now
        with pytest.raises(DuplicateClientOrderIdError):
            b.submit(OrderRequest("AAPL", 10, "buy", "day", "c1"))
        bad = b.submit(OrderRequest("ZZZZ", 1, "buy", "day", "c2"))
        assert bad.status == "rejected" and "unknown ticker 'ZZZZ'" in bad.reason
        clock.t = dt.datetime(2026, 1, 16, 9, 31, tzinfo=NY)
        s = b.order_by_client_id("c1")
        assert s.status == "filled" and s.filled_avg_price == pytest.approx(101.0 * 1.001)
        assert b.account().cash == pytest.approx(100_000 - 10 * 101.0 * 1.001)
        # a sell sent Friday afternoon fills at the next session (Tue 01-20), which has no price yet
        b.submit(OrderRequest("AAPL", 4, "sell", "day", "c3"))
    clock.t = dt.datetime(2026, 1, 21, 10, 0, tzinfo=NY)
    with SimulatedBroker(db, clock=clock, starting_cash=5.0) as b2:  # reopen: same account, not reset
        assert b2.order_by_client_id("c3").status == "accepted"  # 01-20 missing in sep_base: stays open
        assert [(p.symbol, p.qty) for p in b2.positions()] == [("AAPL", 10.0)]
        b2.con.execute("INSERT INTO sep_base VALUES ('AAPL', DATE '2026-01-20', 110.0, 111.0, 111.0)")
        st = b2.order_by_client_id("c3")
        assert st.status == "filled" and st.filled_avg_price == pytest.approx(110.0 * 0.999)  # sells receive less
        assert b2.positions()[0].qty == 6.0 and b2.latest_price("AAPL") == 111.0


def test_simulated_fills_and_prices_are_unadjusted(tmp_path):
    """Orders trade real prices: SEP's split-adjusted open is scaled back by closeunadj / close."""
    db = tmp_path / "w.duckdb"
    _sep(db)
    clock = Clock(dt.datetime(2026, 1, 15, 17, 0, tzinfo=NY))  # Thursday after the close
    with SimulatedBroker(db, clock=clock, slippage_bps=0.0) as b:
        assert b.latest_price("MSFT") == 400.0  # Thursday's close as traded, not 200
        b.submit(OrderRequest("MSFT", 3, "buy", "day", "m1"))
        clock.t = dt.datetime(2026, 1, 16, 9, 31, tzinfo=NY)
        assert b.order_by_client_id("m1").filled_avg_price == pytest.approx(202.0 * 408.0 / 204.0)


def test_simulated_broker_runs_the_engine(tmp_path):
    db = tmp_path / "w.duckdb"
    _sep(db)
    clock = Clock(dt.datetime(2026, 1, 16, 8, 0, tzinfo=NY))  # before Friday's open
    con = duckdb.connect(str(db))
    b = SimulatedBroker(con, clock=clock)
    picks = pl.DataFrame({"ticker": ["AAPL", "MSFT"], "shares": [40, 20], "price": [100.0, 200.0]})
    execute(b, picks, dt.date(2026, 1, 16), con=con, output_dir=tmp_path, config=ExecutionConfig(auto_paper=True))
    clock.t = dt.datetime(2026, 1, 16, 10, 0, tzinfo=NY)
    rep = verify(b, dt.date(2026, 1, 16), con=con)
    assert rep.summary["filled"] == 2 and rep.summary["fill_rate"] == 1.0
    aapl = rep.orders.filter(pl.col("ticker") == "AAPL").row(0, named=True)
    assert aapl["slippage_bps"] == pytest.approx((101.0 * 1.0005 / 100.0 - 1) * 1e4)
    con.close()


def test_client_order_id_deterministic_and_short():
    d = dt.date(2026, 1, 16)
    a = client_order_id("acct-1", d, "BRK.B", "buy")
    assert a == client_order_id("acct-1", d, "BRK.B", "buy") and a.startswith("kairos-20260116-BRK.B-buy-")
    assert len({a, client_order_id("acct-2", d, "BRK.B", "buy"), client_order_id("acct-1", d, "BRK.B", "sell"),
                client_order_id("acct-1", dt.date(2026, 1, 23), "BRK.B", "buy")}) == 4
    assert len(client_order_id("x" * 300, d, "T" * 300, "sell")) <= 128


def test_plan_orders_sells_first_whole_shares_and_bad_input():
    t = pl.DataFrame({"ticker": ["AAPL", "MSFT"], "target_shares": [10, 5], "price": [100.0, 200.0],
                      "weight": [0.5, 0.5]})
    p = pl.DataFrame({"ticker": ["MSFT", "TSLA"], "qty": [8.0, 3.0], "current_price": [210.0, 250.0]})
    plan = plan_orders(t, p)
    assert plan.select("ticker", "side", "qty", "reason").rows() == [
        ("MSFT", "sell", 3, "decrease_weight"), ("TSLA", "sell", 3, "exit_position"), ("AAPL", "buy", 10, "new_position")]
    over = plan_orders(t, p, portfolio_value_override=4000)  # floor(0.5 * 4000 / price)
    assert dict(zip(over["ticker"], over["qty"], strict=True)) == {"AAPL": 20, "MSFT": 2, "TSLA": 3}
    with pytest.raises(PlanInputError, match=r"'price'.*\['MSFT'\]"):
        plan_orders(t.with_columns(price=pl.Series([100.0, -1.0])), p)
    with pytest.raises(PlanInputError, match="more than once"):
        plan_orders(pl.concat([t, t]), p)


def test_order_timing_policy():
    at = dt.datetime(2026, 1, 16, 9, 0, tzinfo=NY)
    assert order_timing(is_live=False, now=at).time_in_force == "day"
    assert order_timing(is_live=True, now=at).time_in_force == "opg"
    assert order_timing(is_live=False, now=at, force_moo=True).time_in_force == "opg"
    late = dt.datetime(2026, 1, 16, 14, 30, tzinfo=dt.UTC)  # 09:30 New York
    with pytest.raises(ExecutionRefusedError, match="09:28"):
        order_timing(is_live=True, now=late)
    assert order_timing(is_live=True, now=late, intraday=True).time_in_force == "day"
    assert order_timing(is_live=True, now=dt.datetime(2026, 1, 16, 19, 5, tzinfo=NY)).time_in_force == "opg"


def test_picks_hash_and_approval_rules(tmp_path):
    a = pl.DataFrame({"ticker": ["A", "B"], "weight": [0.5, 0.5], "shares": [10, 20]})
    path = tmp_path / "picks.csv"
    a.write_csv(path)
    same = pl.DataFrame({"shares": [20.0, 10.0], "ticker": ["B", "A"], "weight": [0.5, 0.5 + 1e-13]})
    h = picks_content_hash(path)
    assert h == picks_content_hash(a) == picks_content_hash(same)
    assert h != picks_content_hash(a.with_columns(shares=pl.Series([10, 21])))
    assert h != picks_content_hash(a.with_columns(weight=pl.Series([0.6, 0.4])))
    assert h != picks_content_hash(a.head(1))
    appr = make_approval(h, "ops", approved_at=dt.datetime(2026, 1, 16, 7, 0))
    assert validate_approval(appr, h, live=True, auto_paper=False).ok
    assert validate_approval(appr.to_dict(), h, live=True, auto_paper=False).ok
    assert not validate_approval(None, h, live=True, auto_paper=True).ok
    assert validate_approval(None, h, live=False, auto_paper=True).ok
    assert not validate_approval(None, h, live=False, auto_paper=False).ok
    stale = validate_approval(appr, "0" * 64, live=False, auto_paper=True)
    assert not stale.ok and "picks changed after approval" in stale.reasons[0]
    assert "missing field" in validate_approval({"picks_hash": h}, h, live=True, auto_paper=False).reasons[0]


def test_simulated_account_follows_a_split_in_positions_and_pending_orders(tmp_path):
    """AAA trades at $100 until 2026-01-15 and splits 2:1 with ex-date 01-16 (sep_base as served after the
    split: close is split-adjusted, closeunadj what it traded at)."""
    db = tmp_path / "k.duckdb"
    con = duckdb.connect(str(db))
    con.execute("""CREATE TABLE sep_base AS SELECT * FROM (VALUES
        ('AAA', DATE '2026-01-14', 50.0, 50.0, 100.0), ('AAA', DATE '2026-01-15', 50.0, 50.0, 100.0),
        ('AAA', DATE '2026-01-16', 50.0, 50.0, 50.0), ('AAA', DATE '2026-01-20', 50.0, 50.0, 50.0)
        ) t(ticker, date, open, close, closeunadj)""")
    con.close()
    clock = Clock(dt.datetime(2026, 1, 14, 8, 0, tzinfo=NY))
    with SimulatedBroker(db, clock=clock, slippage_bps=0.0) as b:
        b.submit(OrderRequest("AAA", 10, "buy", "day", "before"))  # fills at 01-14's open, $100 raw
        clock.t = dt.datetime(2026, 1, 15, 17, 0, tzinfo=NY)
        assert [(p.symbol, p.qty, p.avg_entry_price) for p in b.positions()] == [("AAA", 10, 100.0)]
        assert b.split_ratios(["AAA"], dt.date(2026, 1, 14), dt.date(2026, 1, 16)) == {}  # not known yet
        b.submit(OrderRequest("AAA", 4, "buy", "day", "pending"))  # 4 pre-split shares, fills at 01-16's open
        clock.t = dt.datetime(2026, 1, 16, 17, 0, tzinfo=NY)
        assert b.split_ratios(["AAA"], dt.date(2026, 1, 15), dt.date(2026, 1, 16)) == {"AAA": 2.0}
        (pos,) = b.positions()
        assert (pos.qty, pos.avg_entry_price) == (28.0, pytest.approx((1000 + 8 * 50) / 28))  # 10 -> 20, then + 8
        filled = b.order_by_client_id("pending")
        assert (filled.filled_qty, filled.filled_avg_price) == (8.0, 50.0)
        assert b.account().cash == pytest.approx(100_000 - 1000 - 400)
        clock.t = dt.datetime(2026, 1, 20, 17, 0, tzinfo=NY)
        assert b.positions()[0].qty == 28.0  # applied once
