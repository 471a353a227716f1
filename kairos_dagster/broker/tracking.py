"""Execution bookkeeping in the warehouse (no dagster): approvals, verification log, due verifications.

`rebalance_approval` is written by its asset (one row per rebalance date); `execution_verifications`
gets one row per verification run, so the verify sensor can tell which submitted rebalances still have
orders that are not final.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import duckdb
import polars as pl

from kairos_dagster.warehouse import store

APPROVAL_TABLE = "rebalance_approval"
VERIFICATIONS_TABLE = "execution_verifications"
APPROVAL_SCHEMA: dict[str, Any] = {
    "date": pl.Date, "status": pl.String, "approved_by": pl.String, "approved_at": pl.Datetime("us", "UTC"),
    "note": pl.String, "picks_hash": pl.String, "picks_path": pl.String, "picks_rows": pl.Int64,
    "table_hash": pl.String, "run_id": pl.String,
}
_VERIFY_DDL = f"""CREATE TABLE IF NOT EXISTS {VERIFICATIONS_TABLE} (
    rebalance_date DATE NOT NULL, verified_at TIMESTAMPTZ NOT NULL, orders INTEGER, filled INTEGER, partial INTEGER,
    rejected INTEGER, unfilled INTEGER, open INTEGER, fill_rate DOUBLE, slippage_bps DOUBLE, high_alerts INTEGER,
    medium_alerts INTEGER)"""


def normalize_max_gap(value: float | None) -> float | None:
    """--max-gap as a fraction. Values below 1 are fractions (0.05 = 5%); values from 1 up are percent
    (5 = 5%), the two conventions of the seed documents. 0 or >= 100 (percent) is refused."""
    if value is None:
        return None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"max_gap must be positive (0.05 or 5 both mean 5%), got {value}")
    frac = value if value < 1 else value / 100.0
    if frac >= 1:
        raise ValueError(f"max_gap {value} means {frac:.0%}: it must be below 100%")
    return frac


def approval_for(con: duckdb.DuckDBPyConnection, rebalance_date: dt.date) -> dict[str, Any] | None:
    """The stored approval (or rejection) of a rebalance date, as validate_approval expects it."""
    if not store.table_exists(con, APPROVAL_TABLE):
        return None
    rows = pl.from_arrow(con.execute(f"SELECT * FROM {APPROVAL_TABLE} WHERE date = ? ORDER BY approved_at DESC LIMIT 1",
                                     [rebalance_date]).to_arrow_table())
    if rows.height == 0:
        return None
    r = rows.row(0, named=True)
    return {"picks_hash": r["picks_hash"], "approved_by": r["approved_by"], "approved_at": r["approved_at"],
            "rebalance_date": r["date"], "note": r["note"], "status": r["status"]}


def record_verification(con: duckdb.DuckDBPyConnection, summary: dict[str, Any], verified_at: dt.datetime) -> None:
    con.execute(_VERIFY_DDL)
    con.execute(f"INSERT INTO {VERIFICATIONS_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
        dt.date.fromisoformat(summary["rebalance_date"]), verified_at, summary["orders"], summary["filled"],
        summary["partial"], summary["rejected"], summary["unfilled"], summary["open"], summary["fill_rate"],
        summary["slippage_bps"], summary["high_alerts"], summary["medium_alerts"]])
    store.written([VERIFICATIONS_TABLE])  # outside store.transaction: tell the run's read cache


def unverified_rebalance_dates(con: duckdb.DuckDBPyConnection, since: dt.date, until: dt.date) -> list[dt.date]:
    """Rebalance dates in [since, until] with submitted orders that were never verified, or whose latest
    verification still saw open orders."""
    if not store.table_exists(con, "execution_orders"):
        return []
    submitted = ("SELECT DISTINCT rebalance_date FROM execution_orders WHERE status <> 'skipped' "
                 "AND rebalance_date BETWEEN ? AND ?")
    if not store.table_exists(con, VERIFICATIONS_TABLE):  # read-only callers (the sensor) cannot create it
        return [r[0] for r in con.execute(submitted + " ORDER BY 1", [since, until]).fetchall()]
    rows = con.execute(f"""
        WITH submitted AS ({submitted}),
             latest AS (SELECT rebalance_date, arg_max(open, verified_at) AS open FROM {VERIFICATIONS_TABLE}
                        GROUP BY rebalance_date)
        SELECT s.rebalance_date FROM submitted s LEFT JOIN latest l USING (rebalance_date)
        WHERE l.rebalance_date IS NULL OR l.open > 0 ORDER BY 1""", [since, until]).fetchall()
    return [r[0] for r in rows]
