"""The Kairos code location: every domain's definitions merged, with the resources, in a function.

Nothing here reads the environment at import time: `defs` is loaded lazily (`@definitions`), when
Dagster (the webserver, a run worker) or a caller asks for it, from the settings of that moment.
"""

from __future__ import annotations

from dagster import Definitions, ExecutorDefinition, definitions, in_process_executor, multiprocess_executor

from kairos_dagster.defs.backtest.definitions import build_defs as backtest_defs
from kairos_dagster.defs.execution.definitions import build_defs as execution_defs
from kairos_dagster.defs.features.definitions import build_defs as feature_defs
from kairos_dagster.defs.ml.definitions import build_defs as ml_defs
from kairos_dagster.defs.partitions import settings_partitions
from kairos_dagster.defs.rebalance.definitions import build_defs as rebalance_defs
from kairos_dagster.defs.sync.definitions import build_defs as sync_defs
from kairos_dagster.instance.console_logger import compact_console_logger
from kairos_dagster.instance.tuning import install_sqlite_tuning
from kairos_dagster.resources import build_resources
from kairos_dagster.settings import Settings, load_settings

DOMAINS = (sync_defs, feature_defs, ml_defs, rebalance_defs, execution_defs, backtest_defs)


def build_definitions(settings: Settings | None = None) -> Definitions:
    # Every process that loads the code location (run workers, the webserver's code server, the CLI)
    # writes instance events: tune the instance's SQLite once (see instance.tuning).
    install_sqlite_tuning()
    settings = settings or load_settings()
    weekly = settings_partitions(settings)
    return Definitions.merge(
        *(domain(weekly) for domain in DOMAINS),
        Definitions(
            resources=build_resources(settings),
            executor=run_executor(settings.executor, settings.processes),
            loggers={"console": compact_console_logger},
        ),
    )


def run_executor(executor: str, processes: int) -> ExecutorDefinition:
    """How a run executes its steps (KAIROS_EXECUTOR). One process by default: a DuckDB file takes one
    writer, so separate processes buy nothing there and cost ~3 s of start-up per step. On DuckLake,
    `multiprocess` runs KAIROS_PROCESSES independent steps at once, each in its own process, and `k8s_job`
    (dagster-k8s, the Helm deployment) each in its own Kubernetes Job, with the run launcher's image,
    secrets and volumes. The `duckdb` pool's limit in dagster.yaml caps the warehouse writers across runs."""
    if executor == "in_process":
        return in_process_executor
    if executor == "k8s_job":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError:
            from kairos_dagster.settings import SettingsError

            raise SettingsError("KAIROS_EXECUTOR=k8s_job needs dagster-k8s: pip install 'kairos_dagster[deploy]'") from None
        return k8s_job_executor.configured({"max_concurrent": processes}, name="k8s_job")
    # Each step process forks from a server that imported the code location once: a spawned process
    # would import pandas, xgboost, dagster, ... again (~6 s of CPU per step).
    start = {"forkserver": {"preload_modules": ["kairos_dagster.definitions"]}}
    return multiprocess_executor.configured({"max_concurrent": processes, "start_method": start},
                                            name="multiprocess")


@definitions
def defs() -> Definitions:
    """What `dagster dev` and the run workers load (workspace.yaml, pyproject's [tool.dagster])."""
    return build_definitions()
