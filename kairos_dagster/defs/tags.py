"""Run tags every domain's jobs, schedules and sensors share."""

from __future__ import annotations

# Runs with this tag run one at a time, in the order they were queued (dagster.yaml).
SERIAL_TAG = {"kairos/serial": "warehouse"}
RANGE_START_TAG, RANGE_END_TAG = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
# The op names a run config addresses ({"ops": {<op>: {"config": ...}}}), for the CLI's launches.
REBALANCE_OP = "rebalance"
EXECUTION_OP = "execution"
BACKTEST_OP = "backtest"
