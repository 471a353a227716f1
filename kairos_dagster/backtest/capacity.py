"""The capacity sweep: the production strategy (`ml`) replayed at growing portfolio values, and how its
net Sharpe falls with size (impact grows with sqrt(order / ADV), and the participation cap leaves more
unfilled).

The smallest value is the default portfolio value, so its chain *is* the default chain's `ml` (read, never
written here); each larger value is its own chain under `capacity-<value>`, extended week by week like the
default one.
"""

from __future__ import annotations

import datetime as dt
import math

import duckdb
import numpy as np
import polars as pl

from kairos_dagster.backtest import stats
from kairos_dagster.backtest.tables import DEFAULT_CONFIG_ID

CAPACITY_STRATEGY = "ml"
CAPACITY_VALUES: tuple[float, ...] = (1e5, 1e7, 1e9)
DEFAULT_VALUE = 1e5
CAPACITY_SCHEMA: dict[str, pl.DataType] = {
    "portfolio_value": pl.Float64(), "config_id": pl.String(), "strategy": pl.String(),
    "first_date": pl.Date(), "last_date": pl.Date(), "sessions": pl.Int64(),
    "sharpe": pl.Float64(), "sharpe_gross": pl.Float64(), "annual_return": pl.Float64(),
    "annual_return_gross": pl.Float64(), "annual_cost_drag": pl.Float64(), "avg_weekly_turnover": pl.Float64(),
    "unfilled_share": pl.Float64(), "sharpe_vs_smallest": pl.Float64(),
}


def config_id_for(value: float) -> str:
    """The chain a sweep value is stored under: the default chain at the default value."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"capacity: portfolio value must be a finite number > 0, got {value!r}")
    return DEFAULT_CONFIG_ID if value == DEFAULT_VALUE else f"capacity-{value:g}".replace("e+0", "e").replace("e+", "e")


def capacity_rows(daily: dict[float, pl.DataFrame], fills: dict[float, tuple[float, float]]) -> pl.DataFrame:
    """One row per swept value from its backtest_daily rows of the strategy (date, ret_net, ret_gross,
    turnover, n_positions) and its (ordered $, unfilled $) over the same span."""
    rows = []
    for value in sorted(daily):
        d = daily[value].sort("date")
        if d.height == 0:
            continue
        m = stats.period_metrics(d, None, None)
        ordered, unfilled = fills.get(value, (0.0, 0.0))
        gross = d["ret_gross"].cast(pl.Float64).to_numpy()
        rows.append({
            "portfolio_value": float(value), "config_id": config_id_for(value), "strategy": CAPACITY_STRATEGY,
            "first_date": d["date"][0], "last_date": d["date"][-1], "sessions": d.height,
            "sharpe": m["sharpe"], "sharpe_gross": stats.sharpe(gross), "annual_return": m["annual_return"],
            "annual_return_gross": stats.annual_return(gross), "annual_cost_drag": m["annual_cost_drag"],
            "avg_weekly_turnover": m["avg_weekly_turnover"],
            "unfilled_share": unfilled / ordered if ordered > 0 else math.nan,
        })
    out = pl.DataFrame(rows, schema={k: v for k, v in CAPACITY_SCHEMA.items() if k != "sharpe_vs_smallest"},
                       strict=False)
    base = out["sharpe"][0] if out.height else None
    ratio = (out["sharpe"] / base) if base is not None and np.isfinite(base) and base != 0 else pl.lit(None, pl.Float64)
    return out.with_columns(pl.Series("sharpe_vs_smallest", ratio) if isinstance(ratio, pl.Series)
                            else ratio.alias("sharpe_vs_smallest")).select(list(CAPACITY_SCHEMA)).cast(CAPACITY_SCHEMA)


def run_sweep(con: duckdb.DuckDBPyConnection, start: dt.date, end: dt.date) -> pl.DataFrame:
    """Extend every larger size's chain over the weeks of [start, end), then the sweep's rows from all
    stored history before `end` (the default chain's ml is read, never written here)."""
    from kairos_dagster.backtest import tables, weekly

    for value in CAPACITY_VALUES:
        cid = config_id_for(value)
        if cid == DEFAULT_CONFIG_ID:
            continue
        settings = weekly.BacktestSettings((CAPACITY_STRATEGY,), value, config_id=cid)
        frames = weekly.window_frames(weekly.run_window(con, start, end, settings), cid, start)
        tables.write_window(con, frames, start, end, cid)
    daily = {v: tables.load_strategy_daily(con, config_id_for(v), CAPACITY_STRATEGY, end) for v in CAPACITY_VALUES}
    fills = {v: tables.fill_totals(con, config_id_for(v), CAPACITY_STRATEGY, end) for v in CAPACITY_VALUES}
    rows = capacity_rows(daily, fills)
    tables.write_capacity(con, rows)
    return rows
