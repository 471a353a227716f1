"""Tables as text: the warehouse summary of the CLI and `make demo`, markdown previews, null rates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from kairos_dagster.warehouse import store

DATE_COLUMNS = ("date", "datekey", "filingdate", "calendardate")
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


def warehouse_summary(path: Path) -> str:
    if not Path(path).exists():
        return f"warehouse {path} does not exist yet"
    lines = [f"Warehouse {path}", f"{'table':32} {'rows':>12}  {'first':>10}  {'last':>10}"]
    with store.connect(path, read_only=True) as con:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema='main' ORDER BY table_name").fetchall()]
        for t in tables:
            cols = store.table_columns(con, t)
            col = next((c for c in DATE_COLUMNS if c in cols), None)
            if col:
                lo, hi, n = store.date_range(con, t, col)
            else:
                lo = hi = None
                n = con.execute(f"SELECT count(*) FROM {store.ident(t)}").fetchone()[0]
            lines.append(f"{t:32} {n:>12,}  {str(lo or ''):>10}  {str(hi or ''):>10}")
    return "\n".join(lines)
