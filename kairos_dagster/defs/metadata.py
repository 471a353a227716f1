"""Materialization metadata an operator reads in the UI: counts, date ranges, null rates, previews."""

from __future__ import annotations

from typing import Any

import polars as pl
from dagster import (
    AssetExecutionContext,
    JsonMetadataValue,
    MarkdownMetadataValue,
    MetadataValue,
    Output,
    TableMetadataValue,
    TableSchemaMetadataValue,
)

from kairos_dagster.warehouse.summary import markdown_table, null_rates, significant


def frame_metadata(df: pl.DataFrame, date_col: str | None = "date", *, preview: bool = True,
                   nulls: bool = True) -> dict[str, Any]:
    """Rows, tickers, date range, null rates and a preview of an asset's output."""
    md: dict[str, Any] = {"rows": MetadataValue.int(df.height)}
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
    if preview:
        md["preview"] = MetadataValue.md(markdown_table(df))
    return md


RICH_METADATA = (MarkdownMetadataValue, JsonMetadataValue, TableMetadataValue, TableSchemaMetadataValue)


def weekly_output(context: AssetExecutionContext, value: Any, metadata: dict[str, Any]) -> Output:
    """The asset's Output; in a run over several weeks, rich metadata goes on the newest week only.

    A single-run backfill records one materialization event per week and copies the output's
    metadata into each: 523 copies of the null-rate table and the preview for a 10-year backfill of
    one asset. Here the scalar entries (rows, dates, window, ...) stay on every week's event and the
    rich ones (markdown, JSON, tables) are attached to the last week's event, the one the UI opens on.
    A one-week run is unchanged.
    """
    keys = context.partition_keys if context.has_partition_key_range else []
    if len(keys) <= 1:
        return Output(value, metadata=metadata)
    rich = {k: v for k, v in metadata.items() if isinstance(v, RICH_METADATA)}
    scalar = {k: v for k, v in metadata.items() if k not in rich}
    scalar["rich_metadata_on"] = MetadataValue.text(f"week {keys[-1]} (the last of this run's {len(keys)})")
    context.add_asset_metadata(rich, partition_key=keys[-1])
    return Output(value, metadata=scalar)
