"""`kairos ui`: the Dagster UI and daemon on this repository's instance (what `make ui` runs)."""

from __future__ import annotations

import signal

import typer

from kairos_dagster.settings import PROJECT_ROOT

WORKSPACE = PROJECT_ROOT / "workspace.yaml"


def ui(
    host: str = typer.Option("127.0.0.1", help="address the webserver listens on"),
    port: int = typer.Option(3000, help="port of the webserver"),
    log_level: str = typer.Option("info", help="Dagster's log level: critical, error, warning, info or debug"),
) -> None:
    """The Dagster webserver and daemon (schedules, sensors, the run queue) over the kairos code location,
    on DAGSTER_HOME (default .dagster_home); Ctrl-C stops both."""
    from dagster._cli.dev import dev_command_impl
    from dagster_shared.cli import WorkspaceOpts

    from kairos_dagster.instance.runner import dagster_home

    dagster_home()  # the instance's dagster.yaml in place, DAGSTER_HOME set for both processes
    # Ctrl-C (and a plain `kill`) stop the webserver and the daemon, even when a launcher started this
    # process with SIGINT ignored (a background job of a script inherits that, and Python then never
    # raises KeyboardInterrupt).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # What `dg dev` runs for a workspace file (dagster_dg_cli.cli.dev), without `dagster dev`'s
    # "superseded" notice: the same webserver and daemon processes, the same shutdown on Ctrl-C.
    dev_command_impl(
        code_server_log_level="warning", log_level=log_level, log_format="colored", port=str(port), host=host,
        use_legacy_code_server_behavior=False, shutdown_pipe=None, verbose=False,
        workspace_opts=WorkspaceOpts(workspace=[str(WORKSPACE)]), live_data_poll_rate="2000")


def register(app: typer.Typer) -> None:
    app.command("ui")(ui)
