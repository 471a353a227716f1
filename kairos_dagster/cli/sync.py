"""`kairos sync`, `kairos backfill` and `kairos status`: the warehouse's data, through Dagster runs."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from kairos_dagster.cli.common import check_weeks, fail, parse_date, report_run, selection, settings

SHARADAR_ALIASES = {"SEP": "sep_base", "DAILY": "daily", "SF1": "sf1", "SF2": "sf2", "SF3": "sf3"}


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

    s = settings()
    names = [t for arg in [tables or "", *(more_tables or [])] for t in arg.replace(",", " ").split()]
    chosen = []
    for name in names or list(SYNC_TABLES):
        asset = SHARADAR_ALIASES.get(name.upper(), name.lower())
        if asset not in SYNC_TABLES:
            raise fail(f"unknown table {name!r}; choose from {', '.join(SHARADAR_ALIASES)}")
        chosen.append(SYNC_TABLES[asset])

    from kairos_dagster.resources.source import SharadarSource, SourceConfigError

    try:  # every field from the settings; the key read from the environment here, never printed
        source = SharadarSource().build()
    except SourceConfigError as exc:
        raise fail(str(exc)) from None
    from kairos_dagster.defs.partitions import settings_partitions

    current_week = settings_partitions(s).get_last_partition_key()
    statuses = []
    held: dict[str, dt.date | None] = {}
    if store.exists(s.warehouse):
        with store.connect(s.warehouse, read_only=True) as con:
            for t in chosen:
                held[t.asset] = store.date_range(con, t.asset, t.partition_column)[1]
    for t in chosen:
        st = plan_sync(t.asset, held.get(t.asset), t.partition_date(source.latest_date(t.schema.name)),
                       start_date=s.start_date, current_week=current_week, force=force)
        statuses.append(st)
        todo = "up to date" if st.up_to_date else f"needs weeks {st.first_week} .. {st.last_week}"
        typer.echo(f"{t.schema.name:6} {t.asset:9} held={st.held_latest} source={st.source_latest}  {todo}")
    pending = [st for st in statuses if not st.up_to_date]
    if check_only or not pending:
        if not pending:
            typer.echo("All tables up to date.")
        return
    from kairos_dagster.definitions import build_definitions
    from kairos_dagster.instance.runner import run_selection

    defs = build_definitions(s)
    first = min(st.first_week for st in pending)
    last = max(st.last_week for st in pending)
    typer.echo(f"Materializing {', '.join(st.asset for st in pending)} for weeks {first} .. {last} in one run ...")
    result = run_selection(defs, ["tickers", *[st.asset for st in pending]], partition_range=(first, last),
                           tags={"kairos/trigger": "cli_sync"}, raise_on_error=False)
    report_run(result)
    if result.success:
        rebuild_restated(defs, s, result.run_id)


def rebuild_restated(defs, s, run_id: str) -> None:
    """Print what the sync rewrote outside its weeks and, where it corrected rows the built feature
    tables read, rebuild those weeks (what restatement_sensor does in the daemon)."""
    from dagster import AssetSelection

    from kairos_dagster.defs.features.automation import REBUILD_GROUPS, pending_and_first_built, rebuild_weeks
    from kairos_dagster.defs.partitions import settings_partitions
    from kairos_dagster.instance.runner import run_selection
    from kairos_dagster.sources.sync import restatement_counts
    from kairos_dagster.warehouse import store

    with store.connect(s.warehouse, read_only=True) as con:
        restated = restatement_counts(con, run_id)
        if not restated:
            return
        pending, first_built = pending_and_first_built(con, None, run_id)
    for table, kind, tickers, rows in restated:
        typer.echo(f"restated {table}: {rows} rows of {tickers} tickers ({kind})")
    parts = settings_partitions(s)
    weeks = rebuild_weeks(pending, parts.get_first_partition_key(), parts.get_last_partition_key(), first_built)
    if weeks is None or first_built is None:
        return
    typer.echo(f"Rebuilding the feature tables of weeks {weeks[0]} .. {weeks[1]}: they read corrected rows ...")
    result = run_selection(defs, AssetSelection.groups(*REBUILD_GROUPS), partition_range=weeks,
                           tags={"kairos/trigger": "cli_sync_restated"}, raise_on_error=False)
    report_run(result)


def backfill_cmd(
    start: Annotated[str, typer.Argument(help="first date (its week is the first partition)")],
    end: Annotated[str, typer.Argument(help="last date (its week is the last partition)")],
    select: Annotated[str, typer.Option("--select", help="asset groups and asset keys, comma-separated, or 'all'")] = "sync",
) -> None:
    """Materialize a range of weekly partitions of asset groups in a single run (a single-run backfill).

    --select takes asset group names and asset keys, comma-separated (spaces are trimmed), or 'all'."""
    from kairos_dagster.definitions import build_definitions
    from kairos_dagster.defs.partitions import week_key
    from kairos_dagster.instance.runner import run_selection

    defs = build_definitions(settings())
    a, b = parse_date(start, "START"), parse_date(end, "END")
    if a > b:
        raise fail(f"START {a} is after END {b}")
    first, last = check_weeks(week_key(a), week_key(b), "START", "END")
    sel = selection(defs, select)
    result = run_selection(defs, sel, partition_range=(first, last),
                           tags={"kairos/trigger": "cli_backfill"}, raise_on_error=False)
    report_run(result)


def migrate_cmd(
    check: Annotated[bool, typer.Option("--check", help="say what would change; write nothing")] = False,
) -> None:
    """Bring a warehouse built by an earlier release to this one, in place (the sync refuses until then).

    From schema version 1: feature levels (EMA, MACD, Bollinger, ATR, OBV) re-expressed in prices as known
    on their own date and universe.close dropped. From versions 1 and 2: every table re-keyed to the current
    symbol of a company whose ticker changed (by permaticker, logged in ticker_changes), and every held SEP,
    DAILY and SF1 row compared with the feed as served now, the differing ones rewritten (logged in
    sync_restatements as `migrated`)."""
    from kairos_dagster.resources.source import SharadarSource, SourceConfigError
    from kairos_dagster.sources.migrate import SCHEMA_VERSION, held_version, migrate
    from kairos_dagster.warehouse import store

    s = settings()
    if not store.exists(s.warehouse):
        typer.echo(f"No warehouse at {s.warehouse}: nothing to migrate (a new one starts at version {SCHEMA_VERSION}).")
        return
    with store.connect(s.warehouse, read_only=True) as con:
        version, held_source = held_version(con), store.read_meta(con, "data_source")
    if version >= SCHEMA_VERSION:
        typer.echo(f"{s.warehouse} is at schema version {version}: up to date.")
        return
    try:
        resource = SharadarSource()
        ident = resource.identity()
        source = resource.build()
    except SourceConfigError as exc:
        raise fail(str(exc)) from None
    if held_source is not None and held_source != ident:
        raise fail(f"{s.warehouse} holds data from source `{held_source}`; the configured source is `{ident}`: "
                   "set KAIROS_DATA_SOURCE / KAIROS_SYNTHETIC_* to the warehouse's; nothing was written")
    typer.echo(f"{s.warehouse}: schema version {version} -> {SCHEMA_VERSION} (source {ident}, as of {source.as_of})")
    with store.connect(s.warehouse, read_only=check) as con:
        report = migrate(con, source, dry_run=check, echo=lambda line: typer.echo(f"  {line}"))
    if check:
        for step in report.steps:
            typer.echo(f"  would {step}")
        typer.echo("Nothing was written (--check).")
    else:
        typer.echo(f"Migrated to schema version {report.to_version}.")


def status_cmd() -> None:
    """What the warehouse holds: tables, rows and date ranges."""
    from kairos_dagster.warehouse.summary import warehouse_summary

    s = settings()
    typer.echo(warehouse_summary(s.warehouse))


def register(app: typer.Typer) -> None:
    app.command("sync")(sync_cmd)
    app.command("backfill")(backfill_cmd)
    app.command("status")(status_cmd)
    app.command("migrate")(migrate_cmd)
