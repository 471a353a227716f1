"""The execution domain: approval, gated execution, verification, performance, the ops report, and their
sensors and schedule."""

from __future__ import annotations

from dagster import Definitions, PartitionsDefinition

from kairos_dagster.defs.execution.alerting import (
    check_alert_sensor,
    deadman_sensor,
    run_failure_alert_sensor,
)
from kairos_dagster.defs.execution.assets import build_execution_assets
from kairos_dagster.defs.execution.automation import (
    execution_job,
    execution_sensor,
    execution_verify_job,
    execution_verify_sensor,
    performance_job,
    performance_sensor,
)
from kairos_dagster.defs.execution.ops_report import (
    build_ops_report_asset,
    ops_report_job,
    ops_report_schedule,
)
from kairos_dagster.defs.side_tables import side_table_specs


def build_defs(weekly: PartitionsDefinition) -> Definitions:
    return Definitions(assets=[*build_execution_assets(weekly), build_ops_report_asset(weekly),
                               *side_table_specs("execution")],
                       jobs=[execution_job, execution_verify_job, performance_job, ops_report_job],
                       sensors=[execution_sensor, execution_verify_sensor, performance_sensor,
                                run_failure_alert_sensor, check_alert_sensor, deadman_sensor],
                       schedules=[ops_report_schedule])
