"""A run checkpoints the DuckDB warehouse once, at its end, not at every step's connection (each costs about a
second on a multi-GB file): the real in-process executor, the real warehouse resource and IO manager."""

import datetime as dt
from pathlib import Path

import duckdb
import polars as pl
from dagster import AssetExecutionContext, DailyPartitionsDefinition, asset, materialize

from kairos_dagster.resources.warehouse import DuckDBWarehouse, KairosDuckDBIOManager

DAYS = DailyPartitionsDefinition(start_date="2024-01-01")
SEEN: dict[str, bool] = {}


def _rows(context: AssetExecutionContext, value: float) -> pl.DataFrame:
    day = context.partition_time_window.start.date()
    return pl.DataFrame({"ticker": ["AAA", "BBB"], "date": [day, day], "close": [value, value]})


@asset(partitions_def=DAYS, io_manager_key="warehouse_io")
def first_table(context: AssetExecutionContext, warehouse: DuckDBWarehouse) -> pl.DataFrame:
    with warehouse.connect() as con:  # a step's own write through the resource
        con.execute("CREATE OR REPLACE TABLE side_note AS SELECT 1 AS n")
    return _rows(context, 1.0)


@asset(partitions_def=DAYS, io_manager_key="warehouse_io")
def second_table(context: AssetExecutionContext, warehouse: DuckDBWarehouse, first_table: pl.DataFrame) -> pl.DataFrame:
    wal = Path(warehouse.path + ".wal")
    SEEN["wal_during_run"] = wal.exists()  # the first step's commits are still in the log
    SEEN["side_note"] = warehouse.query("SELECT n FROM side_note").item() == 1
    return first_table.with_columns(pl.col("close") * 2)


def test_a_run_leaves_its_commits_in_the_log_until_it_ends_then_checkpoints_once(tmp_path, instance):
    path = str(tmp_path / "w.duckdb")
    duckdb.connect(path).close()  # an existing warehouse (a first sync's run has no file to hold yet)
    resources = {"warehouse": DuckDBWarehouse(path=path), "warehouse_io": KairosDuckDBIOManager(path=path)}
    SEEN.clear()
    result = materialize([first_table, second_table], resources=resources, partition_key="2024-01-02",
                         instance=instance)
    assert result.success
    assert SEEN == {"wal_during_run": True, "side_note": True}
    assert not Path(path + ".wal").exists()  # folded into the file when the run ended
    con = duckdb.connect(path, read_only=True)
    try:
        assert con.execute("SELECT sum(close) FROM second_table").fetchone()[0] == 4.0
        assert con.execute("SELECT min(date) FROM first_table").fetchone()[0] == dt.date(2024, 1, 2)
    finally:
        con.close()
