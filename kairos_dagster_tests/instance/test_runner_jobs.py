"""A run the CLI launches belongs to a job of the code location, so the UI can show and re-execute it:
the real `kairos` CLI, then the code location loaded from workspace.yaml out of process, as the webserver
loads it, and Dagster's own GraphQL (the API the UI calls), whose re-execution launches a real run."""

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus
from dagster._core.test_utils import wait_for_runs_to_finish
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

from kairos_dagster.instance import run_guard
from kairos_dagster.settings import PROJECT_ROOT
from kairos_dagster_tests.cli.test_cli_failures import kairos, make_env

pytestmark = pytest.mark.slow

JOB = """
query Job($runId: ID!, $selector: PipelineSelector!) {
  runOrError(runId: $runId) { __typename ... on Run { pipelineName status assetSelection { path } } }
  pipelineOrError(params: $selector) { __typename ... on Pipeline { name } }
}"""
REEXECUTE = """
mutation Reexecute($params: ReexecutionParams!) {
  launchPipelineReexecution(reexecutionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message stack }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""


def test_a_cli_run_is_a_run_of_the_code_locations_asset_job_and_re_executes(tmp_path, monkeypatch):
    env = make_env(tmp_path)
    out = kairos(env, "backfill", "2023-01-02", "2023-01-13", "--select", "tickers,sep_base")
    assert out.returncode == 0, out.stderr[-3000:]
    for k, v in env.items():  # the code location below reads the same settings as the CLI did
        monkeypatch.setenv(k, v)
    with DagsterInstance.get() as instance:
        (run,) = instance.get_runs()
        assert run.status == DagsterRunStatus.SUCCESS
        assert run.asset_selection == {AssetKey("tickers"), AssetKey("sep_base")}
        assert run.tags[run_guard.RUN_TAG] == run.run_id
        selector = {"repositoryLocationName": "kairos", "repositoryName": "__repository__",
                    "pipelineName": run.job_name}
        with define_out_of_process_context(str(PROJECT_ROOT / "workspace.yaml"), None, instance) as ctx:
            found = execute_dagster_graphql(ctx, JOB, {"runId": run.run_id, "selector": selector}).data
            # The UI's "Pipeline not found" / disabled Re-execute came from a job the code location lacked.
            assert found["runOrError"]["pipelineName"] == run.job_name
            assert found["pipelineOrError"] == {"__typename": "Pipeline", "name": run.job_name}
            launched = execute_dagster_graphql(ctx, REEXECUTE, {"params": {
                "parentRunId": run.run_id, "strategy": "ALL_STEPS"}}).data["launchPipelineReexecution"]
            assert launched["__typename"] == "LaunchRunSuccess", "\n".join(launched.get("stack") or [str(launched)])
            child_id = launched["run"]["runId"]
            # The instance queues it (QueuedRunCoordinator): one pass of the daemon's dequeuer launches it.
            assert instance.get_run_by_id(child_id).status == DagsterRunStatus.QUEUED
            with QueuedRunCoordinatorDaemon(interval_seconds=1) as dequeuer:
                list(dequeuer.run_iteration(ctx.process_context))
            wait_for_runs_to_finish(instance, timeout=240)
        child = instance.get_run_by_id(child_id)
        assert child.status == DagsterRunStatus.SUCCESS, [e.message for e in instance.all_logs(child_id)][-5:]
        assert child.job_name == run.job_name and child.asset_selection == run.asset_selection
        # The same weeks again, and the CLI's liveness tags (copied by the re-execution) do not make the
        # guard take the child for a run of the CLI's dead process.
        assert {k: child.tags.get(k) for k in ("dagster/asset_partition_range_start",
                                               "dagster/asset_partition_range_end")} == {
            "dagster/asset_partition_range_start": "2023-01-02", "dagster/asset_partition_range_end": "2023-01-09"}
        assert run_guard.process_alive(child.tags, child.run_id) is None
