"""`kairos approve`, `kairos execute`, `kairos override` and `kairos emergency ...`.

approve and execute run through the Dagster instance (kairos_dagster.instance.runner.run_selection), so every
approval, preview, submission and verification shows up in the UI's run history with its metadata.
The emergency commands talk to the broker directly: they must work when nothing else does.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import polars as pl
import typer

from kairos_dagster import calendar
from kairos_dagster.cli.common import check_weeks, fail, require_warehouse, settings

emergency_app = typer.Typer(help="Emergency procedures: cancel every open order, liquidate every position.",
                            no_args_is_help=True)


def _rebalance_day(text: str | None, picks: str | None) -> dt.date:
    """--date, else the picks folder's name (outputs/rebalance/YYYY-MM-DD/picks.csv); must be a rebalance day."""
    folder = None
    if picks:
        try:
            folder = dt.date.fromisoformat(Path(picks).resolve().parent.name)
        except ValueError:
            folder = None
    d = None
    if text:
        try:
            d = calendar.parse_date(text)
        except calendar.CalendarError as exc:
            raise fail(f"--date: {exc}") from None
    if d and folder and d != folder:
        raise fail(f"--date {d} does not match the picks folder {folder} ({picks})")
    d = d or folder
    if d is None:
        raise fail("cannot tell the rebalance date: pass --date, or --picks in an outputs/rebalance/YYYY-MM-DD/ folder")
    reb = calendar.rebalance_date_for_week(d)
    if reb != d:
        raise fail(f"{d} is not a rebalance day ({calendar.REBALANCE_RULE.lower()}); that week's is {reb}")
    from kairos_dagster.defs.partitions import week_key

    check_weeks(week_key(d), week_key(d), "the rebalance date", "the rebalance date")
    return d


def _run(selection: list[str], d: dt.date, op: str, op_config: dict, trigger: str):
    from kairos_dagster.definitions import build_definitions
    from kairos_dagster.defs.partitions import week_key
    from kairos_dagster.instance.runner import run_selection

    return run_selection(build_definitions(settings()), selection, partition_key=week_key(d),
                         run_config={"ops": {op: {"config": op_config}}}, tags={"kairos/trigger": trigger},
                         raise_on_error=False)


def _metadata(result, key: str) -> dict:
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        if mat.asset_key.to_user_string() == key:
            return dict(mat.metadata)
    return {}


def _text(md: dict, name: str) -> str | None:
    v = md.get(name)
    return None if v is None else str(v.value)


def _report_failure(result) -> None:
    from kairos_dagster.instance.runner import failure_messages

    typer.echo(f"Run {result.run_id}: FAILURE", err=True)
    for message in failure_messages(result):
        typer.echo(message, err=True)
    raise typer.Exit(1)


# ------------------------------------------------------------------------------------ approve
def approve_cmd(
    date: Annotated[str, typer.Option("--date", help="the rebalance date (ISO) whose picks are approved")],
    by: Annotated[str, typer.Option("--by", help="who approves")],
    note: Annotated[str | None, typer.Option("--note", help="why (allows turnover above 50%)")] = None,
    reject: Annotated[bool, typer.Option("--reject", help="record a rejection instead")] = False,
    picks: Annotated[str | None, typer.Option("--picks", help="picks.csv (default outputs/rebalance/DATE/picks.csv)")] = None,
) -> None:
    """Approve (or --reject) the week's picks: materializes rebalance_approval, bound to the picks' content hash."""
    require_warehouse()
    d = _rebalance_day(date, None)
    cfg: dict = {"by": by, "decision": "reject" if reject else "approve"}
    if note:
        cfg["note"] = note
    if picks:
        cfg["picks_path"] = str(Path(picks).resolve())
    result = _run(["rebalance_approval"], d, "rebalance_approval", cfg, "cli_approve")
    if not result.success:
        _report_failure(result)
    md = _metadata(result, "rebalance_approval")
    typer.echo(f"Run {result.run_id}: rebalance {d} {_text(md, 'status')} by {_text(md, 'approved_by')} at "
               f"{_text(md, 'approved_at')}")
    typer.echo(f"Picks {_text(md, 'picks_path')} ({_text(md, 'picks_rows')} rows), content hash {_text(md, 'picks_hash')}")
    typer.echo("Any change to these picks invalidates this approval.")


