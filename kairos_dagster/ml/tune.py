"""Optuna tuning of the XGBoost classifier with purged walk-forward CV inside the training window.

Objective (maximised): the mean over CV folds of the fold's mean per-date Spearman rank IC between
the predicted probability and ``ret_5d_f`` on the fold's out-of-sample dates. Rank IC is what the
portfolio consumes (it ranks names by the score); AUC of the label is used instead only
when no return column is given. Pruning: after each fold the running mean is reported as an
intermediate value and ``MedianPruner`` stops trials that trail the median of earlier trials.

Folds: the training dates are cut into ``n_folds + 1`` contiguous blocks; fold k validates on block
k (k = 1..n_folds) and fits on rows whose label horizon ended before the block's first date minus
``embargo_weeks`` weeks (purge + embargo by label end date), an expanding window.

Subsampled CV, for speed (a 20-trial tuning at 5,000 tickers x 10 years must fit in minutes): each
fold fits on the rows of a fixed, seeded subset of ``fit_fraction`` of the tickers (the same subset in
every fold and trial, so trials stay comparable) with ``cv_max_bin`` histogram bins; the OOS block is
scored on all of its rows. The returned parameters are for the full-data fit (default ``max_bin``).
Each fold's fit rows are quantized and its OOS rows converted once per tuning, not once per trial.

Search space: max_depth 2..6, learning_rate 0.01..0.2 (log), num_boost_round max_boost_rounds/8..max_boost_rounds (log; default 400), subsample
0.5..1, colsample_bytree 0.5..1, min_child_weight 1..100 (log), reg_lambda 1e-3..10 (log).
Early stopping everywhere, as in the final fit: a CV fit stops on the purged ``cv_valid_fraction`` tail of
its own fit dates (never on the fold's OOS block, which must not choose its own tree count), so
``num_boost_round`` is an upper bound and a trial with a fast learning rate stops in tens of trees.

Storage: ``None`` keeps the study in memory; a string with ``://`` is an Optuna RDB URL (e.g.
``sqlite:///tune.db``); any other path is a file: ``*.db``/``*.sqlite`` become SQLite, anything else
(or ``<dir>/<study_name>.journal`` for an existing directory) an append-only JournalStorage file,
safe for several processes on one machine. ``load_if_exists=True``, so parallel workers (give each a
different ``seed``, or they propose the same startup trials) add their trials to one study.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import polars as pl
import sqlalchemy.exc
import sqlalchemy.pool
import xgboost as xgb
from optuna.storages.journal import JournalFileBackend, JournalStorage
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_incrementing

from kairos_dagster.ml.dataset import LABEL_END, DatasetError, feature_matrix, with_label_end
from kairos_dagster.ml.metrics import auc, ic_stats, rank_ic_by_date
from kairos_dagster.ml.train import DEFAULT_PARAMS, boost, fit_matrix


class TuningInfeasible(DatasetError):
    """Not even one purged, embargoed CV fold fits in the tuning window: keep the fixed parameters."""


@dataclass(frozen=True)
class TuneResult:
    best_params: dict[str, Any]  # DEFAULT_PARAMS merged with the best trial's parameters
    summary: dict[str, Any]  # study name, trial counts, best value and trial, objective, folds


def resolve_storage(storage: str | Path | None, study_name: str) -> str | optuna.storages.BaseStorage | None:
    """Map the ``storage`` argument to something ``optuna.create_study`` accepts (module docstring)."""
    if storage is None:
        return None
    if isinstance(storage, str) and "://" in storage:
        return _rdb_storage(storage)
    path = Path(storage)
    if path.is_dir():
        path = path / f"{study_name}.journal"
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path.resolve()}"
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def _rdb_storage(url: str, attempts: int = 6) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage. Workers that start together on a new database race to create its tables and
    enum types; on PostgreSQL an advisory lock makes them take turns, elsewhere the loser's duplicate error
    is retried and it finds the schema made."""
    make = Retrying(stop=stop_after_attempt(attempts), wait=wait_incrementing(start=0.2, increment=0.2),
                    retry=retry_if_exception(_is_duplicate_schema), reraise=True)
    if not url.startswith(("postgresql", "postgres://")):
        return make(optuna.storages.RDBStorage, url)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as con:
            con.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _SCHEMA_LOCK})
            try:
                return make(optuna.storages.RDBStorage, url)
            finally:
                con.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _SCHEMA_LOCK})
    finally:
        engine.dispose()


_SCHEMA_LOCK = 0x6B6169726F73  # "kairos": the advisory lock key for creating Optuna's schema


