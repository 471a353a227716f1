"""The `kairos` command: the operator's scriptable twin of the Dagster UI.

Keeps the commands operators of the old scripts know (check-rebalance, sync, rebalance, execute).
Work that materializes assets runs through the Dagster instance, so it shows up in the UI. Each
command lives in the module of its concern (calendar, sync, rebalance, execution, demo); this one
builds the app and turns every failure into one line and an exit code.
"""

from __future__ import annotations

import sys

import typer

try:  # typer >= 0.20 vendors click; its exceptions are not click's own
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions

from kairos_dagster import calendar
from kairos_dagster.cli import backtest, demo, execution, rebalance, sync, ui
from kairos_dagster.cli import calendar as calendar_cli
from kairos_dagster.cli.common import EXIT_BAD_INPUT, EXIT_INTERRUPTED
from kairos_dagster.settings import SettingsError

app = typer.Typer(help="Kairos weekly stock selection on Dagster. Add --debug to any command for tracebacks.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
for module in (calendar_cli, sync, rebalance, backtest, demo, execution, ui):
    module.register(app)


# Errors an operator caused (a bad setting, argument or date): exit 2, one line, no traceback.
def _bad_input_types() -> tuple[type[BaseException], ...]:
    from kairos_dagster.ml.demo_plan import DemoPlanError
    from kairos_dagster.portfolio.config import ConfigError
    from kairos_dagster.resources.warehouse import PoolLimitError

    return (SettingsError, calendar.CalendarError, ConfigError, DemoPlanError, PoolLimitError)


def innermost(exc: BaseException) -> BaseException:
    """The innermost cause of an exception chain (a Dagster wrapper's user exception included)."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nxt = getattr(exc, "user_exception", None) or exc.__cause__ or exc.__context__
        if nxt is None:
            break
        exc = nxt
    return exc


def main(argv: list[str] | None = None) -> int:
    """The `kairos` console entry: every failure ends in one or two lines (tracebacks with --debug or
    KAIROS_LOG_LEVEL=DEBUG), exit 2 for bad input, 1 for a failed run or command, 130 when interrupted."""
    import os
    import traceback

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
        os.environ["KAIROS_LOG_LEVEL"] = "DEBUG"
    debug = debug or os.environ.get("KAIROS_LOG_LEVEL", "").strip().upper() == "DEBUG"
    try:
        rc = app(args, prog_name="kairos", standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except click_exceptions.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("error: interrupted; nothing was started", err=True)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one place that turns every failure into a message
        from kairos_dagster.instance.runner import RunInterrupted

        if debug:
            traceback.print_exc()
        if isinstance(exc, RunInterrupted):
            typer.echo(f"error: {_interrupted_summary(exc)}", err=True)
            return EXIT_INTERRUPTED
        cause = innermost(exc)
        if isinstance(exc, _bad_input_types()) or isinstance(cause, _bad_input_types()):
            typer.echo(f"error: {cause if isinstance(cause, _bad_input_types()) else exc}", err=True)
            return EXIT_BAD_INPUT
        where = _where(cause)
        typer.echo(f"error: {type(cause).__name__}: {str(cause).strip() or repr(cause)}{where}", err=True)
        if not debug:
            typer.echo("       (run with --debug or KAIROS_LOG_LEVEL=DEBUG for the traceback)", err=True)
        return 1


def _where(exc: BaseException) -> str:
    """' (at kairos_dagster/x.py:N)': the innermost frame of our own code that raised."""
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "kairos_dagster" in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {f.filename[f.filename.rindex('kairos_dagster'):]}:{f.lineno})"


def _interrupted_summary(exc) -> str:
    """What an interrupted run did: the steps completed, the one rolled back, the status recorded."""
    from kairos_dagster.instance.runner import get_instance

    done, stopped = [], []
    try:
        for rec in get_instance().all_logs(exc.run_id):
            ev = rec.dagster_event
            if ev is not None and ev.event_type_value == "STEP_SUCCESS":
                done.append(ev.step_key)
            elif ev is not None and ev.event_type_value == "STEP_FAILURE":
                stopped.append(ev.step_key)
    except Exception:  # noqa: BLE001 - the summary is best effort; the run's status is in the UI
        pass
    return (f"{exc.signame} stopped run {exc.run_id}; it is marked canceled. Completed steps: "
            f"{', '.join(done) or 'none'}; stopped (its write rolled back): {', '.join(stopped) or 'none'}; "
            "no further step started")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
