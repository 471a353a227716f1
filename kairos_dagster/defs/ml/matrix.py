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
    """Per week of the run: fails when a technical feature is null on a rebalance date after its documented
    warm-up; the rows still inside a warm-up (a young listing, the start of the history) are counted."""
    by_week = nulls.with_columns(week=pl.col("date").dt.truncate("1w"))
    out = []
    for key in context.partition_keys:
        week = by_week.filter(pl.col("week") == dt.date.fromisoformat(key))
        per_feature = (week.group_by("feature", "warmup_sessions")
                       .agg(pl.col("nulls_past_warmup").sum(), pl.col("rows_in_warmup").sum(),
                            pl.col("rows_past_warmup").sum())
                       .sort("nulls_past_warmup", "rows_in_warmup", descending=True))
        late = per_feature.filter(pl.col("nulls_past_warmup") > 0)
        warming = per_feature.filter(pl.col("rows_in_warmup") > 0)
        if not week.height:
            text = "no rebalance date in the week"
        elif late.height:
            text = (f"{int(late['nulls_past_warmup'].sum())} null value(s) past the documented warm-up: "
                    + ", ".join(f"{f} ({n})" for f, n in late.select("feature", "nulls_past_warmup").head(8).iter_rows()))
        else:
            text = (f"no feature null past its warm-up; {warming.height} feature(s) still warming up on "
                    f"{int(warming['rows_in_warmup'].max() or 0)} row(s) at most")
        out.append((key, AssetCheckResult(
            check_name="features_past_warmup", passed=late.height == 0, description=text,
            metadata={"null_values_past_warmup": MetadataValue.int(int(late["nulls_past_warmup"].sum())),
                      "features_in_warmup": MetadataValue.int(warming.height),
                      "rows_in_warmup_max": MetadataValue.int(int(warming["rows_in_warmup"].max() or 0)),
                      "detail": MetadataValue.md(markdown_table((late if late.height else warming).head(15)))})))
    return out


def build_matrix_assets(weekly: PartitionsDefinition) -> list[AssetsDefinition]:
    """feat_matrix_v2, the table the rebalance reads."""
    return [_matrix_asset(weekly)]
