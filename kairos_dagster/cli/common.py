"""What every `kairos` command shares: exit codes, the one-line error, settings, dates, week and
selection checks, and how a finished run is reported."""

from __future__ import annotations

import datetime as dt

import typer

from kairos_dagster import calendar
from kairos_dagster.constants import NEW_YORK
from kairos_dagster.settings import Settings, SettingsError, load_settings

EXIT_FAILURE = 1  # a failed run or command
EXIT_BAD_INPUT = 2  # a bad setting, argument or date
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    """Print `error: message` and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise fail(str(exc)) from None


def parse_date(text: str | None, what: str = "--date") -> dt.date | None:
    if text is None:
        return None
    try:
        return calendar.parse_date(text)
    except calendar.CalendarError as exc:
        raise fail(f"{what}: {exc}") from None


def today() -> dt.date:
    """Today in New York."""
    return dt.datetime.now(NEW_YORK).date()


def pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:.1%}"


def num(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:.2f}"


def require_warehouse() -> None:
    """Refuse to run against a missing warehouse (opening it would create an empty one)."""
    from kairos_dagster.warehouse import store

    s = settings()
    if not store.exists(s.warehouse):
        raise fail(f"warehouse {s.warehouse} does not exist (KAIROS_WAREHOUSE or KAIROS_DUCKDB_PATH): run `kairos sync` or `make demo` "
                   "first; nothing was created")


def check_weeks(first: str, last: str, first_what: str, last_what: str) -> tuple[str, str]:
    """Refuse weeks outside the partitions (before KAIROS_START_DATE, after the current week) before
    anything runs, naming the valid range."""
    from kairos_dagster.defs.partitions import settings_partitions

    weekly = settings_partitions(settings())
    lo, hi = weekly.get_first_partition_key(), weekly.get_last_partition_key()
    valid = f"valid weeks are {lo} .. {hi} (KAIROS_START_DATE to the current week)"
    if first < lo:
        raise fail(f"{first_what} falls in week {first}, before the first partition {lo}; {valid}; nothing was run")
    if last > hi:
        raise fail(f"{last_what} falls in week {last}, after the last partition {hi}; {valid}; nothing was run")
    return first, last


def selection(defs, select: str):
    """Asset groups and asset keys named in `select` ('all' for every asset but execution's)."""
    from dagster import AssetKey, AssetSelection

    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    groups = {graph.get(k).group_name for k in graph.get_all_asset_keys()} - {None}
    names = [n.strip() for n in select.split(",") if n.strip()]
    if not names:
        raise fail(f"--select is empty; choose groups ({', '.join(sorted(groups))}), asset keys, or 'all'")
    if names == ["all"]:
        sel = AssetSelection.all()
    else:
        unknown = [n for n in names if n not in groups and n not in keys]
        if unknown:
            raise fail(f"--select: unknown group or asset {', '.join(map(repr, unknown))}; groups: "
                       f"{', '.join(sorted(groups))}; or any asset key (e.g. sep_base, feat_beta)")
        sel = (AssetSelection.groups(*[n for n in names if n in groups])
               | AssetSelection.assets(*[n for n in names if n in keys and n not in groups]))
    sel = sel - AssetSelection.groups("execution")
    # A table written beside an asset (defs/side_tables) is materialized by its writer's run only.
    side = [n for n in names if n in keys and not graph.get(AssetKey(n)).is_executable]
    if side:
        writers = sorted({p.to_user_string() for n in side for p in graph.get(AssetKey(n)).parent_keys})
        raise fail(f"--select {', '.join(side)}: written by the runs of {', '.join(writers)}; select those")
    if not [k for k in sel.resolve(graph) if graph.get(k).is_executable]:
        raise fail(f"--select {select!r} selects no asset that a backfill can run (execution is never backfilled); "
                   f"groups: {', '.join(sorted(groups - {'execution'}))}")
    return sel


def report_run(result) -> None:
    """`Run <id>: SUCCESS|FAILURE`; on failure one line per failed step (asset, week, cause), exit 1."""
    from kairos_dagster.instance.runner import failure_messages

    typer.echo(f"Run {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'}")
    if not result.success:
        for line in failure_messages(result):
            typer.echo(f"  {line}", err=True)
        raise typer.Exit(EXIT_FAILURE)
