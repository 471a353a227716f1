"""No run can wedge the platform: dead runs are reaped and their `duckdb` pool claims freed.

A run the CLI launches records its process in its tags (host, PID and the PID's start time, so a
reused PID is not mistaken for the run's). Before launching, `prepare_launch` marks every run of
*this host* that is still STARTED (or CANCELING) but whose process is gone as failed, with the reason,
and frees its concurrency slots and pending entries; runs of other hosts are never touched (Dagster's
run monitoring, `free_slots_after_run_end_seconds` in dagster.yaml, covers runs the daemon launched).
It also frees the claims of runs that already ended but kept them (a cancel does not release pending
entries: dagster-io/dagster #28456, #32560). Then it waits, saying so, while a live run holds the
warehouse slot, up to KAIROS_POOL_WAIT_S seconds; Ctrl-C stops the wait.

All calls into Dagster's concurrency internals are here, tested against the pinned version.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from kairos_dagster.resources.warehouse import POOL, refuse_parallel_writers_on_a_file

HOST_TAG, PID_TAG, PID_START_TAG = "kairos/host", "kairos/pid", "kairos/pid_start"
# The run the liveness tags were written for: a re-execution in the UI copies its parent's tags, and the
# child must not be taken for a run of the parent's (long gone) CLI process.
RUN_TAG = "kairos/guarded_run"
LIVE_STATUSES = [DagsterRunStatus.STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.CANCELING]


class PoolWaitTimeout(RuntimeError):
    """The warehouse slot stayed held by another live run past the wait limit."""


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its closing one
    return stat[stat.rindex(")") + 2:].split()[19]


def launch_tags(run_id: str) -> dict[str, str]:
    """Tags that let a later command tell whether this process (the run `run_id`'s) is still alive."""
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PID_START_TAG: process_start(pid) or "",
            RUN_TAG: run_id}


def process_alive(tags: dict[str, str], run_id: str | None = None) -> bool | None:
    """True/False for a run launched on this host with our tags; None when it cannot be told here (another
    host, no tags, or tags copied from the run another process launched)."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return None
    if run_id is not None and tags.get(RUN_TAG, run_id) != run_id:
        return None
    started = process_start(int(tags[PID_TAG]))
    return started is not None and started == tags.get(PID_START_TAG, started)


@dataclass(frozen=True)
class Reaped:
    run_id: str
    pid: str
    what: str  # "marked failed" or "freed claims of an ended run"


def reap_dead_runs(instance: DagsterInstance) -> list[Reaped]:
    """Mark this host's runs whose process died as failed and free every claim such runs left."""
    out: list[Reaped] = []
    for run in instance.get_runs(RunsFilter(statuses=LIVE_STATUSES)):
        if process_alive(run.tags, run.run_id) is False:
            instance.report_run_failed(
                run, message=f"run process {run.tags.get(PID_TAG)} on {run.tags.get(HOST_TAG)} is gone (killed "
                             "or crashed): marked failed by kairos before the next launch; its warehouse writes "
                             "were atomic, so no table holds half of it")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            out.append(Reaped(run.run_id, run.tags.get(PID_TAG, "?"), "marked failed"))
    # claims and pending entries of runs that have ended (failed, canceled, or just reaped)
    info = instance.event_log_storage.get_concurrency_info(POOL)
    holders = {s.run_id for s in info.claimed_slots} | {p.run_id for p in info.pending_steps}
    for run_id in sorted(holders):
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
            if not any(r.run_id == run_id for r in out):
                out.append(Reaped(run_id, (run.tags.get(PID_TAG, "?") if run else "?"), "freed claims of an ended run"))
    return out


def slot_holder(instance: DagsterInstance):
    """The live run that holds the warehouse slot, or None when it is free."""
    info = instance.event_log_storage.get_concurrency_info(POOL)
    limit = info.limit if info.limit is not None else 1
    if len(info.claimed_slots) < limit:
        return None
    for slot in info.claimed_slots:
        run = instance.get_run_by_id(slot.run_id)
        if run is not None and not run.is_finished:
            return run
    return None


def wait_for_pool(instance: DagsterInstance, echo: Callable[[str], None], *, timeout_s: float | None = None,
                  poll_s: float = 2.0) -> None:
    """Block while another live run holds the warehouse slot, saying which; raise PoolWaitTimeout past the limit."""
    timeout_s = pool_wait_seconds() if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    told = None
    while (holder := slot_holder(instance)) is not None:
        if holder.run_id != told:
            started = _started(instance, holder.run_id)
            echo(f"waiting for the warehouse slot held by run {holder.run_id} ({holder.job_name}), started "
                 f"{started} by PID {holder.tags.get(PID_TAG, '?')} on {holder.tags.get(HOST_TAG, '?')}; "
                 f"giving up after {timeout_s:.0f} s (KAIROS_POOL_WAIT_S); Ctrl-C stops waiting")
            told = holder.run_id
        if time.monotonic() >= deadline:
            raise PoolWaitTimeout(
                f"the warehouse slot is still held by run {holder.run_id} after {timeout_s:.0f} s; wait for it to "
                f"end, or cancel it in the UI (it is alive: PID {holder.tags.get(PID_TAG, '?')})")
        reap_dead_runs(instance)
        time.sleep(poll_s)


def pool_wait_seconds() -> float:
    """KAIROS_POOL_WAIT_S (settings; default 600 s)."""
    from kairos_dagster.settings import load_settings

    return load_settings().pool_wait_s


def _started(instance: DagsterInstance, run_id: str) -> str:
    rec = instance.get_run_record_by_id(run_id)
    ts = rec.start_time if rec is not None else None
    return dt.datetime.fromtimestamp(ts).isoformat(timespec="seconds") if ts else "at an unknown time"


def prepare_launch(instance: DagsterInstance, echo: Callable[[str], None]) -> None:
    """Refuse a pool that would let two processes write one DuckDB file; reap dead runs (saying so), then
    wait for the warehouse slot."""
    from kairos_dagster.settings import load_settings

    refuse_parallel_writers_on_a_file(instance, load_settings().lake is None)
    for r in reap_dead_runs(instance):
        echo(f"run {r.run_id} (PID {r.pid}): {r.what}; its warehouse slot is free again")
    wait_for_pool(instance, echo)