def _is_duplicate_schema(exc: BaseException) -> bool:
    if isinstance(exc, sqlalchemy.exc.IntegrityError):
        return True
    return isinstance(exc, sqlalchemy.exc.ProgrammingError) and "already exists" in str(exc.orig)


def suggest_params(trial: optuna.Trial, max_boost_rounds: int = 400) -> dict[str, Any]:
    return {
        "max_depth": trial.suggest_int("max_depth", 2, 6),
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
        "num_boost_round": trial.suggest_int("num_boost_round", max(5, max_boost_rounds // 8), max_boost_rounds,
                                             log=True),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
        "min_child_weight": trial.suggest_float("min_child_weight", 1.0, 100.0, log=True),
        "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 10.0, log=True),
    }


def _fold_bounds(n_dates: int, n_folds: int) -> list[int]:
    return [round(i * n_dates / (n_folds + 1)) for i in range(n_folds + 2)]


def fold_infeasibility(dates: Sequence[dt.date], label_ends: Sequence[dt.date], n_folds: int,
                       embargo_weeks: int) -> str:
    """Why ``n_folds`` purged, embargoed CV folds cannot be cut from these training dates ("" if they can).

    ``dates`` are the distinct training dates (sorted) and ``label_ends`` the earliest label end of the
    rows on each date: a fold needs at least one fit row whose label ended before its OOS block's first
    date minus the embargo, and every block at least two dates. Pure (no frame), so the demo's planner
    and the tuner decide alike: the planner passes calendar horizons, the tuner the rows' own."""
    if n_folds < 1:
        return f"{n_folds} folds"
    n = len(dates)
    if n < 2 * (n_folds + 1):
        return f"{n} dates < {2 * (n_folds + 1)} for {n_folds}"
    bounds = _fold_bounds(n, n_folds)
    earliest_end = min(label_ends)
    for k in range(1, n_folds + 1):
        cutoff = dates[bounds[k]] - dt.timedelta(weeks=embargo_weeks)
        if not earliest_end < cutoff:
            return (f"{n} dates: fold {k} of {n_folds} has no fit rows with label ending before {cutoff}")
    return ""


def feasible_folds(dates: Sequence[dt.date], label_ends: Sequence[dt.date], n_folds: int,
                   embargo_weeks: int) -> tuple[int, str]:
    """(the most folds <= ``n_folds`` that are feasible, 0 if none; why the planned count was cut, or "")."""
    why = fold_infeasibility(dates, label_ends, n_folds, embargo_weeks)
    if not why:
        return n_folds, ""
    for k in range(n_folds - 1, 0, -1):
        if not fold_infeasibility(dates, label_ends, k, embargo_weeks):
            return k, why
    return 0, why


def frame_folds(frame: pl.DataFrame, n_folds: int, embargo_weeks: int) -> tuple[int, str]:
    """``feasible_folds`` for training rows (their dates and each date's earliest label end)."""
    if LABEL_END not in frame.columns:
        frame = with_label_end(frame)
    per_date = frame.group_by("date").agg(pl.col(LABEL_END).min()).sort("date")
    return feasible_folds(per_date["date"].to_list(), per_date[LABEL_END].to_list(), n_folds, embargo_weeks)


def cv_folds(frame: pl.DataFrame, n_folds: int, embargo_weeks: int) -> list[tuple[pl.DataFrame, pl.DataFrame]]:
    """Purged, embargoed, expanding walk-forward folds (fit rows, OOS rows)."""
    if LABEL_END not in frame.columns:
        frame = with_label_end(frame)
    dates = frame["date"].unique().sort()
    if len(dates) < 2 * (n_folds + 1):
        raise DatasetError(f"tuning window has {len(dates)} dates; {n_folds} CV folds need at least "
                           f"{2 * (n_folds + 1)}")
    bounds = _fold_bounds(len(dates), n_folds)
    folds = []
    for k in range(1, n_folds + 1):
        first, last = dates[bounds[k]], dates[bounds[k + 1] - 1]
        cutoff = first - dt.timedelta(weeks=embargo_weeks)
        fit = frame.filter(pl.col(LABEL_END) < cutoff)
        oos = frame.filter(pl.col("date").is_between(first, last))
        if fit.height == 0:
            raise DatasetError(f"CV fold {k}: no fit rows with label ending before {cutoff}")
        folds.append((fit, oos))
    return folds


def fold_score(oos: pl.DataFrame, proba: pl.Series, label: str, ret_col: str | None) -> float:
    if ret_col is None:
        return auc(oos[label].to_numpy(), proba.to_numpy())
    ic = rank_ic_by_date(oos.with_columns(proba.alias("_p")), "_p", ret_col)["rank_ic"]
    return ic_stats(ic)["rank_ic"]


def tune(train_frame: pl.DataFrame, features: Sequence[str], label: str, *, n_trials: int = 8, seed: int,
         storage: str | Path | None = None, study_name: str, n_jobs: int = 1, n_folds: int = 3,
         embargo_weeks: int = 1, ret_col: str | None = "ret_5d_f", base_params: Mapping[str, Any] | None = None,
         n_threads: int = 2, device: str = "cpu", worker: str | None = None,
         max_boost_rounds: int = 400, fit_fraction: float = 0.4, cv_max_bin: int = 64,
         cv_valid_fraction: float = 0.2) -> TuneResult:
    """Run ``n_trials`` more trials of the study and return the study's best parameters."""
    if ret_col is not None and ret_col not in train_frame.columns:
        raise DatasetError(f"tuning rows lack the return column {ret_col!r} the objective needs")
    if not 0.0 < fit_fraction <= 1.0:
        raise ValueError(f"fit_fraction must be in (0, 1], got {fit_fraction}")
    base = {**DEFAULT_PARAMS, **(base_params or {}), "valid_fraction": cv_valid_fraction, "max_bin": cv_max_bin}
    planned_folds = n_folds
    # A short window (a holiday moves its end, the first tune after the anchor) gets fewer folds, never
    # an aborted run; not even one fold: the caller keeps the fixed parameters (TuningInfeasible).
    n_folds, folds_why = frame_folds(train_frame, planned_folds, embargo_weeks)
    if n_folds == 0:
        raise TuningInfeasible(f"tuning: 0 folds ({folds_why}); fixed parameters kept")
    folds = cv_folds(train_frame.sort(["date", "ticker"]), n_folds, embargo_weeks)
    if fit_fraction < 1.0:
        tickers = train_frame["ticker"].unique().sort()
        rng = np.random.default_rng(seed)
        keep = pl.Series(rng.choice(tickers.to_numpy(), max(1, round(fit_fraction * len(tickers))), replace=False))
        folds = [(fit.filter(pl.col("ticker").is_in(keep.implode())), oos) for fit, oos in folds]
    worker = worker or f"pid{os.getpid()}"
    # Each fold's rows are quantized once for every trial: the trials differ only in booster parameters.
    matrices = [fit_matrix(fit, features, label, max_bin=cv_max_bin, valid_fraction=cv_valid_fraction, seed=seed,
                           n_threads=n_threads) for fit, _ in folds]
    oos_x = [xgb.DMatrix(feature_matrix(oos, list(features), m.categories), feature_names=list(features))
             for (_, oos), m in zip(folds, matrices, strict=True)]

    def objective(trial: optuna.Trial) -> float:
        params = {**base, **suggest_params(trial, max_boost_rounds)}
        trial.set_user_attr("worker", worker)
        scores = []
        for k, ((_, oos), matrix, x) in enumerate(zip(folds, matrices, oos_x, strict=True)):
            booster, _ = boost(matrix, params, seed=seed, device=device, n_threads=n_threads)
            proba = pl.Series("proba", booster.predict(x).astype(np.float64))
            s = fold_score(oos, proba, label, ret_col)
            scores.append(0.0 if math.isnan(s) else s)
            trial.report(sum(scores) / len(scores), step=k)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return sum(scores) / len(scores)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=resolve_storage(storage, study_name), study_name=study_name, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
        load_if_exists=True,
    )
    study.optimize(objective, n_trials=n_trials, n_jobs=n_jobs)
    states = [t.state for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(f"study {study_name}: no trial completed ({len(states)} trials)")
    best = study.best_trial
    summary = {
        "study_name": study_name, "n_trials": len(states),
        "n_complete": len(complete),
        "n_pruned": sum(s == optuna.trial.TrialState.PRUNED for s in states),
        "best_value": best.value, "best_trial": best.number, "best_trial_params": best.params,
        "objective": "mean_rank_ic" if ret_col else "auc", "n_folds": n_folds,
        "n_folds_planned": planned_folds, "n_dates": train_frame["date"].n_unique(),
        "folds_note": f"tuning: {n_folds} folds" + (f" ({folds_why})" if folds_why else ""),
        "embargo_weeks": embargo_weeks,
        "seed": seed, "rows": train_frame.height, "fit_fraction": fit_fraction, "cv_max_bin": cv_max_bin,
        "cv_valid_fraction": cv_valid_fraction,
        "train_start": train_frame["date"].min(), "train_end": train_frame["date"].max(),
    }
    best_params = {**DEFAULT_PARAMS, **(base_params or {}), **best.params}
    return TuneResult(best_params=best_params, summary=summary)
