"""One progress line per asset of a CLI run: its weeks, rows and seconds, how far the run is, and an estimate.

A ten-year single-run backfill records one materialization and a few check evaluations per asset and week:
tens of thousands of events an operator cannot read. The console logger leaves those per-week lines out of
a run over several weeks, and this module prints instead, when an asset's step ends,

    21:14:03 feat_trend: 523 weeks, 3,740,980 rows, 12.3 s · 5 of 27 assets, 1m05s elapsed, about 4m20s left

The lines come from the run's event log (polled by the CLI's waiting thread), so they are the same whether
the steps run in this process or in others (KAIROS_EXECUTOR=multiprocess). The estimate sums, for the
assets still to run, their step's seconds in their last successful run scaled by weeks, and this run's
pace so far for assets with no such run.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dagster import AssetKey, DagsterEventType, DagsterInstance

from kairos_dagster.defs.tags import RANGE_END_TAG, RANGE_START_TAG

POLLED = {DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE,
          DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_CHECK_EVALUATION}


def duration(seconds: float) -> str:
    """12.3 s, 4m05s, 1h02m: short enough for a progress line."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def run_weeks(tags: dict[str, str]) -> int:
    """How many weekly partitions a run covers, from its tags (1 for one week or no partition)."""
    start, end = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    if not (start and end):
        return 1
    return (dt.date.fromisoformat(end) - dt.date.fromisoformat(start)).days // 7 + 1


@dataclass
class _Step:
    started: float | None = None
    assets: dict[str, list[int]] = field(default_factory=dict)  # asset -> [weeks, rows, unpartitioned events]
    checks_failed: int = 0


@dataclass
class ProgressBook:
    """The progress of one run from its events; pure (no Dagster instance), fed in the log's order."""

    assets: frozenset[str]  # the run's selection; side tables its steps also write are named on their writer's line
    weeks: int
    prior_seconds: dict[str, float] = field(default_factory=dict)  # asset -> expected step seconds
    run_started: float | None = None
    done: list[str] = field(default_factory=list)
    spent: float = 0.0  # step seconds of the assets done without a prior figure
    spent_unknown: int = 0
    steps: dict[str, _Step] = field(default_factory=dict)

    @property
    def assets_total(self) -> int:
        return len(self.assets)

    def add(self, kind: str, step_key: str | None, timestamp: float, asset: str | None = None,
            rows: int = 0, passed: bool = True, partitioned: bool = True) -> list[str]:
        """One event; the lines it completes (at a step's end: one per asset the step wrote)."""
        if self.run_started is None:
            self.run_started = timestamp
        step = self.steps.setdefault(step_key or "", _Step())
        if kind == "STEP_START":
            step.started = timestamp
        elif kind == "ASSET_MATERIALIZATION" and asset:
            tally = step.assets.setdefault(asset, [0, 0, 0])
            tally[0 if partitioned else 2] += 1
            tally[1] += rows
        elif kind == "ASSET_CHECK_EVALUATION" and not passed:
            step.checks_failed += 1
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE"):
            return self._finish(step_key or "", step, timestamp, failed=kind == "STEP_FAILURE")
        return []

    def _finish(self, step_key: str, step: _Step, timestamp: float, failed: bool) -> list[str]:
        seconds = timestamp - (step.started if step.started is not None else timestamp)
        selected = [a for a in step.assets if a in self.assets] or [step_key]
        side = [a for a in step.assets if a not in self.assets]
        lines = []
        for asset in selected:
            weeks, rows, whole = step.assets.get(asset, [0, 0, 0])
            self.done.append(asset)
            if asset not in self.prior_seconds:
                self.spent += seconds / len(selected)
                self.spent_unknown += 1
            span = f"{weeks} week{'s' * (weeks != 1)}" if weeks or not whole else "unpartitioned"
            what = "failed after" if failed else f"{span}, {rows:,} rows,"
            checks = f", {step.checks_failed} failed check{'s' * (step.checks_failed != 1)}" if step.checks_failed else ""
            also = f" (and {', '.join(side)})" if side and asset == selected[-1] else ""
            lines.append(f"{asset}: {what} {duration(seconds)}{checks}{also} · {self._where(timestamp)}")
        return lines

    def _where(self, now: float) -> str:
        n = len([a for a in self.done if a in self.assets])
        text = f"{n} of {self.assets_total} assets, {duration(now - (self.run_started or now))} elapsed"
        left = self.estimate_left()
        if n < self.assets_total and left is not None:
            text += f", about {duration(left)} left"
        return text

    def estimate_left(self) -> float | None:
        """Seconds the assets not yet done should take: their last run's, else this run's pace."""
        remaining = len(self.assets - set(self.done))
        known = [s for a, s in self.prior_seconds.items() if a in self.assets and a not in self.done]
        unknown = remaining - len(known)
        if unknown <= 0:
            return sum(known)
        if self.spent_unknown == 0:
            return None  # nothing to go by yet
        return sum(known) + unknown * self.spent / self.spent_unknown


