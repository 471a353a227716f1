"""Phase 6 — walk-forward XGBoost alphas (``ml_predictions_v2``, ``ml_predictions_v2_tuned``).

Thin shells over ``kairos_dagster.ml.predict.walk_forward_predict``:

* Rows: every universe (ticker, date) of every session of the window; ``alpha_ml_v2_clf`` /
  ``alpha_ml_v2_tuned_clf`` is the predicted probability that the row's market-residual 5-session
  forward return (ret_5d_resid_f = ret_5d_f - beta * market) lands above its date's median
  (``label_resid_above_median_5d``; why this label: features.technical.feat_targets), ``model_version``
  the model.
* History: the training rows (universe on weekly rebalance dates, back to the training start of the
  oldest model the window needs) are read straight from the warehouse with one SQL join restricted
  to those dates (``ml.tables.load_matrix``), not through a lookback partition mapping that would
  load every session of every feature table since the anchor. The feature tables, regime, tickers
  and feat_targets are declared as ``deps`` so lineage and run ordering stay visible.
* Schedule: anchored to ``MLResource.anchor`` (KAIROS_ML_ANCHOR, default the first partition
  KAIROS_START_DATE plus the universe warm-up, ``default_anchor``), so a single-run backfill of any span and a week-by-week run give identical
  models and predictions. Weeks before ``first_scorable_week`` get null alphas (noted in metadata).
* Models are saved under ``<models_dir>/<model_name>/<version>/`` and reused on reruns; the run
  upserts their rows into ``ml_model_registry`` and their metrics into ``ml_metrics``.
"""

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetsDefinition,
    ConfigurableResource,
    EnvVar,
    MetadataValue,
    asset,
)

from kairos_dagster.assets.metadata import frame_metadata, markdown_table, weekly_output
from kairos_dagster.calendar import rebalance_dates_between
from kairos_dagster.features import technical
from kairos_dagster.features import universe as universe_core
from kairos_dagster.ml import tables
from kairos_dagster.ml.dataset import MissingHistoryError
from kairos_dagster.ml.metrics import ic_stats
from kairos_dagster.ml.predict import ALPHA_COLUMNS, TunerConfig, walk_forward_predict
from kairos_dagster.ml.schedule import first_scorable_week, model_schedule
from kairos_dagster.partitions import SINGLE_RUN, WEEKLY, weeks_for_sessions, window_dates
from kairos_dagster.settings import Settings
from kairos_dagster.warehouse.io_manager import DuckDBWarehouse

COMMON = dict(
    partitions_def=WEEKLY,
    backfill_policy=SINGLE_RUN,
    pool="duckdb",
    io_manager_key="warehouse_io",
    kinds={"duckdb", "polars", "xgboost"},
)
KEY = ["ticker", "date"]
LABEL = technical.ML_LABEL
RET = "ret_5d_f"
MODEL_NAMES = {"ml_predictions_v2": "ml_v2", "ml_predictions_v2_tuned": "ml_v2_tuned"}
ANCHOR_WARMUP_WEEKS = weeks_for_sessions(universe_core.ADV_WINDOW)
ML_CHECKS = ("unique_keys", "rows_match_universe", "scorable_rows_scored")


class MLResource(ConfigurableResource):
    """Walk-forward configuration of the ML assets (from settings; see README for the variables)."""

    models_dir: str
    anchor: str  # ISO Monday of the walk-forward grid (KAIROS_ML_ANCHOR or KAIROS_START_DATE)
    retrain_weeks: int = 13
    retune_weeks: int = 52
    embargo_weeks: int = 1
    max_train_weeks: int = 0  # 0: expanding window since the anchor
    n_trials: int = 6
    n_folds: int = 3
    optuna_dir: str = ""  # "": <models_dir>/<model_name>/optuna
    optuna_url: str = ""  # a database URL: all studies in one database (parallel workers)
    device: str = "cpu"
    seed: int = 42
    n_threads: int = 2
    params_json: str = ""  # overrides of ml.train.DEFAULT_PARAMS (JSON object), e.g. for tests

    @property
    def anchor_date(self) -> dt.date:
        return dt.date.fromisoformat(self.anchor)

    def params(self) -> dict[str, Any]:
        return json.loads(self.params_json) if self.params_json else {}

    def schedule_kwargs(self) -> dict[str, Any]:
        return {"anchor": self.anchor_date, "retrain_weeks": self.retrain_weeks,
                "retune_weeks": self.retune_weeks, "embargo_weeks": self.embargo_weeks,
                "max_train_weeks": self.max_train_weeks or None}

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> "MLResource":
        kw: dict[str, Any] = dict(
            models_dir=str(settings.models_dir), anchor=default_anchor(settings).isoformat(),
            retrain_weeks=settings.ml_retrain_weeks, retune_weeks=settings.ml_retune_weeks,
            n_trials=settings.ml_trials, device=settings.xgb_device,
            optuna_dir=str(settings.optuna_storage) if isinstance(settings.optuna_storage, Path) else "",
            # a database URL may carry a password: resolve it from the environment at run time (EnvVar),
            # so the UI and the run config show the variable's name, never its value
            optuna_url=EnvVar("KAIROS_OPTUNA_STORAGE") if isinstance(settings.optuna_storage, str) else "",
        )
        return cls(**{**kw, **overrides})


