"""The feature domain: Phases 1-5, the factor report, and the weekly pipeline's jobs and schedules."""

from __future__ import annotations

from dagster import Definitions, PartitionsDefinition

from kairos_dagster.defs.features.assets import build_feature_assets
from kairos_dagster.defs.features.automation import (
    build_friday_schedule,
    build_restatement_sensor,
    daily_update_schedule,
    restatement_rebuild_job,
    targets_refresh_job,
    weekly_pipeline_job,
)


def build_defs(weekly: PartitionsDefinition) -> Definitions:
    return Definitions(assets=build_feature_assets(weekly), jobs=[weekly_pipeline_job, targets_refresh_job, restatement_rebuild_job],
                       schedules=[build_friday_schedule(weekly), daily_update_schedule],
                       sensors=[build_restatement_sensor(weekly)])
