"""Warehouse SQL of the ML assets and feat_matrix_v2 (DuckDB; no dagster import).

``matrix_sql`` builds one query that starts from the universe rows of a date window and LEFT JOINs
the requested columns from the tables that hold them (``features.assemble.column_sources``), the
regime columns (keyed by date alone), sector/industry from ``tickers`` and, optionally, the ML
predictions and the unadjusted close as ``price``. One SQL join over the window is much cheaper
than loading every feature table into polars and joining there.

``upsert`` writes the ``ml_model_registry`` / ``ml_metrics`` rows of a run: the rows with the same
key are deleted and the new ones inserted in one transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

import duckdb
import polars as pl

from kairos_dagster.features.assemble import REGIME_TABLE, UNKNOWN_SECTOR, column_sources
from kairos_dagster.features.targets import ML_LABEL
from kairos_dagster.ml.dataset import TARGET_PATTERN
from kairos_dagster.ml.metrics import ML_METRICS_SCHEMA
from kairos_dagster.ml.registry import REGISTRY_SCHEMA
from kairos_dagster.warehouse.store import WarehouseError, ident, table_columns, table_exists, upsert_rows

KEY = ("ticker", "date")
TARGETS_TABLE = "feat_targets"
# Categorical features from `tickers`; industry is kept out of the model (too many levels for weekly rows).
SECTOR_COLUMNS = ("sector", "industry")
ML_CATEGORICALS = ("sector",)
# Provenance dates of the fundamental rows (which filing a value came from): kept in the matrix for
# audit, never model inputs (a raw date only encodes time).
PROVENANCE_COLUMNS = ("datekey", "reportperiod", "inst_calendardate")
# ML prediction table -> its columns in feat_matrix_v2 (model_version renamed per table).
ML_MATRIX_COLUMNS: dict[str, dict[str, str]] = {
    "ml_predictions_v2": {"alpha_ml_v2_clf": "alpha_ml_v2_clf", "model_version": "model_version_ml_v2"},
    "ml_predictions_v2_tuned": {"alpha_ml_v2_tuned_clf": "alpha_ml_v2_tuned_clf",
                                "model_version": "model_version_ml_v2_tuned"},
}
REGISTRY_KEY = ("model_name", "model_version")
METRICS_KEY = ("model_name", "model_version", "split", "date")


def feature_columns() -> list[str]:
    """Every Phase 2-5 feature column and the regime columns (never feat_targets), in table order."""
    cols = list(column_sources())
    bad = [c for c in cols if TARGET_PATTERN.match(c)]
    if bad:  # a feature table must never publish a forward-looking name
        raise ValueError(f"feature columns {bad} look like forward targets")
    return cols


def ml_features() -> list[str]:
    """The ML model's inputs: all feature columns but provenance dates, plus the sector (categorical)."""
    return [*(c for c in feature_columns() if c not in PROVENANCE_COLUMNS), *ML_CATEGORICALS]


def matrix_columns() -> list[str]:
    """The columns of feat_matrix_v2, in order."""
    ml = [c for cols in ML_MATRIX_COLUMNS.values() for c in cols.values()]
    return [*KEY, *feature_columns(), *SECTOR_COLUMNS, *ml, "price"]


def source_tables(columns: Sequence[str]) -> dict[str, list[str]]:
    """Feature table -> requested columns it holds (sector/industry/price are handled separately)."""
    sources = column_sources()
    grouped: dict[str, list[str]] = {}
    for c in columns:
        if c in SECTOR_COLUMNS or c == "price" or c in KEY:
            continue
        if c not in sources:
            raise KeyError(f"no feature table provides column {c!r}")
        grouped.setdefault(sources[c], []).append(c)
    return grouped


