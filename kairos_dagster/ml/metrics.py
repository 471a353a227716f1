"""Model quality metrics: AUC, per-date rank IC, ICIR, and the tidy ``ml_metrics`` frame."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping

import numpy as np
import polars as pl

ML_METRICS_SCHEMA = {
    "model_name": pl.String,
    "model_version": pl.String,
    "fold": pl.Int32,  # k of the retrain point on the walk-forward grid
    "date": pl.Date,  # retrain Monday for split train/valid, scored week Monday for split oos
    "split": pl.String,  # train | valid | oos
    "metric": pl.String,
    "feature": pl.String,  # set for feature-gain rows, null otherwise
    "value": pl.Float64,
}


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank statistic (ties averaged); NaN when one class is absent."""
    y = np.asarray(y, dtype=bool)
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return math.nan
    r = pl.Series(np.asarray(p, dtype=np.float64)).rank("average").to_numpy()
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def rank_ic_by_date(frame: pl.DataFrame, pred: str, ret: str) -> pl.DataFrame:
    """Spearman correlation of prediction and forward return per date (dates with >= 3 rows)."""
    return (
        frame.filter(pl.col(pred).is_not_null() & pl.col(ret).is_not_null() & pl.col(ret).is_not_nan())
        .group_by("date")
        .agg(pl.corr(pred, ret, method="spearman").alias("rank_ic"), pl.len().alias("n"))
        .filter((pl.col("n") >= 3) & pl.col("rank_ic").is_not_nan())
        .sort("date")
    )


def ic_stats(ic: pl.Series) -> dict[str, float]:
    """Mean rank IC, its std, ICIR (mean / std) and t-stat (ICIR * sqrt(n))."""
    x = ic.drop_nulls().drop_nans().to_numpy()
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    icir = mean / std if n > 1 and std > 0 else math.nan
    return {"rank_ic": mean, "rank_ic_std": std, "icir": icir,
            "rank_ic_t": icir * math.sqrt(n) if n > 1 else math.nan, "n_dates": float(n)}


def evaluate(frame: pl.DataFrame, pred: str, label: str, ret: str | None) -> dict[str, float]:
    """AUC against the label and (when a return column is given) rank-IC statistics."""
    lab = frame.filter(pl.col(label).is_not_null() & pl.col(pred).is_not_null())
    out = {"auc": auc(lab[label].to_numpy(), lab[pred].to_numpy()), "rows": float(lab.height)}
    if ret is not None and ret in frame.columns:
        out |= ic_stats(rank_ic_by_date(frame, pred, ret)["rank_ic"])
    return out


def metric_rows(model_name: str, model_version: str, fold: int, date: dt.date, split: str,
                metrics: Mapping[str, float], gains: Iterable[tuple[str, float]] = ()) -> pl.DataFrame:
    """Tidy ``ml_metrics`` rows: one per metric, plus one ``gain_total`` row per listed feature."""
    gains = list(gains)
    names = [*metrics.keys(), *("gain_total" for _ in gains)]
    feats: list[str | None] = [None] * len(metrics) + [g[0] for g in gains]
    values = [*(float(v) for v in metrics.values()), *(float(g[1]) for g in gains)]
    n = len(names)
    return pl.DataFrame({
        "model_name": [model_name] * n, "model_version": [model_version] * n, "fold": [fold] * n,
        "date": [date] * n, "split": [split] * n, "metric": names, "feature": feats, "value": values,
    }, schema=ML_METRICS_SCHEMA)


def empty_metrics() -> pl.DataFrame:
    return pl.DataFrame(schema=ML_METRICS_SCHEMA)
