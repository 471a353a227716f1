"""Run asset selections through the Dagster instance, so CLI runs show up in the UI's run history."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dagster import (
    AssetKey,
    AssetSelection,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    define_asset_job,
)

from kairos_dagster import run_guard
from kairos_dagster.settings import PROJECT_ROOT

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def dagster_home() -> Path:
    """DAGSTER_HOME, defaulting to the repository's .dagster_home with the project's dagster.yaml in it."""
    home = Path(os.environ.get("DAGSTER_HOME") or (PROJECT_ROOT / ".dagster_home"))
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    source = PROJECT_ROOT / "dagster.yaml"
    if not target.exists() and source.exists():
        shutil.copyfile(source, target)
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
    run_tags = {**run_guard.launch_tags(), **dict(tags or {})}
    if partition_range is not None:
        start, end = partition_range
        if start == end:
            partition_key = start
        else:
            run_tags[RANGE_START_TAG], run_tags[RANGE_END_TAG] = start, end
    # An ad-hoc job over the selection, built the way `dagster asset materialize` builds it.
    adhoc = define_asset_job("kairos_cli_run", selection=selection)
    resolved = Definitions.merge(defs, Definitions(jobs=[adhoc])).resolve_job_def("kairos_cli_run")
    config = dict(run_config or {})
    # Dagster's console logger prints every engine event at DEBUG; operators want the asset logs.
    config.setdefault("loggers", {"console": {"config": {"log_level": os.environ.get("KAIROS_LOG_LEVEL", "INFO")}}})
    return resolved.execute_in_process(
        run_config=config,
        instance=instance,
        partition_key=partition_key,
        tags=run_tags,
        raise_on_error=raise_on_error,
    )


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def failure_messages(result: ExecuteInProcessResult) -> list[str]:
    """One line per failed step: the innermost error's message (the wrapper says only "error in op")."""
    lines = []
    for event in result.all_events:
        if not event.is_step_failure or event.event_specific_data is None:
            continue
        err = event.event_specific_data.error
        while err is not None and err.cause is not None:
            err = err.cause
        if err is not None:
            lines.append(f"{event.step_key}: {err.message.strip()}")
    return lines