# ------------------------------------------------------------------------------------ execute
def execute_cmd(
    picks: Annotated[str | None, typer.Option("--picks", help="picks.csv (outputs/rebalance/DATE/picks.csv)")] = None,
    execute: Annotated[bool, typer.Option("--execute", help="actually submit the orders")] = False,
    preview: Annotated[bool, typer.Option("--preview", help="preview only (the default)")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="with --execute: go through the motions, submit nothing")] = False,
    trades: Annotated[str | None, typer.Option("--trades", help="trades.csv to compare with the plan")] = None,
    portfolio_value: Annotated[float | None, typer.Option("--portfolio-value", help="override account equity")] = None,
    max_gap: Annotated[float | None, typer.Option(
        "--max-gap", help="skip orders whose price moved more than X from the picks price; X < 1 is a fraction "
                          "(0.05), X >= 1 is percent (5 = 5%)")] = None,
    intraday: Annotated[bool, typer.Option("--intraday", help="force DAY market orders")] = False,
    force_moo: Annotated[bool, typer.Option("--force-moo", help="force market-on-open orders (even on paper)")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="verify the submitted orders: fills, partials, rejections")] = False,
    date: Annotated[str | None, typer.Option("--date", help="rebalance date (default: the picks folder's name)")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="simulated broker only: its clock (ISO, New York)")] = None,
) -> None:
    """Preview (default), --execute or --verify the week's orders through Dagster (runs show in the UI)."""
    from kairos_dagster.broker.tracking import normalize_max_gap

    if sum([execute, preview, verify]) > 1:
        raise fail("choose one of --preview, --execute and --verify")
    if intraday and force_moo:
        raise fail("--intraday and --force-moo are mutually exclusive")
    if dry_run and not execute:
        typer.echo("--dry-run without --execute: previewing (nothing is ever submitted in a preview)")
    if not picks and not verify:
        raise fail("--picks is required (except with --verify)")
    require_warehouse()
    d = _rebalance_day(date, picks)
    try:
        gap = normalize_max_gap(max_gap)
    except ValueError as exc:
        raise fail(f"--max-gap: {exc}") from None
    if gap is not None:
        typer.echo(f"Max gap: skipping orders whose price moved more than {gap:.2%} from the picks price")
    mode = "verify" if verify else ("execute" if execute else "preview")
    cfg: dict = {"mode": mode, "dry_run": dry_run, "intraday": intraday, "force_moo": force_moo}
    for k, v in {"max_gap": gap, "portfolio_value": portfolio_value, "as_of": as_of,
                 "picks_path": str(Path(picks).resolve()) if picks else None,
                 "trades_path": str(Path(trades).resolve()) if trades else None}.items():
        if v is not None:
            cfg[k] = v
    target = "execution_report" if verify else "execution"
    typer.echo(f"{mode.capitalize()} of rebalance {d} through Dagster ...")
    result = _run([target], d, "execution", cfg, f"cli_execute_{mode}")
    if not result.success:
        _report_failure(result)
    md = _metadata(result, target)
    if verify:
        typer.echo(_text(md, "report_text") or "")
        checks = result.get_asset_check_evaluations()
        for c in checks:
            typer.echo(f"  check {c.check_name}: {'PASS' if c.passed else 'FAIL (' + c.severity.value + ')'}")
        typer.echo(f"Run {result.run_id}: SUCCESS")
        if any(not c.passed and c.severity.value == "ERROR" for c in checks):
            raise typer.Exit(1)
        return
    typer.echo(_text(md, "plan_text") or "")
    typer.echo(f"Gates: {_text(md, 'gates')}")
    if md.get("trades_differences") is not None:
        typer.echo("Plan vs trades.csv:\n" + _text(md, "trades_differences"))
    if mode == "execute" and not dry_run:
        typer.echo(_text(md, "results") or "")
        typer.echo(f"Orders: {_text(md, 'orders_csv')}")
    else:
        typer.echo(f"{'Dry run' if dry_run else 'Preview'}: nothing submitted. Plan: {_text(md, 'preview_file')}")
    typer.echo(f"Run {result.run_id}: SUCCESS")


