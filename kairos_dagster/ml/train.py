"""XGBoost classifier training and scoring (CPU by default, CUDA on request).

``DEFAULT_PARAMS`` are the fixed parameters of ``ml_predictions_v2`` (column ``alpha_ml_v2_clf``):
shallow hist trees with row/column subsampling and a large ``min_child_weight``, because the label
(market-residual 5-day return above its date's median) is very noisy and deep trees only memorise
it. Three keys are training controls rather than booster parameters:
``num_boost_round`` (upper bound on trees), ``early_stopping_rounds`` and ``valid_fraction`` (the
time-ordered tail of the training dates used for early stopping; rows before it whose label horizon
reaches into it are purged from the fit set). Set ``valid_fraction`` to 0 to disable early stopping.

Determinism: a fixed ``seed`` and ``nthread`` give byte-identical models and predictions on CPU.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import xgboost as xgb

from kairos_dagster.ml.dataset import (
    LABEL_END,
    DatasetError,
    assert_no_target_features,
    feature_matrix,
    fit_categories,
    require_columns,
    with_label_end,
)
from kairos_dagster.ml.metrics import auc, evaluate

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary:logistic",
    "eval_metric": "logloss",
    "tree_method": "hist",
    "max_depth": 4,
    "learning_rate": 0.05,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "min_child_weight": 20.0,
    "reg_lambda": 1.0,
    "max_bin": 256,
    "num_boost_round": 300,
    "early_stopping_rounds": 30,
    "valid_fraction": 0.2,
}
CONTROL_KEYS = ("num_boost_round", "early_stopping_rounds", "valid_fraction")
TOP_GAIN = 20


@dataclass(frozen=True)
class TrainedModel:
    booster: xgb.Booster
    features: tuple[str, ...]
    categories: dict[str, list[str]]
    label: str
    params: dict[str, Any]  # DEFAULT_PARAMS-style, controls included
    seed: int
    best_iteration: int  # trees kept = best_iteration + 1
    n_rows: int
    n_fit_rows: int
    n_valid_rows: int
    train_seconds: float
    valid_metrics: dict[str, float] = field(default_factory=dict)
    feature_gain: list[tuple[str, float]] = field(default_factory=list)  # top 20 by total gain


def split_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(booster params, training controls), with DEFAULT_PARAMS filling what is not given."""
    merged = {**DEFAULT_PARAMS, **params}
    controls = {k: merged.pop(k) for k in CONTROL_KEYS}
    return merged, controls


def _tail_split(frame: pl.DataFrame, valid_fraction: float) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Time-ordered tail for early stopping, with the fit rows purged against it."""
    dates = frame["date"].unique().sort()
    n_valid = int(round(valid_fraction * len(dates)))
    if valid_fraction <= 0 or n_valid < 1 or n_valid >= len(dates):
        return frame, frame.clear()
    first_valid = dates[len(dates) - n_valid]
    if LABEL_END not in frame.columns:
        frame = with_label_end(frame)
    fit = frame.filter(pl.col(LABEL_END) < first_valid)
    valid = frame.filter(pl.col("date") >= first_valid)
    if fit.height == 0:
        return frame, frame.clear()
    return fit, valid


def train_classifier(train_frame: pl.DataFrame, features: Sequence[str], label: str,
                     params: Mapping[str, Any] | None = None, *, seed: int, device: str = "cpu",
                     n_threads: int = 2, ret_col: str | None = "ret_5d_f") -> TrainedModel:
    """Fit a binary XGBoost classifier of ``label`` on ``features`` (rows keyed ticker, date)."""
    assert_no_target_features(features)
    require_columns(train_frame, ["ticker", "date", *features, label], "training rows")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if train_frame[label].null_count():
        raise DatasetError(f"training rows have {train_frame[label].null_count()} null {label} values")
    started = time.perf_counter()
    booster_params, controls = split_params(params or {})
    booster_params |= {"seed": seed, "nthread": n_threads, "device": device, "verbosity": 0}
    frame = train_frame.sort(["date", "ticker"])
    categories = fit_categories(frame, features)
    fit, valid = _tail_split(frame, float(controls["valid_fraction"]))
    names = list(features)
    dfit = xgb.DMatrix(feature_matrix(fit, names, categories), label=fit[label].to_numpy(), feature_names=names)
    evals, stop = [], None
    if valid.height:
        dvalid = xgb.DMatrix(feature_matrix(valid, names, categories), label=valid[label].to_numpy(),
                             feature_names=names)
        evals, stop = [(dvalid, "valid")], int(controls["early_stopping_rounds"]) or None
    booster = xgb.train(booster_params, dfit, num_boost_round=int(controls["num_boost_round"]),
                        evals=evals, early_stopping_rounds=stop, verbose_eval=False)
    best = booster.best_iteration if stop else booster.num_boosted_rounds() - 1
    booster = booster[: best + 1]  # keep only the trees up to the early-stopping optimum
    valid_metrics: dict[str, float] = {}
    if valid.height:
        scored = valid.with_columns(pl.Series("_p", booster.predict(dvalid).astype(np.float64)))
        valid_metrics = evaluate(scored, "_p", label, ret_col if ret_col in valid.columns else None)
    gain = booster.get_score(importance_type="total_gain")
    top = sorted(gain.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_GAIN]
    return TrainedModel(
        booster=booster, features=tuple(names), categories=categories, label=label,
        params={**DEFAULT_PARAMS, **(params or {})}, seed=seed, best_iteration=int(best),
        n_rows=frame.height, n_fit_rows=fit.height, n_valid_rows=valid.height,
        train_seconds=time.perf_counter() - started, valid_metrics=valid_metrics,
        feature_gain=[(k, float(v)) for k, v in top],
    )


def predict_proba(model: TrainedModel, frame: pl.DataFrame, features: Sequence[str] | None = None) -> pl.Series:
    """Predicted probability of the label for every row of ``frame`` (Float64, same order)."""
    names = list(model.features if features is None else features)
    if tuple(names) != model.features:
        raise DatasetError(f"scoring features {names} differ from the model's {list(model.features)}")
    x = feature_matrix(frame, names, model.categories)
    p = model.booster.predict(xgb.DMatrix(x, feature_names=names)) if len(x) else np.empty(0, np.float32)
    return pl.Series("proba", p.astype(np.float64))


def train_auc(model: TrainedModel, frame: pl.DataFrame) -> float:
    """In-sample AUC (a sanity metric only)."""
    return auc(frame[model.label].to_numpy(), predict_proba(model, frame).to_numpy())
