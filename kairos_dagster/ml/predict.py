"""Walk-forward scoring: the one dagster-free entry point of the ML assets.

``walk_forward_predict`` plans the model of every requested week (``schedule.model_schedule``),
reuses each model from the registry when its version exists and otherwise tunes (optionally),
trains and saves it, then scores every session of the requested weeks for all feature rows given.
Because the plan depends only on the week and the configuration, and every random seed is fixed,
one call over a span and one call per week give identical predictions (and reuse the same models).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from kairos_dagster.features.targets import ML_LABEL
from kairos_dagster.ml import registry
from kairos_dagster.ml.dataset import (
    KEY,
    DatasetError,
    MissingHistoryError,
    assert_no_target_features,
    assert_unique_keys,
    require_columns,
    training_rows,
)
from kairos_dagster.ml.metrics import empty_metrics, evaluate, metric_rows
from kairos_dagster.ml.schedule import ModelPlan, config_hash, first_scorable_week, model_schedule
from kairos_dagster.ml.train import DEFAULT_PARAMS, predict_proba, train_classifier
from kairos_dagster.ml.tune import TuningInfeasible, tune

# A retrain point with fewer training dates than this reuses the previous model (a 20% early-stopping
# tail needs at least one date, and a model of two weeks of rows is noise).
MIN_TRAIN_DATES = 4
# Part of every model and tune version: a registry written by an earlier way of fitting or tuning (v1: full
# quantile sketch, CV fits without early stopping; v2: sampled sketch, all rows where a feature is sparse
# in the sample) is not taken for this one's (v3: sampled sketch, a sparse feature's cuts from a sample of
# its own values; CV fits early-stopped on their own tail), even where the parameters are the same.
FIT_PROCEDURE = 3
ALPHA_COLUMNS = {"ml_predictions_v2": "alpha_ml_v2_clf", "ml_predictions_v2_tuned": "alpha_ml_v2_tuned_clf"}


@dataclass(frozen=True)
class TunerConfig:
    """Optuna settings for a tuned model (``ml_predictions_v2_tuned``)."""

    n_trials: int = 8
    n_folds: int = 3
    storage_dir: Path | None = None  # default <models_dir>/<model_name>/optuna (journal files)
    # A database URL (e.g. postgresql://..., sqlite:///...): every study in one database, so several
    # worker processes can tune the same study in parallel (load_if_exists). Wins over storage_dir.
    storage_url: str | None = None


@dataclass(frozen=True)
class WalkForwardResult:
    predictions: pl.DataFrame  # ticker, date, <alpha_column>, model_version
    registry: pl.DataFrame  # ml_model_registry rows of the models used
    metrics: pl.DataFrame  # ml_metrics rows (train / valid per model, oos per scored week with labels)
    plans: dict[dt.date, ModelPlan]
    unscored_weeks: dict[dt.date, str] = field(default_factory=dict)  # week -> why no model scores it
    notes: dict[dt.date, str] = field(default_factory=dict)  # retrain week -> tuning folds / model reuse


def _week_of(col: str = "date") -> pl.Expr:
    return (pl.col(col) - pl.duration(days=pl.col(col).dt.weekday() - 1)).alias("week")


def walk_forward_predict(
    features_frame: pl.DataFrame, labels_frame: pl.DataFrame, weeks: Sequence[dt.date], *,
    model_name: str, features: Sequence[str], anchor: dt.date, models_dir: Path | str,
    alpha_column: str = "alpha_ml_v2_clf", params: Mapping[str, Any] | None = None,
    tuner: TunerConfig | None = None, label: str = ML_LABEL, ret_col: str = "ret_5d_f",
    retrain_weeks: int = 13, retune_weeks: int = 52, embargo_weeks: int = 1,
    max_train_weeks: int | None = None, rows: str = "weekly", seed: int = 42, device: str = "cpu",
    n_threads: int = 2,
) -> WalkForwardResult:
    """Score every session of ``weeks`` (Mondays) with the walk-forward model of each week.

    ``features_frame`` must hold the scored weeks and, for models not yet in the registry, history
    back to their training start; ``labels_frame`` is feat_targets (``label``, ``ret_col``).
    With ``tuner`` the parameters come from Optuna at the plan's tune point (``params`` then
    only overrides the base), otherwise ``DEFAULT_PARAMS`` updated with ``params``.
    """
    features = list(features)
    assert_no_target_features(features, labels_frame.columns)
    require_columns(features_frame, [*KEY, *features], "features")
    require_columns(labels_frame, [*KEY, label, ret_col], "feat_targets")
    if not weeks:
        raise ValueError("weeks is empty")
    sched = {"anchor": anchor, "retrain_weeks": retrain_weeks, "retune_weeks": retune_weeks,
             "embargo_weeks": embargo_weeks, "max_train_weeks": max_train_weeks}
    plans = {w: model_schedule(w, model_name=model_name, **sched) for w in sorted(set(weeks))}
    base_config = {"features": features, "label": label, "rows": rows, "seed": seed, "device": device,
                   "procedure": FIT_PROCEDURE, **sched}
    by_retrain: dict[dt.date, list[dt.date]] = {}
    for w, p in plans.items():
        by_retrain.setdefault(p.retrain_week, []).append(w)

    def rows_for(start: dt.date, end: dt.date, label_end: dt.date) -> tuple[pl.DataFrame, dict[str, int]]:
        return training_rows(features_frame, labels_frame, features, label, start=start, end=end,
                             label_end=label_end, rows=rows, ret_col=ret_col)

    def params_for(plan: ModelPlan) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The model's parameters and, for a tuned model, the tune record (tuned or fixed, with why)."""
        fixed = {**DEFAULT_PARAMS, **(params or {})}
        if tuner is None:
            return fixed, None
        tune_cfg = {**base_config, "base_params": dict(params or {}), "n_trials": tuner.n_trials,
                    "n_folds": tuner.n_folds}
        tune_version = f"{plan.tune_version}_{config_hash({'model_name': model_name, **tune_cfg})}"
        record = registry.load_tuning(models_dir, model_name, tune_version)
        if record is None:
            try:
                tframe, _ = rows_for(plan.tune_train_start, plan.tune_train_end, plan.tune_label_end)
                folder = tuner.storage_dir or Path(models_dir) / model_name / "optuna"
                storage = tuner.storage_url or Path(folder) / f"{tune_version}.journal"
                res = tune(tframe, features, label, n_trials=tuner.n_trials, seed=seed,
                           storage=storage, study_name=tune_version,
                           n_folds=tuner.n_folds, embargo_weeks=embargo_weeks, ret_col=ret_col,
                           base_params=params, n_threads=n_threads, device=device)
                record = {"tune_version": tune_version, "status": "tuned", "best_params": res.best_params,
                          **res.summary}
            except MissingHistoryError:
                raise
            except DatasetError as exc:  # TuningInfeasible, or no labelled rows at all in the window
                note = str(exc) if isinstance(exc, TuningInfeasible) else f"tuning: 0 folds ({exc}); fixed parameters kept"
                record = {"tune_version": tune_version, "status": "fixed_params", "best_params": fixed,
                          "n_folds": 0, "n_folds_planned": tuner.n_folds, "folds_note": note,
                          "train_start": plan.tune_train_start, "train_end": plan.tune_train_end}
            registry.save_tuning(models_dir, model_name, tune_version, record)
        return dict(record["best_params"]), record

    first_week = first_scorable_week(anchor, retrain_weeks)
    fitted: dict[dt.date, tuple[ModelPlan, str | None, str]] = {}

    def model_for(retrain: dt.date) -> tuple[ModelPlan, str | None, str]:
        """(plan bound to its config, the version that scores its weeks or None, why) for a retrain point.

        A retrain point whose window has too few training rows reuses the previous point's model; the
        first one, with no previous model, leaves its weeks unscored. Decided from the rows alone, so a
        span backfill and a week-by-week run decide the same."""
        if retrain in fitted:
            return fitted[retrain]
        plan = model_schedule(retrain, model_name=model_name, **sched)
        model_params, tune_record = params_for(plan)
        plan = plan.with_config({**base_config, "params": model_params})
        version, why = plan.version, ""
        if not registry.has_model(models_dir, model_name, version):
            try:
                frame, stats = rows_for(plan.train_start, plan.train_end, plan.label_end)
                n_dates = frame["date"].n_unique()
                short = "" if n_dates >= MIN_TRAIN_DATES else f"{n_dates} training dates < {MIN_TRAIN_DATES}"
            except MissingHistoryError:
                raise
            except DatasetError as exc:
                frame, stats, short = None, {}, str(exc)
            if short:
                previous = retrain - dt.timedelta(weeks=retrain_weeks)
                if previous < first_week:
                    fitted[retrain] = (plan, None, f"no model: {short} and no earlier model; weeks left unscored")
                    return fitted[retrain]
                _, prev_version, prev_why = model_for(previous)
                why = f"{short}: reused the previous model {prev_version}" if prev_version else prev_why
                fitted[retrain] = (plan, prev_version, why)
                return fitted[retrain]
            model = train_classifier(frame, features, label, model_params, seed=seed, device=device,
                                     n_threads=n_threads, ret_col=ret_col)
            extra = {"retrain_week": plan.retrain_week, "fold": plan.fold, "rows_null_label": stats["rows_null_label"],
                     "rows_horizon_after_label_end": stats["rows_horizon_after_label_end"],
                     "train_rows_start": frame["date"].min(), "train_rows_end": frame["date"].max(),
                     "label_end_used": frame["label_end_date"].max(), "train_dates": n_dates}
            if tune_record is not None:
                extra |= {"tune": tune_record}
            registry.save_model(model, models_dir, model_name, version, train_start=plan.train_start,
                                train_end=plan.train_end, label_end=plan.label_end, extra=extra)
        fitted[retrain] = (plan, version, why)
        return fitted[retrain]

    preds, reg_rows, metric_frames = [], [], []
    unscored: dict[dt.date, str] = {}
    notes: dict[dt.date, str] = {}
    used: set[str] = set()
    for retrain, model_weeks in by_retrain.items():  # one iteration per model, not per ticker/date
        plan, version, why = model_for(retrain)
        for w in model_weeks:
            plans[w] = replace(plans[w], config_hash=plan.config_hash)
        if why:
            notes[retrain] = why
        if version is None:
            unscored.update({w: why for w in model_weeks})
            continue
        reused = version != plan.version
        card = registry.load_card(models_dir, model_name, version)
        tune_info = card.get("tune") or {}
        decisions = {"reused_previous_model": float(reused), "train_dates": float(card.get("train_dates") or 0)}
        if tuner is not None:
            decisions |= {"tune_folds": float(tune_info.get("n_folds", 0)),
                          "tune_folds_planned": float(tune_info.get("n_folds_planned", tuner.n_folds))}
            if tune_info.get("folds_note"):
                notes.setdefault(retrain, tune_info["folds_note"])
        metric_frames.append(metric_rows(model_name, version, plan.fold, retrain, "plan", decisions))
        if version not in used:
            used.add(version)
            model = registry.load_model(models_dir, model_name, version)
            reg_rows.append(registry.registry_row(models_dir, model_name, version))
            train_stats = {"rows": card["rows"], "fit_rows": card["fit_rows"], "valid_rows": card["valid_rows"],
                           "rows_null_label": card.get("rows_null_label", 0),
                           "rows_horizon_after_label_end": card.get("rows_horizon_after_label_end", 0),
                           "train_seconds": card["train_seconds"],
                           "best_iteration": card["best_iteration"]}
            metric_frames.append(metric_rows(model_name, version, plan.fold, retrain, "train", train_stats))
            metric_frames.append(metric_rows(model_name, version, plan.fold, retrain, "valid", card["cv_metrics"],
                                             [(f, g) for f, g in card["feature_gain"]]))
        else:
            model = registry.load_model(models_dir, model_name, version)

        scored = features_frame.with_columns(_week_of()).filter(pl.col("week").is_in(model_weeks))
        assert_unique_keys(scored, "features")
        have = set(scored["week"].unique().to_list())
        lacking = [w for w in model_weeks if w not in have]
        if lacking:
            raise DatasetError(f"features has no rows in week(s) {lacking} to score")
        scored = scored.sort(["date", "ticker"])
        out = scored.select(
            "ticker", "date", predict_proba(model, scored, features).alias(alpha_column),
            pl.lit(version).alias("model_version"), "week")
        preds.append(out.drop("week"))
        # OOS quality for scored weeks whose labels are already known
        lab = out.join(labels_frame.select([*KEY, label, ret_col]), on=list(KEY), how="inner").filter(
            pl.col(label).is_not_null())
        for (week,), part in lab.partition_by("week", as_dict=True, maintain_order=True).items():
            m = evaluate(part, alpha_column, label, ret_col)
            metric_frames.append(metric_rows(model_name, version, plan.fold, week, "oos",
                                             {k: m[k] for k in ("auc", "rank_ic", "n_dates", "rows")}))

    if unscored:  # weeks with no model at all: null alphas, counted and explained
        blank = features_frame.select(KEY).with_columns(_week_of()).filter(pl.col("week").is_in(list(unscored)))
        preds.append(blank.select("ticker", "date", pl.lit(None, pl.Float64).alias(alpha_column),
                                  pl.lit(None, pl.String).alias("model_version")))
    predictions = pl.concat(preds).sort(["date", "ticker"])
    metrics = pl.concat(metric_frames) if metric_frames else empty_metrics()
    return WalkForwardResult(predictions=predictions, registry=registry.registry_frame(reg_rows),
                             metrics=metrics, plans=plans, unscored_weeks=unscored, notes=notes)