def override_cmd(
    date: Annotated[str, typer.Option("--date", help="the rebalance date (ISO) whose picks the override is for")],
    gate: Annotated[str, typer.Option("--gate", help="what to excuse: a blocking gate's name, gates_not_evaluated, "
                                                     "gates_evaluated_on_other_picks, a tripped kill switch "
                                                     "(max_daily_loss, min_live_sharpe) or turnover (above 50%)")],
    by: Annotated[str, typer.Option("--by", help="who overrides (recorded with the OS user and the host)")],
    note: Annotated[str | None, typer.Option("--note", help="why (required)")] = None,
    picks: Annotated[str | None, typer.Option("--picks", help="picks.csv (default outputs/rebalance/DATE/picks.csv)")] = None,
) -> None:
    """Record a typed override of one execution gate, kill switch or the turnover limit for these picks (bound to
    their content hash)."""
    from kairos_dagster.broker.approval import picks_content_hash
    from kairos_dagster.broker.kill_switches import BLOCKING_SWITCHES
    from kairos_dagster.defs.side_tables import report_runless
    from kairos_dagster.instance.runner import get_instance
    from kairos_dagster.portfolio import gate_records
    from kairos_dagster.portfolio.gates import GATES
    from kairos_dagster.warehouse import store

    require_warehouse()
    d = _rebalance_day(date, picks)
    allowed = ({name for name, blocking, _ in GATES if blocking} | {gate_records.NOT_EVALUATED, gate_records.OTHER_PICKS}
               | set(BLOCKING_SWITCHES) | {"turnover"})
    if gate not in allowed:
        raise fail(f"--gate {gate!r} is not an execution gate; choose from {', '.join(sorted(allowed))}")
    if not note or not note.strip():
        raise fail("an override needs --note saying why; it is recorded with your name, OS user and host")
    path = Path(picks) if picks else settings().output_dir / "rebalance" / d.isoformat() / "picks.csv"
    if not path.exists():
        raise fail(f"picks file not found: {path}")
    digest = picks_content_hash(path)
    with store.connect(settings().warehouse) as con:
        row = gate_records.record_override(con, d, gate, digest, by=by, note=note)
        r = row.row(0, named=True)
        # written outside any run: the catalog's gate_overrides asset is told directly
        report_runless(get_instance(), con, gate_records.OVERRIDES_TABLE,
                       f"override of {gate} for {d} by {r['overridden_by']} (kairos override)")
    typer.echo(f"Override recorded: gate {gate} for the picks of {d} ({digest[:12]}, {path}) by {r['overridden_by']} "
               f"(OS user {r['os_user']} on {r['host']}) at {r['overridden_at']:%Y-%m-%d %H:%M} UTC: {r['note']}")


# ---------------------------------------------------------------------------------- emergency
def _broker_resource():
    from kairos_dagster.resources.broker import BrokerResource

    s = settings()
    require_warehouse()
    try:
        return BrokerResource.from_env(str(s.warehouse), auto_paper=s.auto_paper).process_config_and_initialize()
    except Exception as exc:  # credentials of any kind of wrongness: say what, never the values
        raise fail(f"broker: {exc}") from None


