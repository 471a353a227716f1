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

PREVIEW_ROWS = 10


def markdown_table(df: pl.DataFrame, max_rows: int = PREVIEW_ROWS, float_digits: int = 4) -> str:
    """A small frame as a markdown table (no pandas/tabulate dependency)."""
    if df.width == 0:
        return "_(no columns)_"
    head = df.head(max_rows)

    def fmt(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.{float_digits}g}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * head.width]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in head.iter_rows()]
    if df.height > max_rows:
        lines.append(f"\n_{df.height - max_rows} more rows_")
    return "\n".join(lines)


def null_rates(df: pl.DataFrame, *, exclude: tuple[str, ...] = ("ticker", "date")) -> pl.DataFrame:
    """Share of null (or NaN) values per column, worst first."""
    cols = [c for c in df.columns if c not in exclude]
    if not cols or df.height == 0:
        return pl.DataFrame(schema={"column": pl.String, "null_rate": pl.Float64})
    exprs = [
        ((pl.col(c).is_null() | pl.col(c).is_nan()) if df.schema[c].is_float() else pl.col(c).is_null()).mean().alias(c)
        for c in cols
    ]
    row = df.select(exprs).row(0)
    return pl.DataFrame({"column": cols, "null_rate": [float(v) for v in row]}).sort("null_rate", descending=True)


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
        md["max_null_rate"] = MetadataValue.float(float(rates.get_column("null_rate").max() or 0.0))
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
