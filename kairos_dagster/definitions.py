"""The one `Definitions` object of the Kairos code location."""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from kairos_dagster.assets.execution import EXECUTION_ASSETS
from kairos_dagster.assets.features import FEATURE_ASSETS
from kairos_dagster.assets.matrix import MATRIX_ASSETS
from kairos_dagster.assets.ml import ML_ASSETS, MLResource
from kairos_dagster.assets.rebalance import REBALANCE_ASSETS, RebalanceOutputs
from kairos_dagster.assets.sync import SYNC_ASSETS
from kairos_dagster.automation import (
    daily_update_schedule,
    execution_verify_job,
    execution_verify_sensor,
    friday_weekly_schedule,
    rebalance_day_sensor,
    rebalance_job,
    targets_refresh_job,
    weekly_pipeline_job,
    weekly_sync_job,
)
from kairos_dagster.broker.resource import BrokerResource
from kairos_dagster.console_logger import compact_console_logger
from kairos_dagster.instance_tuning import install_sqlite_tuning
from kairos_dagster.resources import source_resource
from kairos_dagster.settings import Settings, load_settings
from kairos_dagster.warehouse.io_manager import DuckDBWarehouse, KairosDuckDBIOManager


def build_resources(settings: Settings) -> dict:
    path = str(settings.duckdb_path)
    # Fields a run config leaves out keep the settings' values: a partial run config can never change
    # where the data comes from (resources.source_resource).
    source = source_resource(settings)
    return {
        "warehouse_io": KairosDuckDBIOManager(path=path),
        "warehouse": DuckDBWarehouse(path=path),
        "source": source,
        "ml": MLResource.from_settings(settings),
        "rebalance_outputs": RebalanceOutputs.from_settings(settings),
        # Simulated unless Alpaca credentials are set; those arrive as EnvVar references, never values.
        "broker": BrokerResource.from_env(path, auto_paper=settings.auto_paper),
    }


def build_definitions(settings: Settings | None = None) -> Definitions:
    # Every process that loads the code location (run workers, the webserver's code server, the CLI)
    # writes instance events: tune the instance's SQLite once (see instance_tuning).
    install_sqlite_tuning()
    settings = settings or load_settings()
    return Definitions(
        assets=[*SYNC_ASSETS, *FEATURE_ASSETS, *ML_ASSETS, *MATRIX_ASSETS, *REBALANCE_ASSETS, *EXECUTION_ASSETS],
        jobs=[weekly_sync_job, weekly_pipeline_job, targets_refresh_job, rebalance_job, execution_verify_job],
        schedules=[friday_weekly_schedule, daily_update_schedule],
        sensors=[rebalance_day_sensor, execution_verify_sensor],
        resources=build_resources(settings),
        # One DuckDB writer: separate processes buy nothing and cost ~3 s of start-up per step.
        executor=in_process_executor,
        loggers={"console": compact_console_logger},
    )


defs = build_definitions()
