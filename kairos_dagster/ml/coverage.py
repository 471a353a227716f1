"""Checks of the ML outputs and feat_matrix_v2 (pure polars; the assets turn them into AssetCheckResults)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import polars as pl

from kairos_dagster.calendar import rebalance_dates_between
from kairos_dagster.features.targets import TARGET_COLUMNS
from kairos_dagster.ml.dataset import TARGET_PATTERN


def coverage_on_rebalance_dates(frame: pl.DataFrame, alphas: Sequence[str], *, since: dt.date) -> dict[str, float]:
    """Share of rows with a non-null value of each alpha, over rows on rebalance dates >= ``since``.

    Returns ``{"rows": n, <alpha>: share, ...}``; shares are 1.0 when there is no such row.
    """
    if frame.height == 0:
        return {"rows": 0, **{a: 1.0 for a in alphas}}
    lo, hi = max(frame["date"].min(), since), frame["date"].max()
    dates = rebalance_dates_between(lo, hi) if lo <= hi else []
    rows = frame.filter(pl.col("date").is_in(dates))
    if rows.height == 0:
        return {"rows": 0, **{a: 1.0 for a in alphas}}
    shares = rows.select([pl.col(a).is_not_null().mean().alias(a) for a in alphas]).row(0, named=True)
    return {"rows": rows.height, **{a: float(v) for a, v in shares.items()}}


def target_columns_present(columns: Sequence[str], target_columns: Sequence[str] = TARGET_COLUMNS) -> list[str]:
    """Columns of a feature matrix that come from feat_targets (forward-looking): must be none."""
    banned = set(target_columns)
    return [c for c in columns if c in banned or TARGET_PATTERN.match(c)]