@emergency_app.command("cancel-all")
def cancel_all_cmd() -> None:
    """Cancel every open order at the broker."""
    from kairos_dagster.broker.engine import emergency_cancel_all

    res = _broker_resource()
    typer.echo(f"EMERGENCY cancel-all on {res.describe()}")
    with res.open() as broker:
        ids = emergency_cancel_all(broker)
    typer.echo(f"Asked to cancel {len(ids)} open order(s)" + (f": {', '.join(ids[:50])}" if ids else ""))


@emergency_app.command("liquidate")
def liquidate_cmd(
    confirm: Annotated[bool, typer.Option("--confirm", help="required: closes EVERY position at market")] = False,
) -> None:
    """Cancel open orders and close every position at market. Refuses without --confirm."""
    from kairos_dagster.broker.engine import emergency_liquidate

    if not confirm:
        raise fail("liquidate closes EVERY position at market; re-run with --confirm to do it", code=1)
    res = _broker_resource()
    typer.echo(f"EMERGENCY liquidate on {res.describe()}")
    with res.open() as broker:
        symbols = emergency_liquidate(broker, confirm=True)
    typer.echo(f"Closing {len(symbols)} position(s)" + (f": {', '.join(symbols[:100])}" if symbols else ""))


def track_cmd(
    from_date: Annotated[str | None, typer.Option("--from-date", help="first rebalance date (YYYY-MM-DD)")] = None,
    to_date: Annotated[str | None, typer.Option("--to-date", help="last rebalance date (YYYY-MM-DD)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per rebalance instead of the table")] = False,
) -> None:
    """The track record of executed rebalances (rebalance_performance): one line per rebalance with its
    return, the market's, the excess, the shortfall and the compounded return since the first one."""
    import json

    from kairos_dagster.broker.performance import track_record
    from kairos_dagster.cli.common import parse_date
    from kairos_dagster.warehouse import store

    require_warehouse()
    lo, hi = parse_date(from_date, "--from-date"), parse_date(to_date, "--to-date")
    if lo and hi and lo > hi:
        raise fail(f"--from-date {lo} is after --to-date {hi}")
    s = settings()
    with store.connect(s.warehouse, read_only=True) as con:
        if not store.table_exists(con, "rebalance_performance"):
            typer.echo("No rebalance measured yet: rebalance_performance is built once a rebalance was executed and "
                       "the next rebalance date is synced (performance_sensor, or materialize it in the UI).")
            return
        rows = con.execute("SELECT * FROM rebalance_performance ORDER BY date").pl()
    record = track_record(rows)
    if lo:
        record = record.filter(pl.col("date") >= lo)
    if hi:
        record = record.filter(pl.col("date") <= hi)
    if as_json:
        for r in record.iter_rows(named=True):
            typer.echo(json.dumps({k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in r.items()}))
        return
    if not record.height:
        typer.echo("No measured rebalance in that range.")
        return
    for line in track_lines(record):
        typer.echo(line)


def track_lines(record: pl.DataFrame) -> list[str]:
    """The track record as a table, one line per rebalance (performance.track_record's rows)."""

    def p(x: float | None) -> str:
        return f"{x:+8.2%}" if x is not None else "     n/a"

    lines = [f"{'rebalance':<11} {'to':<11} {'status':<13} {'return':>8} {'market':>8} {'excess':>8} "
             f"{'shortfall':>10} {'cumulative':>10}"]
    for r in record.iter_rows(named=True):
        fall = f"{r['shortfall_bps']:+8.1f}bp" if r["shortfall_bps"] is not None else "       n/a"
        lines.append(f"{r['date']!s:<11} {r['next_date']!s:<11} {r['status']:<13} {p(r['held_return'])} "
                     f"{p(r['market_return'])} {p(r['excess_vs_market'])} {fall:>10} {p(r['cumulative']):>10}")
    return lines


def register(app: typer.Typer) -> None:
    app.command("track")(track_cmd)
    app.command("approve")(approve_cmd)
    app.command("execute")(execute_cmd)
    app.command("override")(override_cmd)
    app.add_typer(emergency_app, name="emergency")