def matrix_sql(columns: Sequence[str], *, ml_tables: Sequence[str] = (), price: bool = False,
               date_list: bool = False) -> str:
    """SQL over universe rows with date in [$start, $end) (and in $dates when ``date_list``).

    Parameters (named): ``start``, ``end`` and, with ``date_list``, ``dates`` (a DATE list).
    Output: ticker, date, the requested feature columns, sector/industry when requested, the ML
    columns of ``ml_tables`` (``ML_MATRIX_COLUMNS``) and ``price`` (universe closeunadj).
    Sorted by date, ticker.
    """
    dates = " AND list_contains($dates::DATE[], date)" if date_list else ""
    where = f"date >= $start AND date < $end{dates}"
    selects = ["u.ticker", "u.date"]
    joins: list[str] = []
    for i, (table, cols) in enumerate(source_tables(columns).items()):
        alias = f"t{i}"
        on = ["date"] if table == REGIME_TABLE else list(KEY)
        inner = ", ".join(ident(c) for c in [*on, *cols])
        cond = " AND ".join(f"{alias}.{ident(k)} = u.{ident(k)}" for k in on)
        joins.append(f"LEFT JOIN (SELECT {inner} FROM {ident(table)} WHERE {where}) {alias} ON {cond}")
        selects += [f"{alias}.{ident(c)}" for c in cols]
    sector = [c for c in SECTOR_COLUMNS if c in columns]
    if sector:
        joins.append(
            "LEFT JOIN (SELECT ticker, min(sector) AS sector, min(industry) AS industry FROM tickers "
            "WHERE \"table\" = 'SEP' GROUP BY ticker) s ON s.ticker = u.ticker")
        selects += [f"coalesce(s.{ident(c)}, '{UNKNOWN_SECTOR}') AS {ident(c)}" for c in sector]
    for i, table in enumerate(ml_tables):
        alias = f"m{i}"
        mapping = ML_MATRIX_COLUMNS[table]
        inner = ", ".join(ident(c) for c in [*KEY, *mapping])
        joins.append(f"LEFT JOIN (SELECT {inner} FROM {ident(table)} WHERE {where}) {alias} "
                     f"ON {alias}.ticker = u.ticker AND {alias}.date = u.date")
        selects += [f"{alias}.{ident(src)} AS {ident(dst)}" for src, dst in mapping.items()]
    if price:
        selects.append("u.closeunadj AS price")
    return (f"SELECT {', '.join(selects)}\nFROM (SELECT ticker, date, closeunadj FROM universe WHERE {where}) u\n"
            + "\n".join(joins) + "\nORDER BY u.date, u.ticker")


def required_tables(columns: Sequence[str], ml_tables: Sequence[str] = ()) -> list[str]:
    tables = ["universe", *source_tables(columns), *ml_tables]
    if any(c in SECTOR_COLUMNS for c in columns):
        tables.append("tickers")
    return tables


def check_tables(con: duckdb.DuckDBPyConnection, columns: Sequence[str], ml_tables: Sequence[str] = ()) -> None:
    """Fail naming every table (or column) the query needs that the warehouse lacks."""
    missing = [t for t in required_tables(columns, ml_tables) if not table_exists(con, t)]
    if missing:
        raise WarehouseError(f"tables {missing} do not exist in the warehouse: materialize them first")
    for table, cols in source_tables(columns).items():
        have = table_columns(con, table)
        absent = [c for c in cols if c not in have]
        if absent:
            raise WarehouseError(f"table {table!r} has no columns {absent}")


def load_matrix(con: duckdb.DuckDBPyConnection, columns: Sequence[str], start: dt.date, end: dt.date, *,
                dates: Sequence[dt.date] | None = None, ml_tables: Sequence[str] = (),
                price: bool = False, chunk_days: int | None = None) -> pl.DataFrame:
    """Run ``matrix_sql`` for universe rows in [start, end) (restricted to ``dates`` when given).

    ``chunk_days``: query consecutive windows of that many days and concatenate (same rows, same
    order), so DuckDB's result buffers for one window, not the whole span, sit beside the frame.
    """
    check_tables(con, columns, ml_tables)
    sql = matrix_sql(columns, ml_tables=ml_tables, price=price, date_list=dates is not None)
    cuts = [start]
    while chunk_days and cuts[-1] + dt.timedelta(days=chunk_days) < end:
        cuts.append(cuts[-1] + dt.timedelta(days=chunk_days))
    parts = []
    for lo, hi in zip(cuts, [*cuts[1:], end], strict=True):
        params: dict[str, object] = {"start": lo, "end": hi}
        if dates is not None:
            params["dates"] = list(dates)
        parts.append(con.execute(sql, params).pl())
    return parts[0] if len(parts) == 1 else pl.concat(parts, how="vertical", rechunk=False)


