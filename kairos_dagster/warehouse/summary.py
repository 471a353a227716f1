"""Tables as text: the warehouse summary of the CLI and `make demo`, markdown previews, null rates."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import polars as pl

from kairos_dagster.warehouse import store

DATE_COLUMNS = ("date", "datekey", "filingdate", "calendardate")
PREVIEW_ROWS = 10


def readable(v: float | int, digits: int = 4) -> str:
    """A number as an operator reads it: counts as integers with thousands separators, other values to
    `digits` significant digits without an exponent (10,510 not 1.051e+04; 0.05213 not 0.052130000000000004);
    only magnitudes below 1e-4 keep one."""
    if isinstance(v, int):
        return f"{v:,}"
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 10 ** (digits - 1):
        return f"{v:,.0f}"
    if a < 1e-4:
        return f"{v:.{digits - 1}e}"
    decimals = digits - 1 - math.floor(math.log10(a))
    return f"{v:.{decimals}f}"


def significant(v: float, digits: int = 4) -> float:
    """`v` rounded to `digits` significant digits (for numeric metadata the UI prints in full)."""
    if not math.isfinite(v) or v == 0:
        return float(v)
    return float(round(v, digits - 1 - math.floor(math.log10(abs(v)))))


def markdown_table(df: pl.DataFrame, max_rows: int = PREVIEW_ROWS, float_digits: int = 4) -> str:
    """A small frame as a markdown table (no pandas/tabulate dependency)."""
    if df.width == 0:
        return "_(no columns)_"
    head = df.head(max_rows)

    def fmt(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float | int) and not isinstance(v, bool):
            return readable(v, float_digits)
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


def weekly_stats(df: pl.DataFrame, date_col: str, *, exclude: tuple[str, ...] = ("ticker", "date")) -> pl.DataFrame:
    """Per calendar week (Monday `week`, the weekly partition key) of `df` by `date_col`: rows, tickers,
    first_date, last_date and max_null_rate (the worst column's null share that week; NaN, which the
    feature checks refuse, is counted by `null_rates` only: a per-week NaN scan would cost 4x more)."""
    cols = [c for c in df.columns if c not in exclude and c != date_col]
    missing = [(pl.col(c).null_count() / pl.len()).alias(c) for c in cols]
    stats = [pl.len().alias("rows"), pl.col(date_col).min().alias("first_date"),
             pl.col(date_col).max().alias("last_date")]
    if "ticker" in df.columns:
        stats.append(pl.col("ticker").n_unique().alias("tickers"))
    key = "_kairos_week"  # a name no table uses (factor_ic has its own `week`)
    out = (df.group_by(pl.col(date_col).dt.truncate("1w").alias(key))
           .agg(*stats, *[m.name.prefix("_null_") for m in missing]).sort(key))
    nulls = [f"_null_{c}" for c in cols]
    worst = pl.max_horizontal(nulls) if cols else pl.lit(0.0)
    return out.select(pl.col(key).alias("week"), *[c for c in ("rows", "first_date", "last_date", "tickers")
                                                  if c in out.columns], worst.fill_null(0.0).alias("max_null_rate"))


def warehouse_summary(path: Path | store.Lake) -> str:
    if not store.exists(path):
        return f"warehouse {path} does not exist yet"
    lines = [f"Warehouse {path}", f"{'table':32} {'rows':>12}  {'first':>10}  {'last':>10}"]
    with store.connect(path, read_only=True) as con:
        for t in store.table_names(con):
            cols = store.table_columns(con, t)
            col = next((c for c in DATE_COLUMNS if c in cols), None)
            if col:
                lo, hi, n = store.date_range(con, t, col)
            else:
                lo = hi = None
                n = con.execute(f"SELECT count(*) FROM {store.ident(t)}").fetchone()[0]
            lines.append(f"{t:32} {n:>12,}  {str(lo or ''):>10}  {str(hi or ''):>10}")
    return "\n".join(lines)
