"""The backtest engine on hand-built markets: fills at the open, drift with total returns, a split, a
dividend and a delisting, every cost component, the participation cap, no look-ahead, continuation."""

from __future__ import annotations

import datetime as dt
import math

import polars as pl
import pytest

from kairos_dagster.backtest.costs import CostConfigError, CostModel
from kairos_dagster.backtest.engine import BacktestInputError, Book, replay
from kairos_dagster.backtest.strategies import (
    SignalInputs,
    equal_weight_targets,
    liquidity_frame,
    risk4_targets,
)
from kairos_dagster.portfolio.config import ML_CONFIG
from kairos_dagster.portfolio.rebalance_weeks import WeekPlan, holdings_from_picks, rebalance_week
from kairos_dagster_tests.fixtures.portfolio_frames import SIGNAL_DATE, make_frame, make_returns

D = [dt.date(2025, 1, 6) + dt.timedelta(days=i) for i in (0, 1, 7, 8, 14, 15)]  # Mon/Tue of three weeks
PLANS = [WeekPlan(D[0], D[0] - dt.timedelta(days=3)), WeekPlan(D[2], D[1]), WeekPlan(D[4], D[3])]

# (ticker, day index) -> (open, close, closeadj, closeunadj). SEP's open/close are split-adjusted, closeadj
# adds dividends: A pays a 2% dividend going ex on day 3 (earlier closeadj = close x 0.98); B splits 2:1
# on day 3 (closeunadj halves, nothing else moves); C trades last on day 3 (delisted).
ROWS = {
    ("A", 0): (100.0, 102.0, 99.96, 102.0), ("A", 1): (102.0, 101.0, 98.98, 101.0),
    ("A", 2): (99.0, 100.0, 98.0, 100.0), ("A", 3): (100.0, 103.0, 103.0, 103.0),
    ("A", 4): (103.0, 104.0, 104.0, 104.0), ("A", 5): (104.0, 102.0, 102.0, 102.0),
    ("B", 0): (50.0, 51.0, 51.0, 102.0), ("B", 1): (51.0, 52.0, 52.0, 104.0),
    ("B", 2): (52.0, 50.0, 50.0, 100.0), ("B", 3): (50.0, 49.0, 49.0, 49.0),
    ("B", 4): (49.0, 50.0, 50.0, 50.0), ("B", 5): (50.0, 55.0, 55.0, 55.0),
    ("C", 0): (20.0, 21.0, 21.0, 21.0), ("C", 1): (21.0, 22.0, 22.0, 22.0),
    ("C", 2): (22.0, 20.0, 20.0, 20.0), ("C", 3): (20.0, 19.0, 19.0, 19.0),
}
SEP = pl.DataFrame([{"ticker": t, "date": D[i], "open": o, "close": c, "closeadj": a, "closeunadj": u}
                    for (t, i), (o, c, a, u) in ROWS.items()])
WEIGHTS = [{"A": 0.5, "B": 0.3, "C": 0.2}, {"A": 0.4, "B": 0.4, "C": 0.2}, {"A": 0.5, "B": 0.5}]
VOL, ADV = 0.02, 1_000_000.0
LIQ = pl.DataFrame([{"ticker": t, "date": p.signal_date, "adv": ADV, "daily_vol": VOL} for p in PLANS for t in "ABC"])
COSTS = CostModel(commission_per_share=0.005, half_spread_bps=10.0, impact_k=0.5, max_participation=1.0)


def fixed_targets(plan: WeekPlan, prior: pl.DataFrame) -> pl.DataFrame:
    w = WEIGHTS[[p.rebalance_date for p in PLANS].index(plan.rebalance_date)]
    return pl.DataFrame({"ticker": list(w), "weight": list(w.values())})


