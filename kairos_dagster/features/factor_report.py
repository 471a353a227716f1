"""Alphalens-style factor report: rank IC and quintile spreads of factor columns against ``ret_5d_f``.

Periods: by default only rebalance dates (the last XNYS session of each week), so consecutive 5-day
forward returns barely overlap and the t-statistic is not inflated by overlapping returns;
``periods="sessions"`` uses every date in the frame instead. Per factor and period:

- ``ic``: Spearman rank correlation between the factor and ``ret_5d_f`` over the rows where both are
  present (null when fewer than ``min_names`` such rows), ``n`` that row count;
- ``q5_minus_q1``: mean ``ret_5d_f`` of the factor's top quintile minus its bottom quintile.

Summary per factor over its periods with an IC: mean_ic, std_ic (ddof=1), t_stat = mean_ic / std_ic *
sqrt(n_periods), icir = mean_ic / std_ic (per period, not annualized), q5_minus_q1 (mean spread),
n_periods.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Literal

import duckdb
import polars as pl

from kairos_dagster import calendar
from kairos_dagster.features import xs
from kairos_dagster.warehouse import store

TARGET = "ret_5d_f"
MIN_NAMES = 10


def _long(frame: pl.DataFrame, factors: Sequence[str], target: str, periods: str) -> pl.DataFrame:
    missing = [c for c in ("ticker", "date", target, *factors) if c not in frame.columns]
    if missing:
        raise ValueError(f"factor_report: input frame is missing columns {missing}")
    if not factors:
        raise ValueError("factor_report: no factor columns given")
    f = frame.select("ticker", pl.col("date").cast(pl.Date), target, *factors)
    if periods == "rebalance":
        if f.height:
            reb = calendar.rebalance_dates_between(f["date"].min(), f["date"].max())
            f = f.filter(pl.col("date").is_in(reb))
    elif periods != "sessions":
        raise ValueError(f"factor_report: periods must be 'rebalance' or 'sessions', got {periods!r}")
    return (
        f.unpivot(index=["ticker", "date", target], on=list(factors), variable_name="factor", value_name="value")
        .with_columns(value=xs.clean("value"), _y=xs.clean(target))
        .filter(pl.col("value").is_not_null() & pl.col("_y").is_not_null())
    )


def factor_ic(
    frame: pl.DataFrame,
    factors: Sequence[str],
    *,
    target: str = TARGET,
    periods: Literal["rebalance", "sessions"] = "rebalance",
    min_names: int = MIN_NAMES,
) -> pl.DataFrame:
    """The ``factor_ic`` table: (factor, date, week, ic, q5_minus_q1, n), one row per factor and period."""
    lf = _long(frame, factors, target, periods)
    by = ["factor", "date"]
    lf = lf.with_columns(_q=xs.quantile_bucket("value", 5, by))
    out = (
        lf.group_by(by)
        .agg(
            ic=pl.corr("value", "_y", method="spearman"),
            q5=pl.col("_y").filter(pl.col("_q") == 5).mean(),
            q1=pl.col("_y").filter(pl.col("_q") == 1).mean(),
            n=pl.len().cast(pl.Int64),
        )
        .with_columns(
            ic=pl.when((pl.col("n") >= min_names) & pl.col("ic").is_finite()).then(pl.col("ic")).otherwise(None),
            q5_minus_q1=pl.when(pl.col("n") >= min_names).then(pl.col("q5") - pl.col("q1")).otherwise(None),
            week=pl.col("date").dt.truncate("1w"),  # the Monday of the trading week
        )
        .select("factor", "date", "week", "ic", "q5_minus_q1", "n")
        .sort("factor", "date")
    )
    return out


def summarize(ic: pl.DataFrame) -> pl.DataFrame:
    """Per factor: mean_ic, std_ic, t_stat, icir, q5_minus_q1, n_periods (periods with an IC)."""
    s = (
        ic.filter(pl.col("ic").is_not_null())
        .group_by("factor")
        .agg(
            mean_ic=pl.col("ic").mean(),
            std_ic=pl.col("ic").std(ddof=1),
            q5_minus_q1=pl.col("q5_minus_q1").mean(),
            n_periods=pl.len().cast(pl.Int64),
        )
        .with_columns(
            icir=pl.when(pl.col("std_ic") > 0).then(pl.col("mean_ic") / pl.col("std_ic")).otherwise(None),
        )
        .with_columns(t_stat=pl.col("icir") * pl.col("n_periods").cast(pl.Float64).sqrt())
    )
    missing = sorted(set(ic["factor"].unique()) - set(s["factor"]))
    if missing:  # a factor with no usable period still gets a row, so it is visible in the report
        s = pl.concat([s, pl.DataFrame({"factor": missing})], how="diagonal_relaxed")
    return s.select("factor", "mean_ic", "std_ic", "t_stat", "icir", "q5_minus_q1", "n_periods").sort("factor")


def factor_report(
    frame: pl.DataFrame,
    factors: Sequence[str],
    *,
    target: str = TARGET,
    periods: Literal["rebalance", "sessions"] = "rebalance",
    min_names: int = MIN_NAMES,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(factor_ic table, summary) for the factor columns of ``frame`` against ``target``."""
    ic = factor_ic(frame, factors, target=target, periods=periods, min_names=min_names)
    return ic, summarize(ic)


def _fmt(x: object, digits: int) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def to_markdown(summary: pl.DataFrame) -> str:
    """A markdown table of the summary, strongest |t_stat| first (for dagster MetadataValue.md)."""
    cols = ["factor", "mean_ic", "t_stat", "icir", "q5_minus_q1", "n_periods"]
    rows = summary.sort(pl.col("t_stat").abs(), descending=True, nulls_last=True).select(cols).rows()
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for f, mic, t, ir, q, n in rows:
        lines.append(f"| {f} | {_fmt(mic, 4)} | {_fmt(t, 2)} | {_fmt(ir, 3)} | {_fmt(q, 5)} | {_fmt(n, 0)} |")
    return "\n".join(lines)


def stored_outside(con: duckdb.DuckDBPyConnection, start: dt.date, end: dt.date, empty: pl.DataFrame) -> pl.DataFrame:
    """The stored factor_ic rows outside [start, end) (`empty` when the table does not exist yet): the
    history a window's rows are summarized with."""
    if not store.table_exists(con, "factor_ic"):
        return empty
    return con.execute("SELECT * FROM factor_ic WHERE date < ? OR date >= ?", [start, end]).pl()
