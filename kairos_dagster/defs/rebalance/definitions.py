"""The rebalance domain: rebalance_picks and rebalance_trades, their gates, job and sensor."""

from __future__ import annotations

from dagster import Definitions, PartitionsDefinition

from kairos_dagster.defs.rebalance.assets import build_rebalance_assets
from kairos_dagster.defs.rebalance.automation import rebalance_day_sensor, rebalance_job
from kairos_dagster.defs.side_tables import side_table_specs


def build_defs(weekly: PartitionsDefinition) -> Definitions:
    return Definitions(assets=[*build_rebalance_assets(weekly), *side_table_specs("rebalance")], jobs=[rebalance_job], sensors=[rebalance_day_sensor])
