"""The sync domain: tickers and the five SHARADAR tables, and their job."""

from __future__ import annotations

from dagster import Definitions, PartitionsDefinition

from kairos_dagster.defs.side_tables import side_table_specs
from kairos_dagster.defs.sync.assets import build_sync_assets
from kairos_dagster.defs.sync.automation import weekly_sync_job


def build_defs(weekly: PartitionsDefinition) -> Definitions:
    return Definitions(assets=[*build_sync_assets(weekly), *side_table_specs("sync")], jobs=[weekly_sync_job])