def load_labels(con: duckdb.DuckDBPyConnection, start: dt.date, end: dt.date, dates: Sequence[dt.date],
                columns: Sequence[str] = (ML_LABEL, "ret_5d_f", "label_end_date")) -> pl.DataFrame:
    """feat_targets rows dated in [start, end) or in ``dates`` (training rebalance dates)."""
    if not table_exists(con, TARGETS_TABLE):
        raise WarehouseError(f"table {TARGETS_TABLE!r} does not exist in the warehouse: materialize it first")
    cols = ", ".join(ident(c) for c in [*KEY, *columns])
    return con.execute(
        f"SELECT {cols} FROM {TARGETS_TABLE} WHERE (date >= $start AND date < $end) "
        "OR list_contains($dates::DATE[], date) ORDER BY date, ticker",
        {"start": start, "end": end, "dates": list(dates)}).pl()


def upsert(con: duckdb.DuckDBPyConnection, table: str, df: pl.DataFrame, key: Sequence[str],
           schema: Mapping[str, pl.DataType]) -> int:
    """Replace the rows of ``table`` whose ``key`` appears in ``df`` by ``df`` (one transaction)."""
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise WarehouseError(f"{table}: rows lack columns {missing}")
    df = df.select([pl.col(c).cast(t) for c, t in schema.items()]).unique(maintain_order=True)
    dup = df.height - df.select(key).unique().height
    if dup:
        raise WarehouseError(f"{table}: {dup} rows repeat a key {list(key)}")
    return upsert_rows(con, table, df, key)


def upsert_registry(con: duckdb.DuckDBPyConnection, rows: pl.DataFrame) -> int:
    return upsert(con, "ml_model_registry", rows, REGISTRY_KEY, REGISTRY_SCHEMA)


def upsert_metrics(con: duckdb.DuckDBPyConnection, rows: pl.DataFrame) -> int:
    """ml_metrics: one key is (model, version, split, date); a rerun replaces all its metric rows."""
    rows = rows.select([pl.col(c).cast(t) for c, t in ML_METRICS_SCHEMA.items()])
    return upsert_rows(con, "ml_metrics", rows, METRICS_KEY)


def universe_keys(con: duckdb.DuckDBPyConnection, start: dt.date, end: dt.date) -> pl.DataFrame:
    """The universe's (ticker, date) rows in [start, end), in key order: the rows an ML asset scores."""
    return con.execute("SELECT ticker, date FROM universe WHERE date >= ? AND date < ? ORDER BY ticker, date",
                       [start, end]).pl()


def window_counts(con: duckdb.DuckDBPyConnection, start: dt.date, end: dt.date) -> tuple[int, dt.date | None]:
    """(universe rows, latest sep_base session) in [start, end): what feat_matrix_v2 must match."""
    rows = con.execute("SELECT count(*) FROM universe WHERE date >= ? AND date < ?", [start, end]).fetchone()[0]
    latest = con.execute("SELECT max(date) FROM sep_base WHERE date >= ? AND date < ?", [start, end]).fetchone()[0]
    return int(rows), latest


def skill_frame(con: duckdb.DuckDBPyConnection, dates: Sequence[dt.date], *, benchmark: str = "alpha_composite_v8",
                stored: tuple[str, str] | None = None, before: dt.date | None = None) -> pl.DataFrame:
    """ticker, date, ret_5d_f and the benchmark alpha on the universe rows of `dates` (rebalance dates);
    with ``stored`` = (table, alpha column), that alpha as stored, for the dates before ``before``
    (the weeks a run does not rebuild)."""
    for table in (TARGETS_TABLE, benchmark) + ((stored[0],) if stored else ()):
        if not table_exists(con, table):
            raise WarehouseError(f"table {table!r} does not exist in the warehouse: materialize it first")
    alpha = (f", CASE WHEN t.date < $before THEN p.{ident(stored[1])} END AS {ident(stored[1])}" if stored else "")
    join = f" LEFT JOIN {ident(stored[0])} p USING (ticker, date)" if stored else ""
    return con.execute(
        f"SELECT t.ticker, t.date, t.ret_5d_f, b.{ident(benchmark)}{alpha} FROM {TARGETS_TABLE} t "
        f"JOIN {ident(benchmark)} b USING (ticker, date){join} "
        "WHERE list_contains($dates::DATE[], t.date) ORDER BY t.date, t.ticker",
        {"dates": list(dates), **({"before": before} if stored else {})}).pl()