def _hand(costs: CostModel) -> tuple[list[float], list[float]]:
    """The same book computed by hand, one scalar at a time: (equity per session, cost per session)."""
    px = {k: {"open": o * a / c, "mark": a, "raw": u} for k, (o, c, a, u) in ROWS.items()}
    cash, units, equity, cost_by_day = 100_000.0, {}, [], []
    last = {}
    for day in range(6):
        cost = 0.0
        week = day // 2
        if day % 2 == 0:  # a rebalance at the open
            for t in list(units):
                if (t, day) not in px:  # delisted: leaves at its last close
                    cash += units.pop(t) * last[t]
            eq_open = cash + sum(u * px[(t, day)]["open"] for t, u in units.items())
            for t, w in WEIGHTS[week].items():
                if (t, day) not in px:
                    continue
                p = px[(t, day)]
                order = w * eq_open - units.get(t, 0.0) * p["open"]
                fee = (abs(order) / p["raw"] * costs.commission_per_share + abs(order) * costs.half_spread_bps / 1e4
                       + abs(order) * costs.impact_k * VOL * math.sqrt(abs(order) / ADV))
                units[t] = units.get(t, 0.0) + order / p["open"]
                cash -= order + fee
                cost += fee
        for t in units:
            if (t, day) in px:
                last[t] = px[(t, day)]["mark"]
        equity.append(cash + sum(u * last[t] for t, u in units.items()))
        cost_by_day.append(cost)
    return equity, cost_by_day


def test_hand_computed_split_dividend_delisting_with_costs():
    res = replay(PLANS, SEP, fixed_targets, liquidity=LIQ, end=D[-1], costs=COSTS)
    equity, cost = _hand(COSTS)
    assert res.daily["date"].to_list() == D
    assert res.daily["equity"].to_list() == pytest.approx(equity, rel=1e-12)
    assert res.daily["cost"].to_list() == pytest.approx(cost, rel=1e-12)
    # C is gone on the third rebalance: it leaves at its last close (19.0), without costs, and is reported.
    exit_c = res.trades.filter((pl.col("ticker") == "C") & (pl.col("date") == D[4]))
    assert exit_c["reason"].item().startswith("no price on the rebalance date")
    assert exit_c["price"].item() == 19.0 and exit_c["cost"].item() == 0.0
    # B's split doubles its share count, so the per-share commission of the same dollars doubles too.
    b = res.trades.filter(pl.col("ticker") == "B").sort("date")
    per_dollar = (b["commission"] / b["filled_value"].abs()).to_list()
    assert per_dollar[2] == pytest.approx(2 * per_dollar[1], rel=1e-12)
    # The dividend is in the returns: without it (closeadj = close for A) the book ends lower.
    no_div = SEP.with_columns(pl.when(pl.col("ticker") == "A").then(pl.col("close")).otherwise(pl.col("closeadj"))
                              .alias("closeadj"))
    plain = replay(PLANS, no_div, fixed_targets, liquidity=LIQ, end=D[-1], costs=COSTS)
    assert plain.daily["equity"][3] < res.daily["equity"][3]
    assert res.positions.filter(pl.col("date") == D[4])["ticker"].sort().to_list() == ["A", "B"]


def test_zero_costs_give_the_gross_curve_and_costs_are_the_gap():
    free = replay(PLANS, SEP, fixed_targets, liquidity=LIQ, end=D[-1],
                  costs=CostModel(0.0, 0.0, 0.0, 1.0))
    assert free.daily["ret_gross"].to_list() == free.daily["ret_net"].to_list()
    assert free.daily["cost"].sum() == 0.0
    paid = replay(PLANS, SEP, fixed_targets, liquidity=LIQ, end=D[-1], costs=COSTS)
    first = paid.daily.row(0, named=True)
    assert first["ret_gross"] - first["ret_net"] == pytest.approx(first["cost"] / 100_000.0, rel=1e-12)
    assert paid.daily["equity"][-1] < free.daily["equity"][-1]


