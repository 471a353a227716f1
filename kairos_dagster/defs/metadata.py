"""Materialization metadata an operator reads in the UI: counts, date ranges, null rates, previews."""

from __future__ import annotations

from typing import Any

import polars as pl
from dagster import (
    AssetExecutionContext,
    DagsterInvariantViolationError,
    JsonMetadataValue,
    MarkdownMetadataValue,
    MetadataValue,
    Output,
    TableColumn,
    TableMetadataValue,
    TableSchema,
    TableSchemaMetadataValue,
)

from kairos_dagster.warehouse.plots import markdown_image
from kairos_dagster.warehouse.summary import markdown_table, null_rates, significant, weekly_stats


def image(picture: bytes | None, alt: str) -> MetadataValue | None:
    """A PNG as a Markdown metadata entry (the UI shows it); None when there was nothing to draw."""
    return MetadataValue.md(markdown_image(picture, alt)) if picture else None


def add_images(md: dict[str, Any], **pictures: bytes | None) -> dict[str, Any]:
    """`md` with each drawn picture added under its name (pictures with nothing to draw are left out)."""
    for name, picture in pictures.items():
        value = image(picture, name)
        if value is not None:
            md[name] = value
    return md


def column_schema(df: pl.DataFrame) -> TableSchemaMetadataValue:
    """The frame's columns and types as the asset's column schema (the UI's Columns section)."""
    return MetadataValue.table_schema(TableSchema(columns=[TableColumn(c, str(t)) for c, t in df.schema.items()]))


def frame_metadata(df: pl.DataFrame, date_col: str | None = "date", *, preview: bool = True,
                   nulls: bool = True) -> dict[str, Any]:
    """Rows, tickers, date range, null rates and a preview of an asset's output."""
    md: dict[str, Any] = {"rows": MetadataValue.int(df.height), "dagster/column_schema": column_schema(df)}
    if "ticker" in df.columns:
        md["tickers"] = MetadataValue.int(df.get_column("ticker").n_unique())
    if date_col and date_col in df.columns and df.height:
        md["first_date"] = MetadataValue.text(str(df.get_column(date_col).min()))
        md["last_date"] = MetadataValue.text(str(df.get_column(date_col).max()))
        md["dates"] = MetadataValue.int(df.get_column(date_col).n_unique())
    if nulls and df.height:
        rates = null_rates(df)
        md["null_rates"] = MetadataValue.md(markdown_table(rates, max_rows=40))
        md["max_null_rate"] = MetadataValue.float(significant(float(rates.get_column("null_rate").max() or 0.0)))
    if preview:  # the newest rows: a range run's latest week, where an operator looks first
        latest = df.filter(pl.col(date_col) == pl.col(date_col).max()) if date_col in df.columns and df.height else df
        md["preview"] = MetadataValue.md(markdown_table(latest))
    return md


RICH_METADATA = (MarkdownMetadataValue, JsonMetadataValue, TableMetadataValue, TableSchemaMetadataValue)


# Entries that describe one week: in a range run each week's event gets its own values of these.
PER_WEEK_KEYS = ("rows", "tickers", "first_date", "last_date", "dates", "max_null_rate", "dagster/row_count")


def weekly_output(context: AssetExecutionContext, value: Any, metadata: dict[str, Any]) -> Output:
    """The asset's Output; in a run over several weeks, each week's event tells that week's truth.

    A single-run backfill records one materialization event per week. Each event gets that week's own
    rows (`dagster/row_count`), tickers, first and last date and worst null rate (so Dagster's metadata
    plots show a real weekly series); the other scalar entries stay on every event; the rich ones
    (markdown, JSON, tables: the null-rate table, the preview of the newest rows) go on the last week's
    event, the one the UI opens on, with the whole run's totals as `run_*`. A one-week run is unchanged.
    """
    return Output(value, metadata=weekly_metadata(context, value, metadata, date_col=_partition_column(context)))


def weekly_metadata(context: AssetExecutionContext, value: Any, metadata: dict[str, Any], *, date_col: str,
                    asset_key: str | None = None, exclude: tuple[str, ...] = ("ticker", "date")) -> dict[str, Any]:
    """`weekly_output`'s split of `metadata` for any step (a multi-asset names its `asset_key`): each week's
    own entries are added to that week's event; what is returned goes on the step's output for every week."""
    keys = context.partition_keys if context.has_partition_key_range else []
    if len(keys) <= 1:
        if isinstance(value, pl.DataFrame) and "rows" in metadata:
            metadata = {**metadata, "dagster/row_count": MetadataValue.int(value.height)}
        return metadata
    rich = {k: v for k, v in metadata.items() if isinstance(v, RICH_METADATA)}
    scalar = {k: v for k, v in metadata.items() if k not in rich and k not in PER_WEEK_KEYS}
    run_totals = {f"run_{k}": v for k, v in metadata.items() if k in PER_WEEK_KEYS and k != "dagster/row_count"}
    scalar["rich_metadata_on"] = MetadataValue.text(f"week {keys[-1]} (the last of this run's {len(keys)})")
    per_week: dict[str, dict[str, Any]] = {k: {"rows": MetadataValue.int(0), "dagster/row_count": MetadataValue.int(0)}
                                           for k in keys}
    if isinstance(value, pl.DataFrame) and date_col in value.columns and "rows" in metadata:
        for row in weekly_stats(value, date_col, exclude=exclude).iter_rows(named=True):
            key = row["week"].isoformat()
            if key not in per_week:
                continue
            week = {"rows": MetadataValue.int(row["rows"]), "dagster/row_count": MetadataValue.int(row["rows"]),
                    "first_date": MetadataValue.text(str(row["first_date"])),
                    "last_date": MetadataValue.text(str(row["last_date"])),
                    "max_null_rate": MetadataValue.float(significant(float(row["max_null_rate"])))}
            if "tickers" in row:
                week["tickers"] = MetadataValue.int(row["tickers"])
            per_week[key] = week
    for key in keys:
        context.add_asset_metadata({**per_week[key], **(rich | run_totals if key == keys[-1] else {})},
                                   asset_key=asset_key, partition_key=key)
    return scalar


def _partition_column(context: AssetExecutionContext) -> str:
    """The column that places a row in its week (the asset's `partition_expr`, else `date`)."""
    try:
        md = context.assets_def.metadata_by_key.get(context.asset_key, {})
    except DagsterInvariantViolationError:  # a multi-asset step has no single asset key
        return "date"
    expr = md.get("partition_expr", "date")
    return getattr(expr, "value", expr)
