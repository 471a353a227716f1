"""Warehouse SQL of the feature assets: the facts about stored history their warm-up rules need."""

from __future__ import annotations

import datetime as dt

import duckdb
import polars as pl


def first_dates(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """ticker, first_date: each ticker's first stored sep_base session (its history's start)."""
    return con.execute("SELECT ticker, min(date) AS first_date FROM sep_base GROUP BY ticker").pl()


def first_sessions(con: duckdb.DuckDBPyConnection, n: int) -> set[dt.date]:
    """The first `n` sessions of the stored price history: no ticker has the trailing data there yet."""
    rows = con.execute("SELECT DISTINCT date FROM sep_base ORDER BY date LIMIT ?", [int(n)]).fetchall()
    return {r[0] for r in rows}