def test_doubling_the_spread_doubles_the_spread_cost():
    one = replay(PLANS[:1], SEP, fixed_targets, liquidity=LIQ, end=D[1], costs=CostModel(0.0, 7.0, 0.0, 1.0))
    two = replay(PLANS[:1], SEP, fixed_targets, liquidity=LIQ, end=D[1], costs=CostModel(0.0, 14.0, 0.0, 1.0))
    assert two.trades["spread_cost"].sum() == pytest.approx(2 * one.trades["spread_cost"].sum(), rel=1e-12)
    assert one.trades["impact_cost"].sum() == 0.0 and one.trades["commission"].sum() == 0.0


def test_the_participation_cap_fills_part_and_reports_the_rest():
    capped = CostModel(0.0, 0.0, 0.0, max_participation=0.01)  # 1% of $1M ADV: $10,000 per order
    res = replay(PLANS[:1], SEP, fixed_targets, liquidity=LIQ, end=D[1], costs=capped)
    t = res.trades.sort("ticker")
    assert t["filled_value"].to_list() == pytest.approx([10_000.0] * 3)
    assert t["unfilled_value"].to_list() == pytest.approx([40_000.0, 20_000.0, 10_000.0])
    assert t["reason"].str.starts_with("participation cap").all()
    # $10,000 of each bought at the open, marked at the close: A 99.96 / 98 (its open in closeadj units),
    # B 51 / 50, C 21 / 20; $70,000 stays in cash.
    held = 10_000.0 * (99.96 / 98.0 + 51.0 / 50.0 + 21.0 / 20.0)
    assert res.daily["gross_exposure"][0] == pytest.approx(held / (70_000.0 + held), rel=1e-12)


def test_a_longer_replay_starts_with_the_shorter_one_and_a_continued_book_equals_one_replay():
    short = replay(PLANS[:2], SEP, fixed_targets, liquidity=LIQ, end=D[3], costs=COSTS)
    full = replay(PLANS, SEP, fixed_targets, liquidity=LIQ, end=D[-1], costs=COSTS)
    assert full.daily.head(4).equals(short.daily)
    cont = replay(PLANS, SEP, fixed_targets, liquidity=LIQ, end=D[-1], costs=COSTS, book=short.book)
    assert pl.concat([short.daily, cont.daily]).equals(full.daily)
    assert pl.concat([short.trades, cont.trades]).equals(full.trades)


def test_a_book_continues_across_a_restatement_of_its_history():
    """The feed rewrites a ticker's closeadj history after a split or a dividend (here A's, by 1/3, after
    the book was kept): the continued replay re-expresses the book's units in the restated marks and gives
    the rows of one replay over the restated prices."""
    short = replay(PLANS[:2], SEP, fixed_targets, liquidity=LIQ, end=D[3], costs=COSTS)
    restated = SEP.with_columns([pl.when(pl.col("ticker") == "A").then(pl.col(c) / 3.0).otherwise(pl.col(c)).alias(c)
                                 for c in ("open", "close", "closeadj")])
    full = replay(PLANS, restated, fixed_targets, liquidity=LIQ, end=D[-1], costs=COSTS)
    cont = replay(PLANS, restated, fixed_targets, liquidity=LIQ, end=D[-1], costs=COSTS, book=short.book)
    for a, b in ((full.daily.tail(2), cont.daily), (full.trades.filter(pl.col("date") > D[3]), cont.trades)):
        assert a.columns == b.columns and a.height == b.height
        for c in a.columns:
            if a.schema[c].is_float():
                assert ((a[c] - b[c]).abs() <= 1e-9 * a[c].abs().clip(lower_bound=1.0)).all(), c
            else:
                assert a[c].equals(b[c]), c
    # Without the rebase the stored units would be worth a third more of A: the equity would jump.
    assert abs(cont.daily["equity"][0] / short.daily["equity"][-1] - 1) < 0.1


