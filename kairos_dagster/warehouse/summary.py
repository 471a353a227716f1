"""A plain-text summary of the warehouse for the CLI and `make demo`."""

from __future__ import annotations

from pathlib import Path

from kairos_dagster.warehouse import store

DATE_COLUMNS = ("date", "datekey", "filingdate", "calendardate")


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
