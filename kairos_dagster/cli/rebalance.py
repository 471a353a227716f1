"""`kairos rebalance`: the week's Risk4/ML rebalance through Dagster, or its gates with --check-only."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer

from kairos_dagster import calendar
from kairos_dagster.cli.common import check_weeks, fail, parse_date, pct, settings
from kairos_dagster.constants import NEW_YORK


def _latest_matrix_date(path) -> dt.date | None:
    from kairos_dagster.warehouse import store

    with store.connect(path, read_only=True) as con:
        return store.date_range(con, "feat_matrix_v2", "date")[1]


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

    from kairos_dagster.portfolio import rebalance_weeks as rw
    from kairos_dagster.portfolio import weekly
    from kairos_dagster.portfolio.config import ConfigError, config_by_name
    from kairos_dagster.portfolio.gates import format_gates
    from kairos_dagster.portfolio.outputs import schedule_dict
    from kairos_dagster.warehouse import store

    s = settings()
    if prior_holdings and no_prior:
        raise fail("pass either --prior-holdings or --no-prior, not both")
    try:
        risk = config_by_name(config)
        if portfolio_value is not None:
            risk = risk.with_overrides(portfolio_value=portfolio_value)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    if not store.exists(s.warehouse):
        raise fail(f"warehouse {s.warehouse} does not exist: run `kairos sync` or `make demo` first")
    d = parse_date(date)
    if d is None:
        try:
            latest = _latest_matrix_date(s.warehouse)
        except store.WarehouseError as exc:
            raise fail(str(exc)) from None
        if latest is None:
            raise fail("feat_matrix_v2 is missing or empty: materialize the pipeline first, or pass --date")
        d = calendar.rebalance_date_for_week(latest)
        typer.echo(f"Latest feat_matrix_v2 date {latest}: rebalance date {d}")
    week_reb = calendar.rebalance_date_for_week(d)
    if d != week_reb and not force:
        typer.echo(f"{d} is not a rebalance day ({calendar.REBALANCE_RULE.lower()}); this week's rebalance date is "
                   f"{week_reb}, the next after {d} is {calendar.next_rebalance_after(d)}. Pass --force to rebalance anyway.",
                   err=True)
        raise typer.Exit(1)
    from kairos_dagster.defs.partitions import week_key as _week_key

    check_weeks(_week_key(d), _week_key(d), "--date", "--date")
    plan = rw.WeekPlan.for_date(d)
    parent = Path(output_dir) if output_dir else s.output_dir / "rebalance"

    if check_only:
        try:
            with store.connect(s.warehouse, read_only=True) as con:
                inputs = weekly.load_inputs(con, [plan], risk, prior_holdings, no_prior)
            week = weekly.compute_rebalance(inputs, [plan], risk)[0]
        except Exception as exc:  # bad input of any kind: say what, exit non-zero
            raise fail(f"rebalance check of {d}: {exc}") from None
        typer.echo(format_gates(week))
        line = rw.summary_line(week)
        if line.get("built"):
            typer.echo(f"Would hold {line['n_positions']} positions, top 5 weight {pct(line['top_5_weight'])}, "
                       f"est vol {pct(line['estimated_vol'])}, turnover {pct(line['turnover'])} "
                       f"(prior: {line['prior_source']})")
        sched = schedule_dict(dt.datetime.now(NEW_YORK), d)
        typer.echo(f"Schedule ({sched['rule']}): next rebalances {', '.join(sched['next_rebalances'])}")
        typer.echo("BLOCKED: the rebalance would not run." if week.blocked else "All blocking gates pass.")
        raise typer.Exit(1 if week.blocked else 0)

    from kairos_dagster.definitions import build_definitions
    from kairos_dagster.defs.partitions import week_key
    from kairos_dagster.defs.tags import REBALANCE_OP
    from kairos_dagster.instance.runner import failure_messages, run_selection

    op_config = {"config": config.lower(), "no_prior": no_prior, "force": force, "rebalance_date": d.isoformat(),
                 "output_dir": str(parent)}
    if prior_holdings:
        op_config["prior_holdings"] = str(Path(prior_holdings).resolve())
    if portfolio_value is not None:
        op_config["portfolio_value"] = float(portfolio_value)
    typer.echo(f"Rebalance of {d} (signal date {plan.signal_date}, partition {week_key(d)}) through Dagster ...")
    result = run_selection(build_definitions(s), ["rebalance_picks", "rebalance_trades"],
                           partition_key=week_key(d), run_config={"ops": {REBALANCE_OP: {"config": op_config}}},
                           tags={"kairos/trigger": "cli_rebalance"}, raise_on_error=False)
    typer.echo(f"Run {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'}")
    if not result.success:
        for message in failure_messages(result):
            typer.echo(message, err=True)
        raise typer.Exit(1)
    folder = parent / d.isoformat()
    summary = json.loads((folder / "portfolio_summary.json").read_text())
    p, m = summary["portfolio"], summary["metrics"]
    typer.echo(f"Picks: {folder / 'picks.csv'}")
    typer.echo(f"{p['n_positions']} positions, top 5 weight {pct(p['top_5_weight'])}, est vol {pct(p['estimated_vol'])}, "
               f"turnover {pct(m['turnover_vs_prior'])}, regime {summary['regime']['regime'] or 'unknown'}")


def register(app: typer.Typer) -> None:
    app.command("rebalance")(rebalance_cmd)
