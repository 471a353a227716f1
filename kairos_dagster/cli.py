"""The `kairos` command: the operator's scriptable twin of the Dagster UI.

Keeps the commands operators of the old scripts know (check-rebalance, sync, rebalance, execute).
Work that materializes assets runs through the Dagster instance, so it shows up in the UI.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Annotated

import typer

try:  # typer >= 0.20 vendors click; its exceptions are not click's own
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions

from kairos_dagster import calendar, cli_execution
from kairos_dagster.settings import SettingsError, load_settings

app = typer.Typer(help="Kairos weekly stock selection on Dagster. Add --debug to any command for tracebacks.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
check_app = typer.Typer(help="NYSE rebalance calendar (last trading day of each week).", no_args_is_help=True)
app.add_typer(check_app, name="check-rebalance")
cli_execution.register(app)  # approve, execute, emergency

EXIT_BAD_INPUT = 2


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _date(text: str | None, what: str = "--date") -> dt.date | None:
    if text is None:
        return None
    try:
        return calendar.parse_date(text)
    except calendar.CalendarError as exc:
        raise _fail(f"{what}: {exc}") from None


def _settings():
    try:
        return load_settings()
    except SettingsError as exc:
        raise _fail(str(exc)) from None


def _today() -> dt.date:
    return dt.datetime.now(calendar_tz()).date()


def calendar_tz():
    from zoneinfo import ZoneInfo

    return ZoneInfo("America/New_York")


# --------------------------------------------------------------------------- check-rebalance
@check_app.command("check")
def check_cmd(
    date: Annotated[str | None, typer.Option("--date", help="ISO date; default today in New York")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Whether DATE is a rebalance day; exit 0 if it is, 1 if not, 2 on bad input."""
    d = _date(date) or _today()
    reb = calendar.rebalance_date_for_week(d)
    is_reb = reb == d
    payload = {
        "date": d.isoformat(),
        "is_session": calendar.is_session(d),
        "is_rebalance_day": is_reb,
        "week_rebalance_date": reb.isoformat() if reb else None,
        "next_rebalance": calendar.next_rebalance_after(d).isoformat(),
        "rule": calendar.REBALANCE_RULE,
    }
    if as_json:
        typer.echo(json.dumps(payload))
    else:
        verdict = "IS" if is_reb else "is NOT"
        typer.echo(f"{d} {verdict} a rebalance day ({calendar.REBALANCE_RULE.lower()}).")
        typer.echo(f"Week's rebalance date: {payload['week_rebalance_date']}; next after it: {payload['next_rebalance']}")
    raise typer.Exit(0 if is_reb else 1)


