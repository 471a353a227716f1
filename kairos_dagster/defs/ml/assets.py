"""Phase 6 — walk-forward XGBoost alphas (``ml_predictions_v2``, ``ml_predictions_v2_tuned``).

Thin shells over ``kairos_dagster.ml.walk_forward.score_weeks``:

* Rows: every universe (ticker, date) of every session of the window; ``alpha_ml_v2_clf`` /
  ``alpha_ml_v2_tuned_clf`` is the predicted probability that the row's market-residual 5-session
  forward return (ret_5d_resid_f = ret_5d_f - beta * market) lands above its date's median
  (``label_resid_above_median_5d``; why this label: features.targets.feat_targets), ``model_version``
  the model.
* History: the training rows (universe on weekly rebalance dates, back to the training start of the
  oldest model the window needs) are read straight from the warehouse with one SQL join restricted
  to those dates (``ml.tables.load_matrix``), not through a lookback partition mapping that would
  load every session of every feature table since the anchor. The feature tables, regime, tickers
  and feat_targets are declared as ``deps`` so lineage and run ordering stay visible.
* Schedule: anchored to ``MLResource.anchor`` (KAIROS_ML_ANCHOR, default the first partition
  KAIROS_START_DATE plus the universe warm-up, ``ml.walk_forward.default_anchor``), so a single-run backfill of any span and a week-by-week run give identical
  models and predictions. Weeks before ``first_scorable_week`` get null alphas (noted in metadata).
* Models are saved under ``<models_dir>/<model_name>/<version>/`` and reused on reruns; the run
  upserts their rows into ``ml_model_registry`` and their metrics into ``ml_metrics``.
"""

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetDep,
    AssetExecutionContext,
    AssetsDefinition,
    MetadataValue,
    PartitionsDefinition,
    asset,
)

from kairos_dagster.calendar import rebalance_dates_between
from kairos_dagster.constants import KEY as KEYS
from kairos_dagster.defs import checks
from kairos_dagster.defs.checks import week_check_events
from kairos_dagster.defs.metadata import add_images, frame_metadata, weekly_output
from kairos_dagster.defs.partitions import SINGLE_RUN, window_dates
from kairos_dagster.defs.side_tables import report_side_tables
from kairos_dagster.features import targets
from kairos_dagster.ml import skill, tables, walk_forward
from kairos_dagster.ml.metrics import ic_stats
from kairos_dagster.ml.predict import ALPHA_COLUMNS
from kairos_dagster.resources.kill_switches import KillSwitches
from kairos_dagster.resources.ml import MLResource
from kairos_dagster.resources.warehouse import DuckDBWarehouse
from kairos_dagster.warehouse import plots, store
from kairos_dagster.warehouse.summary import markdown_table, significant

KEY = list(KEYS)
LABEL = targets.ML_LABEL
MODEL_NAMES = {"ml_predictions_v2": "ml_v2", "ml_predictions_v2_tuned": "ml_v2_tuned"}
ML_CHECKS = ("unique_keys", "rows_match_universe", "scorable_rows_scored", "oos_ic_positive")


