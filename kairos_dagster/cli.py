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

from kairos_dagster import calendar
from kairos_dagster.settings import SettingsError, load_settings

app = typer.Typer(help="Kairos weekly stock selection on Dagster.", no_args_is_help=True, add_completion=False)
check_app = typer.Typer(help="NYSE rebalance calendar (last trading day of each week).", no_args_is_help=True)
app.add_typer(check_app, name="check-rebalance")

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
    tables: Annotated[list[str] | None, typer.Option("--tables", help="SEP DAILY SF1 SF2 SF3 (default all)")] = None,
    force: Annotated[bool, typer.Option("--force", help="re-sync the latest week even when up to date")] = False,
) -> None:
    """Smart sync: per table, the latest date held versus the source; materializes what is missing."""
    from kairos_dagster.sources.sync import SYNC_TABLES, plan_sync
    from kairos_dagster.warehouse import store

    settings = _settings()
    names = [t for arg in (tables or []) for t in arg.replace(",", " ").split()]
    chosen = []
    for name in names or list(SYNC_TABLES):
        asset = SHARADAR_ALIASES.get(name.upper(), name.lower())
        if asset not in SYNC_TABLES:
            raise _fail(f"unknown table {name!r}; choose from {', '.join(SHARADAR_ALIASES)}")
        chosen.append(SYNC_TABLES[asset])

    from kairos_dagster.definitions import build_resources

    source = build_resources(settings)["source"].build()
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
    typer.echo(f"Run {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'}")
    if not result.success:
        for event in result.all_events:
            if event.is_failure and event.event_specific_data is not None:
                err = getattr(event.event_specific_data, "error", None)
                if err is not None:
                    typer.echo(f"  {event.step_key}: {err.message.strip()}", err=True)
        raise typer.Exit(1)


# --------------------------------------------------------------------------- backfill / status
@app.command("backfill")
def backfill_cmd(
    start: Annotated[str, typer.Argument(help="first date (its week is the first partition)")],
    end: Annotated[str, typer.Argument(help="last date (its week is the last partition)")],
    select: Annotated[str, typer.Option("--select", help="asset groups, comma-separated, or 'all'")] = "sync",
) -> None:
    """Materialize a range of weekly partitions of asset groups in a single run (a single-run backfill)."""
    from dagster import AssetSelection

    from kairos_dagster.definitions import defs
    from kairos_dagster.partitions import week_key
    from kairos_dagster.runner import run_selection

    a, b = _date(start, "START"), _date(end, "END")
    if a > b:
        raise _fail(f"START {a} is after END {b}")
    sel = AssetSelection.all() if select == "all" else AssetSelection.groups(*select.split(","))
    sel = sel - AssetSelection.groups("execution")
    result = run_selection(defs, sel, partition_range=(week_key(a), week_key(b)),
                           tags={"kairos/trigger": "cli_backfill"}, raise_on_error=False)
    _report_run(result)


@app.command("status")
def status_cmd() -> None:
    """What the warehouse holds: tables, rows and date ranges."""
    from kairos_dagster.warehouse.summary import warehouse_summary

    settings = _settings()
    typer.echo(warehouse_summary(settings.duckdb_path))


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
