"""`kairos check-rebalance check|next|range`: the NYSE rebalance calendar (last trading day of each week)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from kairos_dagster import calendar
from kairos_dagster.cli.common import fail, parse_date, today

check_app = typer.Typer(help="NYSE rebalance calendar (last trading day of each week).", no_args_is_help=True)


@check_app.command("check")
def check_cmd(
    date: Annotated[str | None, typer.Option("--date", help="ISO date; default today in New York")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Whether DATE is a rebalance day; exit 0 if it is, 1 if not, 2 on bad input."""
    d = parse_date(date) or today()
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
    d = parse_date(from_date, "--from") or today()
    try:
        dates = [x.isoformat() for x in calendar.next_rebalance_dates(count, d)]
    except calendar.CalendarError as exc:
        raise fail(str(exc)) from None
    typer.echo(json.dumps(dates) if as_json else "\n".join(dates))


@check_app.command("range")
def range_cmd(
    start: Annotated[str, typer.Argument(help="first ISO date")],
    end: Annotated[str, typer.Argument(help="last ISO date (inclusive)")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Every rebalance date between START and END, one per line."""
    a, b = parse_date(start, "START"), parse_date(end, "END")
    if a > b:
        raise fail(f"START {a} is after END {b}")
    dates = [x.isoformat() for x in calendar.rebalance_dates_between(a, b)]
    typer.echo(json.dumps(dates) if as_json else "\n".join(dates))


def register(app: typer.Typer) -> None:
    app.add_typer(check_app, name="check-rebalance")
