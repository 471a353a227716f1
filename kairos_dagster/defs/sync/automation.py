"""The sync job: one week, or a range of weeks, of SHARADAR data."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

SYNC_SELECTION = AssetSelection.groups("sync")

weekly_sync_job = define_asset_job(
    "weekly_sync_job",
    selection=SYNC_SELECTION,
    description="Sync one week (or a range of weeks) of SHARADAR data into the warehouse.",
)