def default_anchor(settings: Settings) -> dt.date:
    """KAIROS_ML_ANCHOR, else the first partition plus the universe's warm-up: the universe needs
    ``ADV_WINDOW`` sessions of prices, so rebalance dates before that have no rows to train on."""
    return settings.ml_anchor or settings.start_date + dt.timedelta(weeks=ANCHOR_WARMUP_WEEKS)


def scorable_weeks(weeks: list[dt.date], ml: MLResource) -> list[dt.date]:
    first = first_scorable_week(ml.anchor_date, ml.retrain_weeks)
    return [w for w in weeks if w >= first]


def _model_chunks(weeks: list[dt.date], ml: MLResource, model_name: str) -> list[list[dt.date]]:
    """The scored weeks grouped by the model that scores them (one retrain point each), in order."""
    chunks: dict[dt.date, list[dt.date]] = {}
    for w in weeks:
        chunks.setdefault(model_schedule(w, model_name=model_name, **ml.schedule_kwargs()).retrain_week, []).append(w)
    return list(chunks.values())


def _history_start(weeks: list[dt.date], ml: MLResource, tuned: bool, model_name: str) -> dt.date:
    """Earliest training row date any model (or tune) of ``weeks`` needs."""
    plans = [model_schedule(w, model_name=model_name, **ml.schedule_kwargs()) for w in weeks]
    starts = [p.train_start for p in plans] + ([p.tune_train_start for p in plans] if tuned else [])
    return min(starts)


def _fold_table(result_registry: pl.DataFrame, metrics: pl.DataFrame) -> pl.DataFrame:
    """One row per model used: training window/size/time, validation and OOS quality."""
    rows = []
    for reg in result_registry.iter_rows(named=True):
        v = reg["model_version"]
        m = metrics.filter(pl.col("model_version") == v)

        def val(split: str, metric: str, m: pl.DataFrame = m) -> float | None:
            x = m.filter((pl.col("split") == split) & (pl.col("metric") == metric) & pl.col("feature").is_null())
            return float(x["value"][0]) if x.height else None

        oos = m.filter(pl.col("split") == "oos")
        oos_ic = ic_stats(oos.filter(pl.col("metric") == "rank_ic")["value"])
        oos_auc = oos.filter(pl.col("metric") == "auc")["value"].drop_nans()
        fold = m["fold"][0] if m.height else None
        rows.append({
            "fold": fold, "model_version": v, "train_start": reg["train_start"], "train_end": reg["train_end"],
            "label_end": reg["label_end"], "train_rows": val("train", "rows"),
            "train_seconds": val("train", "train_seconds"), "valid_auc": val("valid", "auc"),
            "valid_rank_ic": val("valid", "rank_ic"), "valid_icir": val("valid", "icir"),
            "oos_weeks": int(oos_ic["n_dates"]), "oos_auc": float(oos_auc.mean()) if oos_auc.len() else None,
            "oos_rank_ic": oos_ic["rank_ic"], "oos_icir": oos_ic["icir"],
        })
    return pl.DataFrame(rows, infer_schema_length=None)


def _top_gain(metrics: pl.DataFrame, version: str) -> pl.DataFrame:
    return (metrics.filter((pl.col("model_version") == version) & (pl.col("metric") == "gain_total"))
            .select("feature", pl.col("value").alias("gain")).sort("gain", descending=True).head(20))