def test_bad_inputs_are_named():
    with pytest.raises(BacktestInputError, match="non-positive or non-finite price"):
        replay(PLANS, SEP.with_columns(pl.when(pl.col("ticker") == "B").then(-1.0).otherwise(pl.col("open")).alias("open")),
               fixed_targets, liquidity=LIQ, end=D[-1])
    with pytest.raises(BacktestInputError, match="lack column"):
        replay(PLANS, SEP.drop("closeadj"), fixed_targets, liquidity=LIQ, end=D[-1])
    with pytest.raises(BacktestInputError, match="repeat"):
        replay(PLANS, pl.concat([SEP, SEP.head(1)]), fixed_targets, liquidity=LIQ, end=D[-1])
    with pytest.raises(CostConfigError, match="half_spread_bps"):
        CostModel(half_spread_bps=-1.0)
    with pytest.raises(BacktestInputError, match="portfolio value"):
        Book.start(0.0)


def test_the_risk4_target_is_the_live_rebalance_given_the_same_prior():
    frame = make_frame(400, seed=3)
    returns = make_returns(frame["ticker"].to_list())
    plan = WeekPlan.for_date(dt.date(2026, 1, 16))
    assert plan.signal_date == SIGNAL_DATE
    target = risk4_targets(SignalInputs.build(frame, [SIGNAL_DATE], returns), ML_CONFIG)
    fresh = rebalance_week(plan, frame, [SIGNAL_DATE], returns, holdings_from_picks(frame.head(0).select(
        "ticker", pl.lit(0.0).alias("weight"), pl.lit(0).alias("shares"))), ML_CONFIG)
    assert target(plan, fresh.prior).equals(fresh.result.picks.select("ticker", "weight"))
    # With a prior (the week's own picks, drifted), the backtest's target is still the live code's output.
    prior = holdings_from_picks(fresh.result.picks).with_columns(pl.col("weight") * 0.97)
    live = rebalance_week(plan, frame, [SIGNAL_DATE], returns, prior, ML_CONFIG)
    assert target(plan, prior).equals(live.result.picks.select("ticker", "weight"))
    assert not target(plan, prior).equals(fresh.result.picks.select("ticker", "weight"))
    # The backtest asks for no share orders: the portfolio and the gates are the live ones all the same.
    bare = rebalance_week(plan, frame, [SIGNAL_DATE], returns, prior, ML_CONFIG, with_trades=False)
    assert bare.trades is None and live.trades is not None and live.trades.height
    assert bare.result.picks.equals(live.result.picks) and bare.gates == live.gates


def test_equal_weight_targets_hold_the_eligible_universe():
    frame = make_frame(50, seed=1).with_columns(
        pl.when(pl.col("ticker") == "T00000").then(1.0).otherwise(pl.col("adv_20")).alias("adv_20"))
    t = equal_weight_targets(SignalInputs.build(frame, [], frame.head(0).select('ticker', 'date')), ML_CONFIG)(WeekPlan.for_date(dt.date(2026, 1, 16)), None)
    eligible = frame.filter(pl.col("adv_20") >= ML_CONFIG.min_adv)
    assert t.height == eligible.height and "T00000" not in t["ticker"].to_list()
    assert t["weight"].sum() == pytest.approx(1.0)
    liq = liquidity_frame(frame, ML_CONFIG)
    assert liq["daily_vol"].to_list() == pytest.approx((frame["vol_blend"] / math.sqrt(252)).to_list())


def test_a_signal_date_without_any_liquidity_still_trades():
    """The first weeks of a history have no ADV or vol yet (all null): no cap and no impact, the spread paid."""
    liq = LIQ.with_columns(pl.lit(None, pl.Float64).alias("adv"), pl.lit(None, pl.Float64).alias("daily_vol"))
    res = replay(PLANS[:1], SEP, fixed_targets, liquidity=liq, end=D[1], costs=COSTS)
    t = res.trades
    assert t["unfilled_value"].abs().sum() == 0.0 and t["impact_cost"].sum() == 0.0
    assert t["spread_cost"].sum() == pytest.approx(t["filled_value"].abs().sum() * 10 / 1e4, rel=1e-12)
    assert t["reason"].str.starts_with("no ADV or vol at the signal date").all()
