"""Warehouse tables written alongside an asset (logs, registries, the broker's book) as assets of their own.

They are declared as asset specs with lineage from the asset that writes them, in that asset's group,
so the catalog lists every warehouse table. The writer reports their materialization when it has
written them: row count, the rows this run wrote (where the table records its run) and the column
schema read from DuckDB. A table written outside any run (`kairos override`) is reported to the
instance directly (a runless materialization).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import duckdb
from dagster import (
    AssetExecutionContext,
    AssetMaterialization,
    AssetSpec,
    DagsterInstance,
    MetadataValue,
    TableColumn,
    TableSchema,
)

from kairos_dagster.warehouse import store


@dataclass(frozen=True)
class SideTable:
    name: str
    domain: str
    group: str
    writers: tuple[str, ...]
    description: str


def _tables(domain: str, group: str, writers: tuple[str, ...], **descriptions: str) -> tuple[SideTable, ...]:
    return tuple(SideTable(name, domain, group, writers, text) for name, text in descriptions.items())


# The simulated broker's own book (the paper account when no Alpaca key is set).
SIM_BOOK: dict[str, str] = {
    "sim_account": "The simulated broker's cash.",
    "sim_orders": "The simulated broker's orders and their fills at the next session's open.",
    "sim_positions": "The simulated broker's positions, split-adjusted.",
    "sim_ticker_changes": "The ticker changes the simulated broker has applied to its book, per account.",
}
SYNC_WRITERS = ("sep_base", "daily", "sf1", "sf2", "sf3")
ML_WRITERS = ("ml_predictions_v2", "ml_predictions_v2_tuned")

SIDE_TABLES: tuple[SideTable, ...] = (
    *_tables("sync", "sync", SYNC_WRITERS,
             sync_rejects="Rows the feed served that failed validation, by table, week and reason; never stored "
                          "elsewhere.",
             sync_restatements="Every held row the feed rewrote (split, dividend, correction, revision, migrated): "
                               "table, ticker, kind, rows, dates, split factor and run; the restatement sensor "
                               "rebuilds the weeks it names."),
    *_tables("sync", "sync", ("tickers",),
             ticker_changes="Symbol changes detected by permaticker: old and new ticker, the day it was seen, the "
                            "run; held rows are re-keyed in the same transaction.",
             kairos_meta="Facts about the warehouse itself (key, value): schema version, the data source it holds."),
    *_tables("ml", "phase6_ml", ML_WRITERS,
             ml_metrics="Per model version and walk-forward fold: metrics by date and split (out-of-sample rank IC "
                        "per rebalance date, ICIR, ...) and feature importances (`metric`, `feature`, `value`).",
             ml_model_registry="Every trained model version: training window, label end, parameters, metrics and "
                               "artifact path."),
    *_tables("rebalance", "rebalance", ("rebalance_picks",),
             rebalance_gate_results="Every pre-rebalance gate verdict of every rebalance run: rebalance and signal "
                                    "date, gate, passed, blocking, severity, message, picks hash, run.",
             gate_overrides="Operator overrides of a blocking gate or kill switch (`kairos override`): gate, picks "
                            "hash, OS user, host, time, note."),
    *_tables("execution", "execution", ("execution",),
             kill_switch_evaluations="Every kill-switch evaluation of every preview and execution: switch, blocking, "
                                     "armed, tripped, overridden by, value, threshold, detail, picks hash."),
    *_tables("execution", "execution", ("execution_report",),
             execution_verifications="Each verification of a rebalance's orders: filled, partial, rejected, unfilled "
                                     "and open counts, fill rate, slippage and alerts."),
    *_tables("execution", "execution", ("execution", "execution_report"),
             execution_orders="Every order sent to the broker, once per client order id (derived from the rebalance "
                              "date, ticker and side): quantity, prices, status, fills, reason.",
             **SIM_BOOK),
)
BY_NAME = {t.name: t for t in SIDE_TABLES}


def side_table_specs(domain: str) -> list[AssetSpec]:
    """The domain's side tables as asset specs (materialized by their writers' runs, not launched)."""
    return [AssetSpec(t.name, deps=list(t.writers), group_name=t.group, kinds={"duckdb"}, description=t.description,
                      metadata={"writers": ", ".join(t.writers)})
            for t in SIDE_TABLES if t.domain == domain]


def side_table_metadata(con: duckdb.DuckDBPyConnection, name: str, run_id: str | None) -> dict[str, Any] | None:
    """Rows, the rows of `run_id` (tables with a run_id column) and the column schema; None if absent."""
    if not store.table_exists(con, name):
        return None
    columns = store.table_columns(con, name)
    table = store.ident(name)
    rows = int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    md: dict[str, Any] = {"dagster/row_count": MetadataValue.int(rows), "rows": MetadataValue.int(rows),
                          "dagster/column_schema": MetadataValue.table_schema(
                              TableSchema(columns=[TableColumn(c, t) for c, t in columns.items()]))}
    if run_id and "run_id" in columns:
        mine = int(con.execute(f"SELECT count(*) FROM {table} WHERE run_id = ?", [run_id]).fetchone()[0])
        md["rows_this_run"] = MetadataValue.int(mine)
    return md


def report_side_tables(context: AssetExecutionContext, con: duckdb.DuckDBPyConnection, names: Iterable[str]) -> None:
    """Log a materialization of each named side table the warehouse holds (the writer's run wrote it)."""
    for name in names:
        md = side_table_metadata(con, name, context.run.run_id)
        if md is not None:
            context.log_event(AssetMaterialization(asset_key=name, metadata=md,
                                                   description=f"written by {context.op_execution_context.op.name}"))


def report_runless(instance: DagsterInstance, con: duckdb.DuckDBPyConnection, name: str, description: str) -> None:
    """A side table written outside any run: report it to the instance (the UI shows it as materialized)."""
    md = side_table_metadata(con, name, None)
    if md is not None:
        instance.report_runless_asset_event(AssetMaterialization(asset_key=name, metadata=md, description=description))
