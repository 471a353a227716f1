"""Phase 7 — ``feat_matrix_v2``: one row per universe (ticker, date) of every session, 100+ columns.

One DuckDB SQL join over the window (``ml.tables.matrix_sql``): universe rows LEFT JOIN every Phase 2-5
feature table, the regime columns, sector/industry from ``tickers``, the two ML alphas with their
model versions, and ``price`` = the unadjusted close (``closeunadj``) the rebalance sizes shares
with. feat_targets is never joined (its columns are forward-looking).
"""

import datetime as dt
from collections.abc import Iterator

import polars as pl
from dagster import (
    AssetCheckResult,
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
from kairos_dagster.defs.metadata import frame_metadata, weekly_output
from kairos_dagster.defs.partitions import SINGLE_RUN, window_dates
from kairos_dagster.features import warmup
from kairos_dagster.ml import tables
from kairos_dagster.ml.coverage import coverage_on_rebalance_dates, target_columns_present
from kairos_dagster.ml.schedule import first_scorable_week
from kairos_dagster.resources.ml import MLResource
from kairos_dagster.resources.warehouse import DuckDBWarehouse
from kairos_dagster.warehouse.summary import markdown_table, significant

KEY = list(KEYS)
ML_TABLES = tuple(tables.ML_MATRIX_COLUMNS)
ALPHAS = ("alpha_ml_v2_tuned_clf", "alpha_ml_v2_clf")
COVERAGE_FLOOR = 0.95
MATRIX_CHECKS = ("unique_keys", "rows_match_universe", "ml_coverage", "freshness", "no_target_columns",
                 "features_past_warmup")


def _matrix_asset(weekly: PartitionsDefinition) -> AssetsDefinition:
    @asset(
        name="feat_matrix_v2",
        group_name="phase7_matrix",
        deps=[AssetDep(t) for t in ["universe", "tickers", *tables.source_tables(tables.feature_columns()), *ML_TABLES]],
        check_specs=checks.specs("feat_matrix_v2", MATRIX_CHECKS, weekly),
        description="Every universe (ticker, date): Phase 2-5 features, regime, sector/industry, ML alphas and "
                    "price (closeunadj).",
        partitions_def=weekly,
        backfill_policy=SINGLE_RUN,
        pool="duckdb",
        io_manager_key="warehouse_io",
        kinds={"duckdb", "sql"},
    )
    def feat_matrix_v2(context: AssetExecutionContext, warehouse: DuckDBWarehouse, ml: MLResource) -> Iterator:
        start, end = window_dates(context.partition_time_window)
        columns = [*tables.feature_columns(), *tables.SECTOR_COLUMNS]
        with warehouse.connect() as con:
            # A year at a time: a 10-year backfill peaked at 19 GB loading the window in one query, 11.5 GB so.
            out = tables.load_matrix(con, columns, start, end, ml_tables=ML_TABLES, price=True, chunk_days=364)
            universe_rows, latest_session = tables.window_counts(con, start, end)
            rebalance_dates = rebalance_dates_between(start, end - dt.timedelta(days=1))
            history = warmup.history_index(con, rebalance_dates)
        out = out.select(tables.matrix_columns())
        md = frame_metadata(out, preview=False)
        md["columns"] = MetadataValue.int(out.width)
        md["preview"] = MetadataValue.md(
            frame_metadata(out.select(KEY + ["price", "sector", "regime", "alpha_composite_v8", *ALPHAS]))["preview"].value)
        yield weekly_output(context, out, md)

        dup = out.height - out.select(KEY).unique().height
        yield AssetCheckResult(check_name="unique_keys", passed=dup == 0, metadata={"duplicate_rows": dup})
        yield AssetCheckResult(check_name="rows_match_universe", passed=out.height == universe_rows,
                               metadata={"rows": out.height, "universe_rows": int(universe_rows)})
        yield from week_check_events(context, "feat_matrix_v2", "features_past_warmup",
                                     _warmup_results(context, warmup.warmup_nulls(out, history)))
        first = first_scorable_week(ml.anchor_date, ml.retrain_weeks)
        cov = coverage_on_rebalance_dates(out, ALPHAS, since=first)
        scorable = cov["rows"] > 0
        unscored = [d for d in rebalance_dates if d < first]  # left blank by design: counted, not failed
        yield AssetCheckResult(
            check_name="ml_coverage",
            passed=(not scorable) or min(cov[a] for a in ALPHAS) >= COVERAGE_FLOOR,
            metadata={"rebalance_rows": cov["rows"], **{f"coverage_{a}": significant(float(cov[a])) for a in ALPHAS},
                      "unscored_rebalance_dates": len(unscored),
                      "floor": COVERAGE_FLOOR,
                      "note": "no rebalance date of this window has a model yet (first scorable week "
                              f"{first})" if not scorable else "share of universe rows with a non-null alpha"})
        latest = out["date"].max() if out.height else None
        yield AssetCheckResult(
            check_name="freshness", passed=latest == latest_session,
            metadata={"latest_date": str(latest), "latest_sep_base_session": str(latest_session)})
        bad = target_columns_present(out.columns)
        yield AssetCheckResult(check_name="no_target_columns", passed=not bad,
                               metadata={"target_columns": ", ".join(bad) or "none"})

    return feat_matrix_v2


def _warmup_results(context: AssetExecutionContext, nulls: pl.DataFrame) -> list[tuple[str, AssetCheckResult]]:
    """Per week of the run, `features_past_warmup` from features/warmup.week_verdicts."""
    weeks = [dt.date.fromisoformat(key) for key in context.partition_keys]
    return [(v.week.isoformat(), AssetCheckResult(
        check_name="features_past_warmup", passed=v.passed, description=v.text(),
        metadata={"null_values_past_warmup": MetadataValue.int(v.nulls_past_warmup),
                  "features_in_warmup": MetadataValue.int(v.warming.height),
                  "rows_in_warmup_max": MetadataValue.int(v.rows_in_warmup_max),
                  "detail": MetadataValue.md(markdown_table((v.late if v.late.height else v.warming).head(15)))}))
        for v in warmup.week_verdicts(nulls, weeks)]


def build_matrix_assets(weekly: PartitionsDefinition) -> list[AssetsDefinition]:
    """feat_matrix_v2, the table the rebalance reads."""
    return [_matrix_asset(weekly)]
