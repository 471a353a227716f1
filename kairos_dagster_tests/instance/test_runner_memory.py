"""A run frees each step's output once the IO manager has written it: a CLI run keeps no table in memory
until the run's end (Dagster's `execute_in_process` does, for `output_for_node`: a 36-asset rebuild at
5,000 x 10 held every table and was killed for memory)."""

import gc
import weakref

from dagster import Definitions, IOManager, asset
from dagster._core.test_utils import instance_for_test

from kairos_dagster.instance.runner import run_selection


class Table:
    """Stands for a step's output frame (a weak reference tells whether anything still holds it)."""

    def __init__(self, rows: int) -> None:
        self.rows = list(range(rows))


class Written(IOManager):
    """Writes nowhere: what matters is that after handle_output nothing of the run holds the value."""

    def handle_output(self, context, obj) -> None:
        self.seen = len(obj.rows)

    def load_input(self, context):  # the downstream asset depends on the upstream one without loading it
        raise AssertionError("not loaded")


def test_a_steps_output_is_freed_once_written_not_held_until_the_run_ends():
    refs: dict[str, object] = {}

    @asset
    def upstream() -> Table:
        table = Table(1000)
        refs["upstream"] = weakref.ref(table)
        return table

    @asset(deps=[upstream])
    def downstream() -> Table:
        gc.collect()
        refs["upstream_alive_in_next_step"] = refs["upstream"]() is not None
        return Table(1)

    defs = Definitions(assets=[upstream, downstream], resources={"io_manager": Written()})
    with instance_for_test() as instance:
        result = run_selection(defs, ["upstream", "downstream"], instance=instance)
    assert result.success
    assert refs["upstream_alive_in_next_step"] is False
    # The run's result still tells what it materialized (the CLI, the bench and the tests read it).
    assert {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()} == {"upstream", "downstream"}


def test_a_waiting_run_gives_the_c_heaps_free_pages_back_while_and_after_it_runs(monkeypatch):
    from kairos_dagster.instance import runner

    calls: list[float] = []
    monkeypatch.setattr(runner, "TRIM_EVERY_S", 0.05)
    monkeypatch.setattr(runner, "return_freed_memory", lambda: calls.append(1.0))

    @asset
    def slow() -> Table:
        import time

        time.sleep(0.6)  # a step long enough for the waiting thread to trim during it
        return Table(1)

    with instance_for_test() as instance:
        assert run_selection(Definitions(assets=[slow], resources={"io_manager": Written()}), ["slow"],
                             instance=instance).success
    assert len(calls) >= 3  # during the step, and once when the run ends
    monkeypatch.undo()
    runner.return_freed_memory()  # the real call (glibc here) runs and returns


def _cycle_run(monkeypatch, collect_above: int, wait_s: float) -> bool:
    """Run a step that leaves a reference cycle, then one that waits for it to go (automatic collection off);
    whether the cycle was collected during the second step."""
    import time

    from kairos_dagster.instance import runner

    monkeypatch.setattr(runner, "COLLECT_ABOVE_BYTES", collect_above)
    monkeypatch.setattr(runner, "STEP_POLL_S", 0.05)
    refs: dict[str, object] = {}

    @asset
    def leaves_a_cycle() -> Table:
        table = Table(1000)
        table.me = table  # freed only by a garbage collection (a booster, a matrix held in a traceback)
        refs["cycle"] = weakref.ref(table)
        return Table(1)

    @asset(deps=[leaves_a_cycle])
    def next_step() -> Table:
        deadline = time.monotonic() + wait_s
        while refs["cycle"]() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        refs["collected"] = refs["cycle"]() is None
        return Table(1)

    defs = Definitions(assets=[leaves_a_cycle, next_step], resources={"io_manager": Written()})
    gc.disable()
    try:
        with instance_for_test() as instance:
            assert run_selection(defs, ["leaves_a_cycle", "next_step"], instance=instance).success
    finally:
        gc.enable()
    return bool(refs["collected"])


def test_after_a_step_ends_a_large_process_collects_the_cycles_it_left(monkeypatch):
    assert _cycle_run(monkeypatch, collect_above=0, wait_s=20.0)


def test_a_small_process_skips_the_collection(monkeypatch):
    assert not _cycle_run(monkeypatch, collect_above=1 << 50, wait_s=1.0)