def prior_step_seconds(instance: DagsterInstance, keys: Iterable[AssetKey], weeks: int) -> dict[str, float]:
    """Per asset, its step's seconds in the run of its latest materialization, scaled to ``weeks``."""
    latest: dict[str, list[tuple[str, str]]] = {}  # run id -> (asset, its step)
    for key in keys:
        event = instance.get_latest_materialization_event(key)
        if event is not None and event.step_key is not None:
            latest.setdefault(event.run_id, []).append((key.to_user_string(), event.step_key))
    out: dict[str, float] = {}
    for run_id, steps in latest.items():
        run = instance.get_run_by_id(run_id)
        if run is None:
            continue
        # The steps' start and end events only: the run's step stats would decode its every event too (a
        # 10-year backfill's thousands of materializations), 3 s before a rebuild's first step.
        marks: dict[str, dict[DagsterEventType, float]] = {}
        for record in instance.get_records_for_run(run_id, of_type={DagsterEventType.STEP_START,
                                                                     DagsterEventType.STEP_SUCCESS}).records:
            entry = record.event_log_entry
            marks.setdefault(entry.step_key, {})[entry.dagster_event_type] = entry.timestamp
        for asset, step in steps:
            m = marks.get(step, {})
            if DagsterEventType.STEP_START in m and DagsterEventType.STEP_SUCCESS in m:
                seconds = m[DagsterEventType.STEP_SUCCESS] - m[DagsterEventType.STEP_START]
                out[asset] = seconds * weeks / run_weeks(dict(run.tags))
    return out


class StepEnds:
    """Counts a run's ended steps from its event log (at most every ``every`` s): what the runner watches for
    when no progress is printed."""

    def __init__(self, instance: DagsterInstance, run_id: str, every: float = 2.0) -> None:
        self.instance, self.run_id, self.every = instance, run_id, every
        self.cursor: str | None = None
        self.last_poll = 0.0
        self.steps_ended = 0

    def poll(self, force: bool = False) -> None:
        if not force and time.monotonic() - self.last_poll < self.every:
            return
        self.last_poll = time.monotonic()
        try:
            conn = self.instance.get_records_for_run(self.run_id, cursor=self.cursor, of_type={
                DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE}, limit=5000)
        except Exception:  # the run's own storage errors surface through the run
            return
        self.steps_ended += len(conn.records)
        self.cursor = conn.cursor


class RunProgress:
    """Polls a run's event log and prints the book's lines through ``echo`` (at most every ``every`` s)."""

    def __init__(self, instance: DagsterInstance, run_id: str, keys: Sequence[AssetKey], weeks: int,
                 echo: Callable[[str], None], every: float = 2.0) -> None:
        self.instance, self.run_id, self.echo, self.every = instance, run_id, echo, every
        try:
            prior = prior_step_seconds(instance, keys, weeks)
        except Exception:  # an estimate is a nicety: a storage hiccup must not stop the run
            prior = {}
        self.book = ProgressBook(assets=frozenset(k.to_user_string() for k in keys), weeks=weeks, prior_seconds=prior)
        self.cursor: str | None = None
        self.last_poll = 0.0
        self.steps_ended = 0  # steps seen to succeed or fail so far (the runner frees memory after each)

    def poll(self, force: bool = False) -> None:
        if not force and time.monotonic() - self.last_poll < self.every:
            return
        self.last_poll = time.monotonic()
        try:
            while True:
                conn = self.instance.get_records_for_run(self.run_id, cursor=self.cursor, of_type=POLLED,
                                                         limit=5000)
                for record in conn.records:
                    if record.event_log_entry.dagster_event_type in (DagsterEventType.STEP_SUCCESS,
                                                                     DagsterEventType.STEP_FAILURE):
                        self.steps_ended += 1
                    for line in self._lines(record.event_log_entry):
                        self.echo(line)
                self.cursor = conn.cursor
                if not conn.has_more:
                    return
        except Exception:  # the run's own storage errors surface through the run, not through its progress
            return

    def _lines(self, entry: Any) -> list[str]:
        event = entry.dagster_event
        if event is None:
            return []
        kind = event.event_type_value
        asset, rows, passed, partitioned = None, 0, True, True
        if kind == "ASSET_MATERIALIZATION":
            mat = event.event_specific_data.materialization
            asset, partitioned = mat.asset_key.to_user_string(), mat.partition is not None
            count = mat.metadata.get("dagster/row_count") or mat.metadata.get("rows")
            rows = int(count.value) if count is not None and isinstance(count.value, int) else 0
        elif kind == "ASSET_CHECK_EVALUATION":
            passed = bool(event.event_specific_data.passed)
        lines = self.book.add(kind, event.step_key, entry.timestamp, asset, rows, passed, partitioned)
        when = time.strftime("%H:%M:%S", time.localtime(entry.timestamp))
        return [f"{when} {line}" for line in lines]
