"""The backtest engine beside vectorbt (bench-only): the same target weights, the same prices, no costs.

Weights: the `ml` strategy's positions after each rebalance's fills (backtest_positions, default chain),
given to both engines as each rebalance date's targets. Kairos's `engine.replay` fills them at the open and
drifts units of closeadj; vectorbt's `Portfolio.from_orders` gets `targetpercent` orders at the same
open (in closeadj units), valued at the order price, sells before buys (`call_seq="auto"`), one group
with shared cash, valued at closeadj. A held name without a price on a rebalance date leaves at its last
mark in both (vectorbt's order price there is the forward-filled close). The gross equity curves must
agree within 1e-6 (relative).
"""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import polars as pl

from kairos_dagster.backtest.costs import CostModel
from kairos_dagster.backtest.engine import price_panel, replay
from kairos_dagster.portfolio.rebalance_weeks import week_plans

NO_COSTS = CostModel(commission_per_share=0.0, half_spread_bps=0.0, impact_k=0.0, max_participation=1.0)
NO_LIQUIDITY = pl.DataFrame(schema={"ticker": pl.String, "date": pl.Date, "adv": pl.Float64, "daily_vol": pl.Float64})


def kairos_curve(sep: pl.DataFrame, weights: pl.DataFrame, value: float) -> pl.DataFrame:
    """date, equity of Kairos's engine replaying `weights` (date, ticker, weight) with no costs."""
    dates = sorted(set(weights["date"].to_list()))
    plans = [p for p in week_plans(dates[0] - dt.timedelta(days=7), sep["date"].max() + dt.timedelta(days=1))
             if p.rebalance_date in set(dates)]
    by_date = {d: part.select("ticker", "weight") for (d,), part in weights.group_by("date")}

    def target(plan, prior):
        return by_date.get(plan.rebalance_date)

    result = replay(plans, sep, target, liquidity=NO_LIQUIDITY, end=sep["date"].max(), costs=NO_COSTS,
                    portfolio_value=value)
    return result.daily.select("date", "equity")


def vectorbt_curve(sep: pl.DataFrame, weights: pl.DataFrame, value: float) -> pl.DataFrame:
    """date, equity of vectorbt replaying the same targets at the same prices."""
    import pandas as pd
    import vectorbt as vbt

    first = weights["date"].min()
    names = sorted(set(weights["ticker"].to_list()))
    px = price_panel(sep.filter(pl.col("ticker").is_in(names))).filter(pl.col("date") >= first)
    sessions = sorted(set(sep.filter(pl.col("date") >= first)["date"].to_list()))
    index = pd.DatetimeIndex(sessions)

    def wide(frame: pl.DataFrame, column: str) -> pd.DataFrame:
        w = frame.pivot(on="ticker", index="date", values=column).sort("date")
        out = w.to_pandas().set_index("date")
        out.index = pd.DatetimeIndex(out.index)
        return out.reindex(index=index, columns=names)

    close = wide(px, "mark").ffill()
    opens = wide(px, "open_adj")
    price = opens.where(opens.notna(), close).fillna(1.0)  # delisted: the last mark; not yet listed: unused
    close = close.fillna(1.0)
    size = pd.DataFrame(np.nan, index=index, columns=names)
    targets = wide(weights.with_columns(pl.col("date")), "weight")
    rebalance_rows = index.isin(pd.DatetimeIndex(sorted(set(weights["date"].to_list()))))
    size.loc[rebalance_rows] = targets.loc[rebalance_rows].fillna(0.0)
    pf = vbt.Portfolio.from_orders(close=close, size=size, size_type="targetpercent", price=price,
                                   val_price=price, init_cash=value, cash_sharing=True, group_by=True,
                                   call_seq="auto", fees=0.0, fixed_fees=0.0, slippage=0.0, freq="1D")
    equity = pf.value()
    return pl.DataFrame({"date": [d.date() for d in equity.index], "equity": equity.to_numpy().astype(float)})


def compare(sep: pl.DataFrame, weights: pl.DataFrame, value: float = 100_000.0) -> dict:
    """Both curves, timed, and their largest relative difference."""
    t0 = time.perf_counter()
    ours = kairos_curve(sep, weights, value)
    t1 = time.perf_counter()
    theirs = vectorbt_curve(sep, weights, value)  # includes numba's compilation of vectorbt's kernels
    t2 = time.perf_counter()
    vectorbt_curve(sep, weights, value)
    t3 = time.perf_counter()
    j = ours.join(theirs, on="date", suffix="_vbt")
    rel = ((j["equity"] - j["equity_vbt"]).abs() / j["equity_vbt"].abs()).max()
    return {"kairos_s": round(t1 - t0, 2), "vectorbt_s": round(t2 - t1, 2),
            "vectorbt_warm_s": round(t3 - t2, 2), "sessions": j.height,
            "rebalances": weights["date"].n_unique(), "tickers": weights["ticker"].n_unique(),
            "max_rel_diff": float(rel), "final_kairos": float(j["equity"][-1]), "final_vectorbt": float(j["equity_vbt"][-1]),
            "sessions_only_one_side": abs(ours.height - theirs.height)}