def _ml_asset(name: str, tuned: bool, weekly: PartitionsDefinition) -> AssetsDefinition:
    alpha = ALPHA_COLUMNS[name]
    model_name = MODEL_NAMES[name]
    feature_tables = list(tables.source_tables(tables.feature_columns()))
    # alpha_composite_v8: the composite the skill check compares the model with (not a model input)
    deps = [AssetDep(t) for t in ["universe", "tickers", *feature_tables, "feat_targets", skill.BENCHMARK]]

    @asset(
        name=name,
        group_name="phase6_ml",
        deps=deps,
        check_specs=checks.specs(name, ML_CHECKS, weekly),
        description=(f"{'Optuna-tuned' if tuned else 'Fixed-parameter'} XGBoost classifier, walk-forward: "
                     f"{alpha} = P(market-residual ret_5d_f above the date's median) for every universe row of the week."),
        metadata={"alpha_column": alpha, "model_name": model_name, "label": LABEL,
                  "training_rows": "universe on weekly rebalance dates"},
        partitions_def=weekly,
        backfill_policy=SINGLE_RUN,
        pool="duckdb",
        io_manager_key="warehouse_io",
        kinds={"duckdb", "polars", "xgboost"},
    )
    def _ml(context: AssetExecutionContext, warehouse: DuckDBWarehouse, ml: MLResource,
            kill_switches: KillSwitches) -> Iterator:
        started = time.perf_counter()
        start, end = window_dates(context.partition_time_window)
        cfg = ml.walk_forward_config()
        with warehouse.connect() as con:
            keys = tables.universe_keys(con, start, end)
        res = walk_forward.score_weeks(warehouse.connect, keys, start, end, model_name=model_name, alpha=alpha,
                                       tuned=tuned, cfg=cfg)
        out, scored_weeks, weeks, unscored = res.predictions, res.scored_weeks, res.weeks, res.unscored
        md: dict[str, Any] = {}
        if not scored_weeks:
            md["note"] = MetadataValue.text(
                f"no model yet: the first scorable week is {cfg.first_scorable_week()} (anchor {cfg.anchor}, "
                f"retrain every {cfg.retrain_weeks} weeks); {alpha} is null for all {out.height} rows of this window")
        else:
            registry, metrics = res.registry, res.metrics
            if res.history_rows is not None:
                md["history_rows"] = MetadataValue.int(res.history_rows)
            md["training_history_loaded"] = MetadataValue.bool(res.history_rows is not None)
            with warehouse.connect() as con:
                if registry.height:
                    tables.upsert_registry(con, registry)
                if metrics.height:
                    tables.upsert_metrics(con, metrics)
                report_side_tables(context, con, ["ml_model_registry", "ml_metrics"])
            if res.notes:  # walk-forward decisions: fewer tuning folds, fixed parameters, a reused model
                md["walk_forward_decisions"] = MetadataValue.md(markdown_table(pl.DataFrame(
                    {"retrain_week": list(res.notes), "decision": list(res.notes.values())}), max_rows=100))
            md["unscored_weeks"] = MetadataValue.int(len(unscored))
            if unscored:
                md["unscored_weeks_why"] = MetadataValue.json({str(w): why for w, why in sorted(unscored.items())})
            if registry.height:
                folds = walk_forward.fold_table(registry, metrics)
                latest = registry.sort("train_end")["model_version"][-1]
                md["models"] = MetadataValue.md(markdown_table(folds, max_rows=100))
                md["model_versions"] = MetadataValue.json(registry["model_version"].to_list())
                md["top_features_by_gain"] = MetadataValue.md(
                    f"Model {latest}\n\n" + markdown_table(walk_forward.top_gain(metrics, latest), max_rows=20))
                add_images(md, feature_importance_chart=plots.bars_png(
                    walk_forward.top_gain(metrics, latest), "feature", "gain",
                    f"Feature importance (total gain), model {latest}", horizontal=True),
                    oos_ic_per_fold_chart=plots.bars_png(
                        folds.select(pl.col("fold").cast(pl.String), "oos_rank_ic"), "fold", "oos_rank_ic",
                        "Out-of-sample rank IC per retrain point (fold)"))
                md["training_rows"] = MetadataValue.int(int(folds["train_rows"].fill_null(0).max() or 0))
                md["training_seconds"] = MetadataValue.float(round(float(folds["train_seconds"].fill_null(0).sum()), 1))
            oos = metrics.filter((pl.col("split") == "oos") & (pl.col("metric") == "rank_ic"))["value"]
            stats = ic_stats(oos)
            md["oos_rank_ic_mean"] = MetadataValue.float(significant(stats["rank_ic"]))
            md["oos_icir"] = MetadataValue.float(significant(stats["icir"]))
            md["oos_weeks_with_labels"] = MetadataValue.int(int(stats["n_dates"]))
            if len(scored_weeks) < len(weeks):
                md["note"] = MetadataValue.text(
                    f"weeks {[str(w) for w in weeks if w not in scored_weeks]} precede the first scorable "
                    f"week: {alpha} is null there")
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
        yield from week_check_events(context, name, "oos_ic_positive", skill_results(
            context, warehouse, out, name, alpha, start, kill_switches.live_sharpe_weeks))

    return _ml


def skill_results(context: AssetExecutionContext, warehouse: DuckDBWarehouse, out: pl.DataFrame, table: str,
                  alpha: str, start: dt.date, k: int) -> list[tuple[str, AssetCheckResult]]:
    """Per week of the run, the WARN check `oos_ic_positive` from ml/skill: earlier weeks' alphas as
    stored, the run's own from its output; a missing input table is said, not guessed around."""
    weeks = [dt.date.fromisoformat(key) for key in context.partition_keys]
    dates = rebalance_dates_between(weeks[0] - dt.timedelta(weeks=k + 3), weeks[-1] + dt.timedelta(days=6))
    try:
        with warehouse.connect() as con:
            stored = tables.skill_frame(con, dates, benchmark=skill.BENCHMARK,
                                        stored=(table, alpha) if store.table_exists(con, table) else None,
                                        before=start)
        ics = skill.ic_by_date(skill.with_own_alpha(stored, out, alpha), [alpha, skill.BENCHMARK])
        verdicts = skill.weekly_trailing_ic(ics, alpha, weeks, k)
    except store.WarehouseError as exc:
        verdicts = [skill.unjudged(skill.week_end_session(w), str(exc)) for w in weeks]
    results = []
    for w, t in zip(weeks, verdicts, strict=True):
        md = {"trailing_weeks": MetadataValue.int(k), "labelled_dates": MetadataValue.int(t.dates),
              "labels_known_by": MetadataValue.text(str(t.known_by))}
        if t.ic is not None:
            md["trailing_rank_ic"] = MetadataValue.float(significant(t.ic))
        if t.benchmark_ic is not None:
            md[f"{skill.BENCHMARK}_trailing_rank_ic"] = MetadataValue.float(significant(t.benchmark_ic))
        results.append((w.isoformat(), AssetCheckResult(check_name="oos_ic_positive", passed=t.skilful,
                                                        severity=AssetCheckSeverity.WARN,
                                                        description=t.text(alpha), metadata=md)))
    return results


def build_ml_assets(weekly: PartitionsDefinition) -> list[AssetsDefinition]:
    """The fixed-parameter and the Optuna-tuned walk-forward predictions."""
    return [_ml_asset("ml_predictions_v2", False, weekly), _ml_asset("ml_predictions_v2_tuned", True, weekly)]
