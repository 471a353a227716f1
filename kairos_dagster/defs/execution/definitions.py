"""The execution domain: approval, gated execution, verification, and their sensors."""

from __future__ import annotations

from dagster import Definitions, PartitionsDefinition

from kairos_dagster.defs.execution.assets import build_execution_assets
from kairos_dagster.defs.execution.automation import (
    execution_job,
    execution_sensor,
    execution_verify_job,
    execution_verify_sensor,
    performance_job,
    performance_sensor,
)


def build_defs(weekly: PartitionsDefinition) -> Definitions:
    return Definitions(assets=build_execution_assets(weekly), jobs=[execution_job, execution_verify_job, performance_job],
                       sensors=[execution_sensor, execution_verify_sensor, performance_sensor])
