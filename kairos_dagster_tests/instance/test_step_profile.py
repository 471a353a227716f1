"""The bench's profile of a run (benchmarks.stages.step_phases): each step's wall time split by its event log."""

import shutil

from dagster import AssetCheckResult, AssetCheckSpec, DagsterInstance, Definitions, IOManager, Output, asset

from benchmarks.stages import PHASES, _step_seconds, step_phases
from kairos_dagster.defs.partitions import SINGLE_RUN, settings_partitions
from kairos_dagster.instance.runner import run_selection
from kairos_dagster.settings import INSTANCE_YAML, load_settings

WEEKLY = settings_partitions(load_settings())


class _Memory(IOManager):
    def __init__(self):
        self.values = {}

    def handle_output(self, context, obj):
        self.values[context.asset_key] = obj

    def load_input(self, context):
        return self.values[context.upstream_output.asset_key]


@asset(partitions_def=WEEKLY, backfill_policy=SINGLE_RUN)
def upstream(context) -> Output:
    return Output(len(context.partition_keys))


@asset(partitions_def=WEEKLY, backfill_policy=SINGLE_RUN,
       check_specs=[AssetCheckSpec("positive", asset="downstream")])
def downstream(context, upstream):
    for key in context.partition_keys:
        context.add_asset_metadata({"week": key}, partition_key=key)
    yield Output(upstream * 2)
    yield AssetCheckResult(check_name="positive", passed=upstream > 0)


def test_every_step_is_split_into_its_phases_and_the_split_adds_up(tmp_path, monkeypatch):
    shutil.copy(INSTANCE_YAML, tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    keys = WEEKLY.get_partition_keys()[-6:]
    io = _Memory()
    defs = Definitions(assets=[upstream, downstream], resources={"io_manager": io})
    with DagsterInstance.get() as instance:
        result = run_selection(defs, ["upstream", "downstream"], partition_range=(keys[0], keys[-1]),
                               instance=instance)
        assert result.success
        timing = _step_seconds(instance, result.run_id)
    assert set(timing["steps"]) == {"upstream", "downstream"}
    down = timing["phases"]["downstream"]
    assert list(down) == list(PHASES)  # it loads, computes, writes, records its six weeks, then checks
    for step, total in timing["steps"].items():
        assert abs(sum(timing["phases"][step].values()) - total) < 0.05
    assert set(timing["phase_totals"]) == {*PHASES, "other"}


def test_a_step_missing_marks_is_split_as_far_as_they_go():
    marks = [("STEP_START", 0.0), ("LOADED_INPUT", 1.0), ("STEP_FAILURE", 4.0)]
    assert step_phases(marks) == {"load": 1.0, "other": 3.0}  # failed after loading its inputs
    assert step_phases([("LOADED_INPUT", 1.0)]) == {}
    full = [("STEP_START", 0.0), ("LOADED_INPUT", 0.5), ("LOADED_INPUT", 1.0), ("STEP_OUTPUT", 3.0),
            ("ASSET_MATERIALIZATION", 5.0), ("ASSET_MATERIALIZATION", 5.5), ("HANDLED_OUTPUT", 6.0),
            ("ASSET_CHECK_EVALUATION", 6.5), ("STEP_SUCCESS", 7.0)]
    assert step_phases(full) == {"load": 1.0, "compute": 2.0, "write": 2.0, "events": 1.0, "checks": 1.0}