@check_app.command("next")
def next_cmd(
    count: Annotated[int, typer.Option("--count", min=1, max=520, help="how many dates")] = 10,
    from_date: Annotated[str | None, typer.Option("--from", help="ISO date; default today")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The next COUNT rebalance dates on or after --from, one per line."""
    d = _date(from_date, "--from") or _today()
    try:
        dates = [x.isoformat() for x in calendar.next_rebalance_dates(count, d)]
    except calendar.CalendarError as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps(dates) if as_json else "\n".join(dates))


@check_app.command("range")
def range_cmd(
    start: Annotated[str, typer.Argument(help="first ISO date")],
    end: Annotated[str, typer.Argument(help="last ISO date (inclusive)")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Every rebalance date between START and END, one per line."""
    a, b = _date(start, "START"), _date(end, "END")
    if a > b:
        raise _fail(f"START {a} is after END {b}")
    dates = [x.isoformat() for x in calendar.rebalance_dates_between(a, b)]
    typer.echo(json.dumps(dates) if as_json else "\n".join(dates))


# --------------------------------------------------------------------------- sync
SHARADAR_ALIASES = {"SEP": "sep_base", "DAILY": "daily", "SF1": "sf1", "SF2": "sf2", "SF3": "sf3"}


@app.command("sync")
def sync_cmd(
    check_only: Annotated[bool, typer.Option("--check-only", help="report only; materialize nothing")] = False,
    tables: Annotated[str | None, typer.Option("--tables", help="SEP DAILY SF1 SF2 SF3 (default all)")] = None,
    force: Annotated[bool, typer.Option("--force", help="re-sync the latest week even when up to date")] = False,
    more_tables: Annotated[list[str] | None, typer.Argument(hidden=True)] = None,
) -> None:
    """Smart sync: per table, the latest date held versus the source; materializes what is missing.

    `--tables SEP DAILY` (as the original script took it), `--tables SEP,DAILY` or `--tables SEP --tables DAILY`.
    """
    from kairos_dagster.sources.sync import SYNC_TABLES, plan_sync
    from kairos_dagster.warehouse import store

    settings = _settings()
    names = [t for arg in [tables or "", *(more_tables or [])] for t in arg.replace(",", " ").split()]
    chosen = []
    for name in names or list(SYNC_TABLES):
        asset = SHARADAR_ALIASES.get(name.upper(), name.lower())
        if asset not in SYNC_TABLES:
            raise _fail(f"unknown table {name!r}; choose from {', '.join(SHARADAR_ALIASES)}")
        chosen.append(SYNC_TABLES[asset])

    from kairos_dagster.resources import SharadarSource, SourceConfigError

    try:  # every field from the settings; the key read from the environment here, never printed
        source = SharadarSource().build()
    except SourceConfigError as exc:
        raise _fail(str(exc)) from None
    from kairos_dagster.partitions import WEEKLY

    current_week = WEEKLY.get_last_partition_key()
    statuses = []
    held: dict[str, dt.date | None] = {}
    if settings.duckdb_path.exists():
        with store.connect(settings.duckdb_path, read_only=True) as con:
            for t in chosen:
                held[t.asset] = store.date_range(con, t.asset, t.partition_column)[1]
    for t in chosen:
        st = plan_sync(t.asset, held.get(t.asset), t.partition_date(source.latest_date(t.schema.name)),
                       start_date=settings.start_date, current_week=current_week, force=force)
        statuses.append(st)
        todo = "up to date" if st.up_to_date else f"needs weeks {st.first_week} .. {st.last_week}"
        typer.echo(f"{t.schema.name:6} {t.asset:9} held={st.held_latest} source={st.source_latest}  {todo}")
    pending = [s for s in statuses if not s.up_to_date]
    if check_only or not pending:
        if not pending:
            typer.echo("All tables up to date.")
        return
    from kairos_dagster.definitions import defs
    from kairos_dagster.runner import run_selection

    first = min(s.first_week for s in pending)
    last = max(s.last_week for s in pending)
    typer.echo(f"Materializing {', '.join(s.asset for s in pending)} for weeks {first} .. {last} in one run ...")
    result = run_selection(defs, ["tickers", *[s.asset for s in pending]], partition_range=(first, last),
                           tags={"kairos/trigger": "cli_sync"}, raise_on_error=False)
    _report_run(result)


def _report_run(result) -> None:
    from kairos_dagster.runner import failure_messages

    typer.echo(f"Run {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'}")
    if not result.success:
        for line in failure_messages(result):
            typer.echo(f"  {line}", err=True)
        raise typer.Exit(1)


# --------------------------------------------------------------------------- backfill / status
@app.command("backfill")
def backfill_cmd(
    start: Annotated[str, typer.Argument(help="first date (its week is the first partition)")],
    end: Annotated[str, typer.Argument(help="last date (its week is the last partition)")],
    select: Annotated[str, typer.Option("--select", help="asset groups and asset keys, comma-separated, or 'all'")] = "sync",
) -> None:
    """Materialize a range of weekly partitions of asset groups in a single run (a single-run backfill).

    --select takes asset group names and asset keys, comma-separated (spaces are trimmed), or 'all'."""
    from kairos_dagster.definitions import defs
    from kairos_dagster.partitions import week_key
    from kairos_dagster.runner import run_selection

    a, b = _date(start, "START"), _date(end, "END")
    if a > b:
        raise _fail(f"START {a} is after END {b}")
    first, last = _check_weeks(week_key(a), week_key(b), "START", "END")
    sel = _selection(defs, select)
    result = run_selection(defs, sel, partition_range=(first, last),
                           tags={"kairos/trigger": "cli_backfill"}, raise_on_error=False)
    _report_run(result)


def _check_weeks(first: str, last: str, first_what: str, last_what: str) -> tuple[str, str]:
    """Refuse weeks outside the partitions (before KAIROS_START_DATE, after the current week) before
    anything runs, naming the valid range."""
    from kairos_dagster.partitions import WEEKLY

    lo, hi = WEEKLY.get_first_partition_key(), WEEKLY.get_last_partition_key()
    valid = f"valid weeks are {lo} .. {hi} (KAIROS_START_DATE to the current week)"
    if first < lo:
        raise _fail(f"{first_what} falls in week {first}, before the first partition {lo}; {valid}; nothing was run")
    if last > hi:
        raise _fail(f"{last_what} falls in week {last}, after the last partition {hi}; {valid}; nothing was run")
    return first, last


def _selection(defs, select: str):
    """Asset groups and asset keys named in `select` ('all' for every asset but execution's)."""
    from dagster import AssetSelection

    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    groups = {graph.get(k).group_name for k in graph.get_all_asset_keys()} - {None}
    names = [n.strip() for n in select.split(",") if n.strip()]
    if not names:
        raise _fail(f"--select is empty; choose groups ({', '.join(sorted(groups))}), asset keys, or 'all'")
    if names == ["all"]:
        sel = AssetSelection.all()
    else:
        unknown = [n for n in names if n not in groups and n not in keys]
        if unknown:
            raise _fail(f"--select: unknown group or asset {', '.join(map(repr, unknown))}; groups: "
                        f"{', '.join(sorted(groups))}; or any asset key (e.g. sep_base, feat_beta)")
        sel = (AssetSelection.groups(*[n for n in names if n in groups])
               | AssetSelection.assets(*[n for n in names if n in keys and n not in groups]))
    sel = sel - AssetSelection.groups("execution")
    if not sel.resolve(graph):
        raise _fail(f"--select {select!r} selects no asset that a backfill can run (execution is never backfilled); "
                    f"groups: {', '.join(sorted(groups - {'execution'}))}")
    return sel


@app.command("status")
def status_cmd() -> None:
    """What the warehouse holds: tables, rows and date ranges."""
    from kairos_dagster.warehouse.summary import warehouse_summary

    settings = _settings()
    typer.echo(warehouse_summary(settings.duckdb_path))


# --------------------------------------------------------------------------- rebalance
def _latest_matrix_date(path) -> dt.date | None:
    from kairos_dagster.warehouse import store

    with store.connect(path, read_only=True) as con:
        return store.date_range(con, "feat_matrix_v2", "date")[1]


def _failure_messages(result) -> list[str]:
    from kairos_dagster.runner import failure_messages

    return failure_messages(result)


@app.command("rebalance")
def rebalance_cmd(
    date: Annotated[str | None, typer.Option("--date", help="ISO date; default the latest date in feat_matrix_v2's week")] = None,
    prior_holdings: Annotated[str | None, typer.Option("--prior-holdings", help="prior picks.csv for turnover smoothing")] = None,
    no_prior: Annotated[bool, typer.Option("--no-prior", help="fresh start: ignore prior holdings")] = False,
    portfolio_value: Annotated[float | None, typer.Option("--portfolio-value", help="portfolio value in $ (default 100,000)")] = None,
    config: Annotated[str, typer.Option("--config", help="ml (alpha_ml_v2_tuned_clf) or v8 (alpha_composite_v8)")] = "ml",
    force: Annotated[bool, typer.Option("--force", help="rebalance even if --date is not a rebalance day")] = False,
    check_only: Annotated[bool, typer.Option("--check-only", help="print the gates and the schedule; write nothing")] = False,
    output_dir: Annotated[str | None, typer.Option("--output-dir", help="parent folder (default $KAIROS_OUTPUT_DIR/rebalance)")] = None,
) -> None:
    """The week's Risk4/ML rebalance through Dagster: picks.csv, trades.csv, summary and schedule in OUTPUT_DIR/DATE/."""
    from pathlib import Path

    from kairos_dagster.assets import rebalance as reb
    from kairos_dagster.checks.rebalance_gates import format_gates
    from kairos_dagster.portfolio import rebalance_weeks as rw
    from kairos_dagster.portfolio.config import ConfigError, config_by_name
    from kairos_dagster.portfolio.outputs import schedule_dict
    from kairos_dagster.warehouse import store

    settings = _settings()
    if prior_holdings and no_prior:
        raise _fail("pass either --prior-holdings or --no-prior, not both")
    try:
        risk = config_by_name(config)
        if portfolio_value is not None:
            risk = risk.with_overrides(portfolio_value=portfolio_value)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    if not settings.duckdb_path.exists():
        raise _fail(f"warehouse {settings.duckdb_path} does not exist: run `kairos sync` or `make demo` first")
    d = _date(date)
    if d is None:
        try:
            latest = _latest_matrix_date(settings.duckdb_path)
        except store.WarehouseError as exc:
            raise _fail(str(exc)) from None
        if latest is None:
            raise _fail("feat_matrix_v2 is missing or empty: materialize the pipeline first, or pass --date")
        d = calendar.rebalance_date_for_week(latest)
        typer.echo(f"Latest feat_matrix_v2 date {latest}: rebalance date {d}")
    week_reb = calendar.rebalance_date_for_week(d)
    if d != week_reb and not force:
        typer.echo(f"{d} is not a rebalance day ({calendar.REBALANCE_RULE.lower()}); this week's rebalance date is "
                   f"{week_reb}, the next after {d} is {calendar.next_rebalance_after(d)}. Pass --force to rebalance anyway.",
                   err=True)
        raise typer.Exit(1)
    from kairos_dagster.partitions import week_key as _week_key

    _check_weeks(_week_key(d), _week_key(d), "--date", "--date")
    plan = rw.WeekPlan.for_date(d)
    parent = Path(output_dir) if output_dir else settings.output_dir / "rebalance"

    if check_only:
        try:
            with store.connect(settings.duckdb_path, read_only=True) as con:
                inputs = reb.load_inputs(con, [plan], risk, prior_holdings, no_prior)
            week = reb.compute_rebalance(inputs, [plan], risk)[0]
        except Exception as exc:  # bad input of any kind: say what, exit non-zero
            raise _fail(f"rebalance check of {d}: {exc}") from None
        typer.echo(format_gates(week))
        line = rw.summary_line(week)
        if line.get("built"):
            typer.echo(f"Would hold {line['n_positions']} positions, top 5 weight {_pct(line['top_5_weight'])}, "
                       f"est vol {_pct(line['estimated_vol'])}, turnover {_pct(line['turnover'])} "
                       f"(prior: {line['prior_source']})")
        sched = schedule_dict(dt.datetime.now(calendar_tz()), d)
        typer.echo(f"Schedule ({sched['rule']}): next rebalances {', '.join(sched['next_rebalances'])}")
        typer.echo("BLOCKED: the rebalance would not run." if week.blocked else "All blocking gates pass.")
        raise typer.Exit(1 if week.blocked else 0)

    from kairos_dagster.definitions import build_definitions
    from kairos_dagster.partitions import week_key
    from kairos_dagster.runner import run_selection

    op_config = {"config": config.lower(), "no_prior": no_prior, "force": force, "rebalance_date": d.isoformat(),
                 "output_dir": str(parent)}
    if prior_holdings:
        op_config["prior_holdings"] = str(Path(prior_holdings).resolve())
    if portfolio_value is not None:
        op_config["portfolio_value"] = float(portfolio_value)
    typer.echo(f"Rebalance of {d} (signal date {plan.signal_date}, partition {week_key(d)}) through Dagster ...")
    result = run_selection(build_definitions(settings), ["rebalance_picks", "rebalance_trades"],
                           partition_key=week_key(d), run_config={"ops": {reb.OP_NAME: {"config": op_config}}},
                           tags={"kairos/trigger": "cli_rebalance"}, raise_on_error=False)
    typer.echo(f"Run {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'}")
    if not result.success:
        for message in _failure_messages(result):
            typer.echo(message, err=True)
        raise typer.Exit(1)
    folder = parent / d.isoformat()
    summary = json.loads((folder / "portfolio_summary.json").read_text())
    p, m = summary["portfolio"], summary["metrics"]
    typer.echo(f"Picks: {folder / 'picks.csv'}")
    typer.echo(f"{p['n_positions']} positions, top 5 weight {_pct(p['top_5_weight'])}, est vol {_pct(p['estimated_vol'])}, "
               f"turnover {_pct(m['turnover_vs_prior'])}, regime {summary['regime']['regime'] or 'unknown'}")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


@app.command("demo")
def demo_cmd(
    as_of: Annotated[str | None, typer.Option(
        "--as-of", help="run the demo as if this ISO day were today (morning, before the open); default today "
                        "in New York. A future day is allowed: the synthetic market is generated for it.")] = None,
) -> None:
    """Run the weekly job end to end on the synthetic market and print where the outputs are."""
    import os

    from kairos_dagster.demo_plan import DemoPlanError, demo_plan

    day = _date(as_of, "--as-of") or _today()
    # The demo's partitions start with its data: one year of warm-up history, then three years of
    # features, models and rebalances up to the latest completed rebalance, with the walk-forward grid
    # anchored at the first feature week and a small Optuna budget. Variables the operator set win.
    # These must be in the environment before the partitions and the Definitions are built (their
    # modules read it).
    if os.environ.get("KAIROS_DATA_SOURCE", "synthetic").strip().lower() not in ("", "synthetic"):
        raise _fail("the demo runs on the synthetic market: unset KAIROS_DATA_SOURCE or set it to synthetic")
    os.environ["KAIROS_DATA_SOURCE"] = "synthetic"  # a Nasdaq key in the environment must not switch it
    try:
        operator_start = os.environ.get("KAIROS_START_DATE", "").strip()
        operator_anchor = os.environ.get("KAIROS_ML_ANCHOR", "").strip()
        plan = demo_plan(day, first_partition=dt.date.fromisoformat(operator_start) if operator_start else None,
                         anchor=dt.date.fromisoformat(operator_anchor) if operator_anchor else None)
    except (DemoPlanError, calendar.CalendarError) as exc:
        raise _fail(f"--as-of {day}: {exc}") from None
    except ValueError as exc:
        raise _fail(f"KAIROS_START_DATE / KAIROS_ML_ANCHOR: {exc}") from None
    os.environ["KAIROS_AS_OF"] = day.isoformat()
    for name, value in {
        "KAIROS_START_DATE": plan.sync_start.isoformat(),
        "KAIROS_ML_ANCHOR": plan.anchor.isoformat(),
        "KAIROS_ML_TRIALS": "3",
    }.items():
        os.environ.setdefault(name, value)
    settings = _settings()
    from kairos_dagster.definitions import build_definitions
    from kairos_dagster.demo import run_demo
    from kairos_dagster.runner import dagster_home
    from kairos_dagster.warehouse.summary import warehouse_summary

    defs = build_definitions(settings)
    # `make ui` reads this file so the UI sees the demo's partitions, walk-forward anchor and as-of day.
    names = ["KAIROS_START_DATE", "KAIROS_ML_ANCHOR", "KAIROS_ML_TRIALS", "KAIROS_DATA_SOURCE"]
    if as_of is not None:  # a replayed day; a demo of today leaves the UI on the real clock
        names.append("KAIROS_AS_OF")
    settings.duckdb_path.parent.mkdir(parents=True, exist_ok=True)
    (settings.duckdb_path.parent / "demo.env").write_text("".join(f"{k}={os.environ[k]}\n" for k in names))
    ok = run_demo(defs, settings, plan, typer.echo)
    typer.echo("\n" + warehouse_summary(settings.duckdb_path))
    typer.echo(f"\nRun history and asset metadata: DAGSTER_HOME={dagster_home()}; open the UI with `make ui` "
               "(http://127.0.0.1:3000).")
    typer.echo(f"Rebalance outputs: {settings.output_dir / 'rebalance'}")
    if not ok:
        raise typer.Exit(1)


# Errors an operator caused (a bad setting, argument or date): exit 2, one line, no traceback.
def _bad_input_types() -> tuple[type[BaseException], ...]:
    from kairos_dagster.demo_plan import DemoPlanError
    from kairos_dagster.portfolio.config import ConfigError

    return (SettingsError, calendar.CalendarError, ConfigError, DemoPlanError)


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
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns every failure into a message
        from kairos_dagster.runner import RunInterrupted

        if debug:
            traceback.print_exc()
        if isinstance(exc, RunInterrupted):
            typer.echo(f"error: {_interrupted_summary(exc)}", err=True)
            return 130
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
    from kairos_dagster.runner import get_instance

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
