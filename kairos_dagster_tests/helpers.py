"""Small helpers the Dagster-level tests share: read a warehouse table, collect check outcomes."""

import datetime as dt

import polars as pl

from kairos_dagster.warehouse import store


def read_table(settings, name: str, start: dt.date | None = None, end: dt.date | None = None) -> pl.DataFrame:
    """`name` from the settings' warehouse (read-only), all rows or those dated in [start, end)."""
    with store.connect(settings.duckdb_path, read_only=True) as con:
        return store.read_window(con, name, "date" if start else None, start, end)


def check_outcomes(result) -> dict[tuple[str, str], bool]:
    """(asset, check name) -> passed, for every asset check the run evaluated."""
    return {(e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()}
