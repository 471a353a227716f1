"""Run asset selections through the Dagster instance, so CLI runs show up in the UI's run history."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dagster import (
    AssetKey,
    AssetSelection,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    JobDefinition,
)
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.utils import make_new_run_id

from kairos_dagster.defs.tags import RANGE_END_TAG, RANGE_START_TAG
from kairos_dagster.instance import run_guard
from kairos_dagster.instance.progress import RunProgress, StepEnds, run_weeks
from kairos_dagster.settings import INSTANCE_YAML, PROJECT_ROOT
from kairos_dagster.warehouse import store


def dagster_home() -> Path:
    """DAGSTER_HOME, defaulting to the repository's .dagster_home with the project's dagster.yaml in it."""
    home = Path(os.environ.get("DAGSTER_HOME") or (PROJECT_ROOT / ".dagster_home"))
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    source = INSTANCE_YAML
    if not target.exists() and source.exists():
        shutil.copyfile(source, target)
    elif target.exists():
        # A home made before the instance modules moved into kairos_dagster/instance/ names the old module.
        text = target.read_text()
        if "kairos_dagster.instance_storage" in text:
            target.write_text(text.replace("kairos_dagster.instance_storage", "kairos_dagster.instance.storage"))
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def get_instance() -> DagsterInstance:
    dagster_home()
    return DagsterInstance.get()


def run_selection(
    defs: Definitions,
    selection: AssetSelection | Sequence[str],
    *,
    partition_key: str | None = None,
    partition_range: tuple[str, str] | None = None,
    run_config: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    instance: DagsterInstance | None = None,
    raise_on_error: bool = True,
    echo: Callable[[str], None] | None = None,
) -> ExecuteInProcessResult:
    """Materialize `selection` for one partition, a range of partitions in a single run, or unpartitioned.

    Before launching, runs of this host whose process died are marked failed and their warehouse slot
    freed, and a live run holding the slot is waited for, saying so (run_guard)."""
    if not isinstance(selection, AssetSelection):
        selection = AssetSelection.assets(*[AssetKey(s) for s in selection])
    instance = instance or get_instance()
    run_guard.prepare_launch(instance, echo or _stderr)
    run_id = make_new_run_id()
    run_tags = {**run_guard.launch_tags(run_id), **dict(tags or {})}
    if partition_range is not None:
        start, end = partition_range
        if start == end:
            partition_key = start
        else:
            run_tags[RANGE_START_TAG], run_tags[RANGE_END_TAG] = start, end
    # The definitions' own asset job over the selection, as the UI's "Materialize" launches it: the run
    # belongs to a job the code location has, so its job page, the timeline and Re-execute work.
    job = defs.resolve_implicit_global_asset_job_def()
    graph = defs.resolve_asset_graph()
    # Side tables (defs/side_tables) are materialized by their writers' runs: a group selection leaves them out.
    resolved = selection.resolve(graph)
    keys = sorted((k for k in resolved if graph.get(k).is_executable), key=lambda k: k.to_user_string())
    if not keys:
        written_beside = sorted(k.to_user_string() for k in resolved)
        if written_beside:
            writers = sorted({p.to_user_string() for k in resolved for p in graph.get(k).parent_keys})
            raise ValueError(f"{', '.join(written_beside)} are written by the runs of {', '.join(writers)}: "
                             "select those assets")
        raise ValueError("the asset selection is empty")
    config = dict(run_config or {})
    # Dagster's console logger prints every engine event at DEBUG; operators want the asset logs.
    config.setdefault("loggers", {"console": {"config": {"log_level": os.environ.get("KAIROS_LOG_LEVEL", "INFO")}}})

    def execute() -> ExecuteInProcessResult:
        if job.executor_def.name in PROCESS_EXECUTORS and job.executor_def.name == _settings_executor():
            return _execute_in_processes(job.name, keys, config, run_tags, partition_key, run_id, instance,
                                         raise_on_error)
        with _recorded_origin(instance, job.name):
            return _execute_in_process(job, run_config=config, asset_selection=keys, instance=instance,
                                       partition_key=partition_key, tags=run_tags, raise_on_error=raise_on_error,
                                       run_id=run_id)

    progress = None
    if _level_shows_info(config):
        weeks = run_weeks(run_tags) if partition_range is not None else 1
        progress = RunProgress(instance, run_id, keys, weeks, echo or _stderr)
    return _interruptible(execute, instance, run_id, echo or _stderr, progress)


def _level_shows_info(config: Mapping[str, Any]) -> bool:
    level = ((config.get("loggers") or {}).get("console") or {}).get("config", {}).get("log_level", "INFO")
    return logging.getLevelName(str(level).upper()) in (logging.DEBUG, logging.INFO)


# The code location of workspace.yaml and [tool.dagster] (the webserver's and the daemon's).
LOCATION_NAME, DEFINITIONS_MODULE, REPOSITORY_NAME = "kairos", "kairos_dagster.definitions", "__repository__"


def job_origin(job_name: str):
    """Where the webserver finds `job_name`: the location of workspace.yaml, its Definitions' repository."""
    from dagster._core.remote_origin import (
        ManagedGrpcPythonEnvCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    target = LoadableTargetOrigin(executable_path=sys.executable, module_name=DEFINITIONS_MODULE,
                                  working_directory=str(PROJECT_ROOT))
    location = ManagedGrpcPythonEnvCodeLocationOrigin(loadable_target_origin=target, location_name=LOCATION_NAME)
    return RemoteJobOrigin(repository_origin=RemoteRepositoryOrigin(location, REPOSITORY_NAME), job_name=job_name)


# The executors of run_executor (definitions.py) that run steps in other processes: those reload the code
# location from its module, so only a Definitions built from the settings (not a caller's own) runs there.
PROCESS_EXECUTORS = ("multiprocess", "k8s_job")


def _settings_executor() -> str:
    from kairos_dagster.settings import load_settings

    return load_settings().executor


def _execute_in_processes(job_name: str, keys: Sequence[AssetKey], config: Mapping[str, Any],
                          tags: Mapping[str, str], partition_key: str | None, run_id: str,
                          instance: DagsterInstance, raise_on_error: bool):
    """The run through the job's multiprocess (or k8s job) executor (KAIROS_EXECUTOR, DuckLake): each step
    in a process (a pod) that loads the code location from its module, as a run worker of the daemon does. The run
    is created here, with the CLI's tags and id and the location's origin, then executed in this process."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository
    from dagster._core.execution.api import execute_run

    recon = ReconstructableRepository.for_module(DEFINITIONS_MODULE, "defs", working_directory=str(PROJECT_ROOT))
    job = recon.get_reconstructable_job(job_name)
    run_tags = dict(tags) | ({"dagster/partition": partition_key} if partition_key else {})
    run = instance.create_run_for_job(job_def=job.get_definition(), run_id=run_id, run_config=dict(config),
                                      tags=run_tags, asset_selection=frozenset(keys),
                                      job_code_origin=job.get_python_origin(), remote_job_origin=job_origin(job_name))
    return execute_run(job, run, instance, raise_on_error=raise_on_error)


def _execute_in_process(job: JobDefinition, *, run_config: Mapping[str, Any], asset_selection: Sequence[AssetKey],
                        instance: DagsterInstance, partition_key: str | None, tags: Mapping[str, str],
                        raise_on_error: bool, run_id: str) -> ExecuteInProcessResult:
    """`JobDefinition.execute_in_process` without its output capture. That API keeps every step's output
    value in memory until the run ends (for `output_for_node`); our outputs are warehouse tables the IO
    manager has written, and a full rebuild held all 36 of them: 24 GB, killed for memory at 5,000 x 10.
    Here a step's frame is freed once it is written. Mirrors dagster 1.13's method otherwise (the pin)."""
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.definitions.partitions.context import partition_loading_context
    from dagster._core.execution.execute_in_process import (
        core_execute_in_process,
        merge_run_tags,
        type_check_and_normalize_args,
    )

    run_config, op_selection, selection, resource_defs, partition_key, input_values = type_check_and_normalize_args(
        run_config=run_config, partition_key=partition_key, op_selection=None, asset_selection=asset_selection,
        input_values=None, resources=None)
    ephemeral = job.as_ephemeral_job(resource_defs=resource_defs, input_values=input_values,
                                     op_selection=op_selection, asset_selection=selection)
    if partition_key and ephemeral.partitions_def:
        with partition_loading_context(dynamic_partitions_store=instance) as ctx:
            ephemeral.validate_partition_key(partition_key=partition_key, selected_asset_keys=set(selection),
                                             context=ctx)
    if not run_config and ephemeral.partitioned_config and partition_key:
        run_config = ephemeral.partitioned_config.get_run_config_for_partition_key(partition_key)
    return core_execute_in_process(
        job=InMemoryJob(job_def=ephemeral), run_config=run_config, instance=instance,
        output_capturing_enabled=False, raise_on_error=raise_on_error,
        run_tags=merge_run_tags(job_def=job, partition_key=partition_key, tags=tags, asset_selection=selection,
                                instance=instance, run_config=run_config),
        run_id=run_id, asset_selection=frozenset(selection))


@contextlib.contextmanager
def _recorded_origin(instance: DagsterInstance, job_name: str) -> Iterator[None]:
    """Record the code location's origin on the run that execute_in_process creates: it records none, and
    without one the UI cannot re-execute the run (`launchPipelineReexecution` needs the parent's origin).
    The run is created through the instance, so its method is wrapped for the one call."""
    create = instance.create_run_for_job
    origin = job_origin(job_name)

    def with_origin(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("remote_job_origin", origin)
        return create(*args, **kwargs)

    instance.create_run_for_job = with_origin  # type: ignore[method-assign]
    try:
        yield
    finally:
        del instance.create_run_for_job


# How often a waiting CLI run gives the C heap's free pages back (a few ms each time).
TRIM_EVERY_S = 15.0


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


def return_freed_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's `malloc_trim`). XGBoost's and numpy's
    buffers come from that heap, and glibc keeps what a step freed: after the two ML walk-forwards a
    one-command rebuild at 5,000 x 10 stayed 12 GB resident, and the matrix step after them peaked at
    21.5 GB (11.5 GB alone). Polars' own allocator returns its pages by itself; DuckDB frees its buffers
    when the warehouse closes. Safe from any thread."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


# After a step ends, a process this large collects its cyclic garbage and trims the heap (see `after_step`).
COLLECT_ABOVE_BYTES = 4 << 30
STEP_POLL_S = 2.0  # how often a run without printed progress reads its event log for ended steps


def resident_bytes() -> int:
    """This process's resident set (Linux /proc; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def after_step() -> None:
    """A step has ended: when the process is large, free what the step left. Arrays held in reference cycles
    (boosters, matrices, frames in tracebacks) go only at a full garbage collection, which CPython starts by
    the count of objects made, not by their size; then the C heap's free pages go back (`return_freed_memory`).
    A collection costs a fraction of a second in a big process, so small ones skip it."""
    if resident_bytes() > COLLECT_ABOVE_BYTES:
        gc.collect()
        return_freed_memory()


class RunInterrupted(RuntimeError):
    """SIGINT/SIGTERM stopped a run: the step in progress was rolled back or finished, no later step ran."""

    def __init__(self, run_id: str, signame: str, result: ExecuteInProcessResult | None) -> None:
        self.run_id, self.signame, self.result = run_id, signame, result
        super().__init__(f"run {run_id} stopped by {signame}: canceled")


def _interruptible(execute: Callable[[], ExecuteInProcessResult], instance: DagsterInstance, run_id: str,
                   echo: Callable[[str], None], progress: RunProgress | None = None) -> ExecuteInProcessResult:
    """Run `execute` in a worker thread, so that SIGINT/SIGTERM reach this (main) thread.

    Dagster's in-process execution captures SIGINT and never acts on it between steps. Here a signal
    marks the run CANCELING and raises DagsterExecutionInterruptedError inside the worker at its next
    Python instruction: a step in a DuckDB call finishes that call first, then its transaction rolls back
    (atomic window writes), no further step starts, and Dagster records the run as CANCELED. While it waits,
    this thread prints the run's progress, one line per asset done (instance.progress)."""
    if threading.current_thread() is not threading.main_thread():
        return execute()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = execute()
        except BaseException as exc:  # delivered back to the caller below
            box["error"] = exc

    worker = threading.Thread(target=work, name=f"kairos-run-{run_id[:8]}", daemon=True)
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        if not received:
            echo(f"{signal.Signals(signum).name}: stopping run {run_id} after the current step's write rolls "
                 "back or completes; no further step starts")
            run = instance.get_run_by_id(run_id)
            if run is not None and not run.is_finished:
                instance.report_run_canceling(run, message=f"{signal.Signals(signum).name} received by the kairos CLI")
        received.append(signum)
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident),
                                                   ctypes.py_object(DagsterExecutionInterruptedError))

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    watcher: RunProgress | StepEnds = progress if progress is not None else StepEnds(instance, run_id, STEP_POLL_S)
    try:
        worker.start()
        next_trim = time.monotonic() + TRIM_EVERY_S
        while worker.is_alive():
            worker.join(0.2)
            ended = watcher.steps_ended
            watcher.poll()
            if watcher.steps_ended != ended:
                after_step()
            if time.monotonic() >= next_trim:
                store.prune_read_caches()  # the run's idle cached inputs, before the trim gives their pages back
                return_freed_memory()
                next_trim = time.monotonic() + TRIM_EVERY_S
        return_freed_memory()
        if progress is not None:
            progress.poll(force=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        raise RunInterrupted(run_id, signal.Signals(received[0]).name, box.get("result"))
    if "error" in box:
        raise box["error"]
    return box["result"]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def failure_messages(result: ExecuteInProcessResult) -> list[str]:
    """One line per failed step, naming the step and its week(s): an operator's Failure description,
    else the innermost error's message (the wrapper says only "error in op")."""
    from kairos_dagster.instance.console_logger import innermost_error

    tags = result.dagster_run.tags
    weeks = (f" (weeks {tags[RANGE_START_TAG]} .. {tags[RANGE_END_TAG]})" if RANGE_START_TAG in tags
             else f" (week {tags['dagster/partition']})" if "dagster/partition" in tags else "")
    lines = []
    for event in result.all_events:
        if not event.is_step_failure or event.event_specific_data is None:
            continue
        data = event.event_specific_data
        user = getattr(data, "user_failure_data", None)
        cause = user.description if user is not None and user.description else innermost_error(data.error)
        lines.append(f"{event.step_key}{weeks}: {cause.strip()}")
    return lines