def _ml_asset(name: str, tuned: bool) -> AssetsDefinition:
    alpha = ALPHA_COLUMNS[name]
    model_name = MODEL_NAMES[name]
    feature_tables = list(tables.source_tables(tables.feature_columns()))
    deps = [AssetDep(t) for t in ["universe", "tickers", *feature_tables, "feat_targets"]]

    @asset(
        name=name,
        group_name="phase6_ml",
        deps=deps,
        check_specs=[AssetCheckSpec(c, asset=name) for c in ML_CHECKS],
        description=(f"{'Optuna-tuned' if tuned else 'Fixed-parameter'} XGBoost classifier, walk-forward: "
                     f"{alpha} = P(market-residual ret_5d_f above the date's median) for every universe row of the week."),
        metadata={"alpha_column": alpha, "model_name": model_name, "label": LABEL,
                  "training_rows": "universe on weekly rebalance dates"},
        **COMMON,
    )
    def _ml(context: AssetExecutionContext, warehouse: DuckDBWarehouse, ml: MLResource) -> Iterator:
        started = time.perf_counter()
        start, end = window_dates(context.partition_time_window)
        with warehouse.connect() as con:
            keys = con.execute("SELECT ticker, date FROM universe WHERE date >= ? AND date < ? ORDER BY ticker, date",
                               [start, end]).pl()
        weeks = sorted({d - dt.timedelta(days=d.weekday()) for d in keys["date"].unique().to_list()})
        scored_weeks = scorable_weeks(weeks, ml)
        md: dict[str, Any] = {}
        unscored: dict[dt.date, str] = {}
        schema = {alpha: pl.Float64, "model_version": pl.String}
        if not scored_weeks:
            out = keys.with_columns([pl.lit(None, t).alias(c) for c, t in schema.items()])
            first = first_scorable_week(ml.anchor_date, ml.retrain_weeks)
            md["note"] = MetadataValue.text(
                f"no model yet: the first scorable week is {first} (anchor {ml.anchor_date}, retrain every "
                f"{ml.retrain_weeks} weeks); {alpha} is null for all {out.height} rows of this window")
            metrics = registry = pl.DataFrame()
        else:
            tuner = None
            if tuned:
                tuner = TunerConfig(n_trials=ml.n_trials, n_folds=ml.n_folds,
                                    storage_dir=Path(ml.optuna_dir) / model_name if ml.optuna_dir else None,
                                    storage_url=ml.optuna_url or None)

            def predict(features_frame: pl.DataFrame, labels: pl.DataFrame, chunk: list[dt.date]):
                return walk_forward_predict(
                    features_frame, labels, chunk, model_name=model_name, features=tables.ml_features(),
                    models_dir=ml.models_dir, alpha_column=alpha, params=ml.params(), tuner=tuner, label=LABEL,
                    ret_col=RET, seed=ml.seed, device=ml.device, n_threads=ml.n_threads, **ml.schedule_kwargs())

            # Score one model's weeks at a time, so a 10-year single-run backfill holds one quarter of
            # feature rows in memory, not 12M rows x 150 columns. The usual weekly run scores with models
            # already in the registry: the training history (rebalance dates only) is loaded once, and
            # only when a model or a tuning must be fitted.
            history: pl.DataFrame | None = None
            labels_all: pl.DataFrame | None = None
            preds, registries, metric_frames = [], [], []
            unscored: dict[dt.date, str] = {}
            notes: dict[dt.date, str] = {}
            for chunk in _model_chunks(scored_weeks, ml, model_name):
                lo, hi = chunk[0], chunk[-1] + dt.timedelta(days=7)
                with warehouse.connect() as con:
                    window = tables.load_matrix(con, tables.ml_features(), lo, hi)
                    chunk_labels = labels_all if labels_all is not None else tables.load_labels(con, lo, hi, [])
                try:
                    result = predict(window, chunk_labels, chunk)
                except MissingHistoryError:
                    if history is None:
                        hist_start = _history_start(scored_weeks, ml, tuned, model_name)
                        train_dates = rebalance_dates_between(hist_start, end - dt.timedelta(days=1))
                        with warehouse.connect() as con:
                            history = tables.load_matrix(con, tables.ml_features(), hist_start, end, dates=train_dates)
                            labels_all = tables.load_labels(con, start, end, train_dates)
                        md["history_rows"] = MetadataValue.int(history.height)
                    result = predict(pl.concat([history.filter(pl.col("date") < lo), window], how="vertical"),
                                     labels_all, chunk)
                preds.append(result.predictions)
                registries.append(result.registry)
                metric_frames.append(result.metrics)
                unscored |= result.unscored_weeks
                notes |= result.notes
            md["training_history_loaded"] = MetadataValue.bool(history is not None)
            out = keys.join(pl.concat(preds), on=KEY, how="left", maintain_order="left")
            registry = pl.concat(registries, how="vertical_relaxed").unique("model_version", keep="first",
                                                                           maintain_order=True)
            metrics = pl.concat(metric_frames, how="vertical_relaxed").unique(maintain_order=True)
            with warehouse.connect() as con:
                if registry.height:
                    tables.upsert_registry(con, registry)
                if metrics.height:
                    tables.upsert_metrics(con, metrics)
            if notes:  # walk-forward decisions: fewer tuning folds, fixed parameters, a reused model
                md["walk_forward_decisions"] = MetadataValue.md(markdown_table(pl.DataFrame(
                    {"retrain_week": list(notes), "decision": list(notes.values())}), max_rows=100))
            md["unscored_weeks"] = MetadataValue.int(len(unscored))
            if unscored:
                md["unscored_weeks_why"] = MetadataValue.json({str(w): why for w, why in sorted(unscored.items())})
            if registry.height:
                folds = _fold_table(registry, metrics)
                latest = registry.sort("train_end")["model_version"][-1]
                md["models"] = MetadataValue.md(markdown_table(folds, max_rows=100))
                md["model_versions"] = MetadataValue.json(registry["model_version"].to_list())
                md["top_features_by_gain"] = MetadataValue.md(
                    f"Model {latest}\n\n" + markdown_table(_top_gain(metrics, latest), max_rows=20))
                md["training_rows"] = MetadataValue.int(int(folds["train_rows"].fill_null(0).max() or 0))
                md["training_seconds"] = MetadataValue.float(float(folds["train_seconds"].fill_null(0).sum()))
            oos = metrics.filter((pl.col("split") == "oos") & (pl.col("metric") == "rank_ic"))["value"]
            stats = ic_stats(oos)
            md["oos_rank_ic_mean"] = MetadataValue.float(stats["rank_ic"])
            md["oos_icir"] = MetadataValue.float(stats["icir"])
            md["oos_weeks_with_labels"] = MetadataValue.int(int(stats["n_dates"]))
            if len(scored_weeks) < len(weeks):
                md["note"] = MetadataValue.text(
                    f"weeks {[str(w) for w in weeks if w not in scored_weeks]} precede the first scorable "
                    f"week: {alpha} is null there")
        out = out.select(KEY + [pl.col(c).cast(t) for c, t in schema.items()])
        meta = frame_metadata(out, nulls=False)
        meta.update(md)
        meta["device"] = MetadataValue.text(ml.device)
        meta["seconds"] = MetadataValue.float(round(time.perf_counter() - started, 2))
        yield weekly_output(context, out, meta)

        dup = out.height - out.select(KEY).unique().height
        yield AssetCheckResult(check_name="unique_keys", passed=dup == 0, metadata={"duplicate_rows": dup})
        yield AssetCheckResult(check_name="rows_match_universe", passed=out.height == keys.height,
                               metadata={"rows": out.height, "universe_rows": keys.height})
        # Weeks the walk-forward left unscored by design (no model could be fitted yet) are counted, not failed.
        unscored_by_design = [w for w in scored_weeks if w in unscored] if scored_weeks else []
        expect = [w for w in scored_weeks if w not in unscored_by_design]
        in_scored = out.filter((pl.col("date") - pl.duration(days=pl.col("date").dt.weekday() - 1)).is_in(expect))
        null_rows = int(in_scored[alpha].null_count())
        yield AssetCheckResult(check_name="scorable_rows_scored", passed=null_rows == 0,
                               metadata={"rows_in_scorable_weeks": in_scored.height, "null_alpha_rows": null_rows,
                                         "weeks_unscored_by_design": len(unscored_by_design)})

    return _ml


ml_predictions_v2 = _ml_asset("ml_predictions_v2", tuned=False)
ml_predictions_v2_tuned = _ml_asset("ml_predictions_v2_tuned", tuned=True)
ML_ASSETS: list[AssetsDefinition] = [ml_predictions_v2, ml_predictions_v2_tuned]
