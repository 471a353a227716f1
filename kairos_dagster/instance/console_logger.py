"""The console logger of Kairos runs: one short line per event an operator reads, no tracebacks.

Replaces Dagster's colored console logger (Definitions(loggers={"console": ...})): a step's start and
end, each asset log line, and a failed step as `step X failed (week W): <innermost cause>`. A run over
several weeks leaves out the per-week materialization and passed-check lines (the CLI prints one
progress line per asset instead: instance.progress); failed checks still print. The full
error with its stack trace stays in the run's event log (the UI shows it) and is printed at DEBUG
(KAIROS_LOG_LEVEL=DEBUG, or `kairos --debug`).
"""

from __future__ import annotations

import logging
import sys

from dagster import Field, InitLoggerContext, logger
from dagster._core.utils import coerce_valid_log_level

from kairos_dagster.defs.errors import innermost_error  # noqa: F401 (re-exported: the CLI reads it here)
from kairos_dagster.defs.tags import RANGE_START_TAG

QUIET_EVENTS = {"STEP_OUTPUT", "HANDLED_OUTPUT", "LOADED_INPUT", "STEP_INPUT", "ASSET_MATERIALIZATION_PLANNED",
                "ASSET_CHECK_EVALUATION_PLANNED", "RESOURCE_INIT_STARTED", "RESOURCE_INIT_SUCCESS",
                "STEP_WORKER_STARTING", "STEP_WORKER_STARTED", "LOGS_CAPTURED", "ENGINE_EVENT",
                "PIPELINE_STARTING", "PIPELINE_ENQUEUED", "ASSET_OBSERVATION"}


class CompactFormatter(logging.Formatter):
    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        text = str(meta.get("orig_message", record.getMessage()))
        step = meta.get("step_key") or ""
        when = self.formatTime(record, "%H:%M:%S")
        if event is None:
            return f"{when} {step}: {text}" if step else f"{when} {text}"
        kind = event.event_type_value
        if kind == "STEP_FAILURE" and not self.debug:
            data = event.event_specific_data
            user = getattr(data, "user_failure_data", None)
            cause = (user.description if user is not None and user.description else
                     innermost_error(getattr(data, "error", None)))
            return f"{when} {step} failed{_weeks(meta)}: {cause.strip()}"
        if kind in ("PIPELINE_FAILURE", "PIPELINE_CANCELED") and not self.debug:
            return f"{when} run {kind.replace('PIPELINE_', '').lower()}: {text.splitlines()[0] if text else ''}"
        if not self.debug:
            text = text.split("\n\n")[0].splitlines()[0] if text else ""
        return f"{when} {step + ' ' if step else ''}{kind}: {text}" if kind else f"{when} {text}"


def _weeks(meta) -> str:
    tags = meta.get("job_tags") or {}
    start, end = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    if start and end:
        return f" (weeks {start} .. {end})"
    key = tags.get("dagster/partition")
    return f" (week {key})" if key else ""


class _Filter(logging.Filter):
    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug

    def filter(self, record: logging.LogRecord) -> bool:
        if self.debug:
            return True
        meta = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        if event is None:
            return True
        kind = event.event_type_value
        if kind in QUIET_EVENTS:
            return False
        # A run over several weeks: one line per asset comes from instance.progress, not one per week;
        # a failed check still prints.
        if RANGE_START_TAG in (meta.get("job_tags") or {}):
            if kind == "ASSET_MATERIALIZATION":
                return False
            if kind == "ASSET_CHECK_EVALUATION":
                return not getattr(event.event_specific_data, "passed", False)
        return True


@logger(
    {"log_level": Field(str, is_required=False, default_value="INFO", description="The logger's threshold."),
     "name": Field(str, is_required=False, default_value="kairos", description="The logger's name.")},
    description="Kairos console logger: one short line per event, tracebacks only at DEBUG.",
)
def compact_console_logger(init_context: InitLoggerContext) -> logging.Logger:
    level = coerce_valid_log_level(init_context.logger_config["log_level"])
    log = logging.Logger(init_context.logger_config["name"], level=level)
    handler = logging.StreamHandler(sys.stderr)
    debug = level <= logging.DEBUG
    handler.setFormatter(CompactFormatter(debug))
    handler.addFilter(_Filter(debug))
    log.addHandler(handler)
    return log
