"""Every Dagster resource of the code location, one module each, built from the settings."""

from __future__ import annotations

from typing import Any

from kairos_dagster.resources.alerts import AlertNotifier
from kairos_dagster.resources.backtest_outputs import BacktestOutputs
from kairos_dagster.resources.broker import BrokerResource
from kairos_dagster.resources.kill_switches import KillSwitches
from kairos_dagster.resources.ml import MLResource
from kairos_dagster.resources.rebalance_outputs import RebalanceOutputs
from kairos_dagster.resources.source import source_resource
from kairos_dagster.resources.warehouse import DuckDBWarehouse, KairosDuckDBIOManager
from kairos_dagster.settings import Settings


def build_resources(settings: Settings) -> dict[str, Any]:
    """The resources of a Definitions built from `settings`."""
    path = str(settings.warehouse)
    lake_data_path = (settings.lake.data_path or "") if settings.lake else ""
    return {
        "warehouse_io": KairosDuckDBIOManager(path=path, lake_data_path=lake_data_path),
        "warehouse": DuckDBWarehouse(path=path, lake_data_path=lake_data_path),
        # Fields a run config leaves out keep the settings' values: a partial run config can never change
        # where the data comes from (resources.source.source_resource).
        "source": source_resource(settings),
        "ml": MLResource.from_settings(settings),
        "rebalance_outputs": RebalanceOutputs.from_settings(settings),
        "backtest_outputs": BacktestOutputs.from_settings(settings),
        # Simulated unless Alpaca credentials are set; those arrive as EnvVar references, never values.
        "broker": BrokerResource.from_env(path, auto_paper=settings.auto_paper),
        "kill_switches": KillSwitches.from_settings(settings),
        # Email / webhook alerts; the SMTP password and the webhook URL arrive as EnvVar references.
        "alerts": AlertNotifier.from_env(settings.output_dir),
    }
