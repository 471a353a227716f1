"""`kairos backtest`: the weekly strategies replayed over a span of weeks through Dagster, then the stats."""

from __future__ import annotations

from typing import Annotated

import typer

from kairos_dagster.cli.common import check_weeks, fail, num, parse_date, pct, report_run, settings


def backtest_cmd(
    from_date: Annotated[str | None, typer.Option("--from", help="first date (default: the first partition)")] = None,
    to_date: Annotated[str | None, typer.Option("--to", help="last date (default: the current week)")] = None,
    strategies: Annotated[str | None, typer.Option("--strategies", help="comma-separated: ml,ml_fixed,v8,oracle,"
                                                                         "universe_ew,market (default all)")] = None,
    portfolio_value: Annotated[float | None, typer.Option("--portfolio-value", help="starting $ (default 100,000)")] = None,
    half_spread_bps: Annotated[float | None, typer.Option("--half-spread-bps", help="half-spread in bps (default 5)")] = None,
    impact_k: Annotated[float | None, typer.Option("--impact-k", help="square-root impact prefactor (default 0.1)")] = None,
    config_id: Annotated[str | None, typer.Option("--config-id", help="key of a non-default configuration "
                                                                       "(default: derived from the overrides)")] = None,
) -> None:
    """Replay the strategies over the weeks (one Dagster run), write the backtest tables and strategy_stats,
    and print the full-period statistics. Overrides write under their own config_id, never the default chain."""
    from kairos_dagster.backtest import weekly
    from kairos_dagster.backtest.report import report_name
    from kairos_dagster.backtest.tables import DEFAULT_CONFIG_ID
    from kairos_dagster.definitions import build_definitions
    from kairos_dagster.defs.partitions import settings_partitions, week_key
    from kairos_dagster.defs.tags import BACKTEST_OP
    from kairos_dagster.instance.runner import run_selection
    from kairos_dagster.warehouse import store

    s = settings()
    if not store.exists(s.warehouse):
        raise fail(f"warehouse {s.warehouse} does not exist: run `kairos sync` or `make demo` first")
    parts = settings_partitions(s)
    first = week_key(parse_date(from_date, "--from")) if from_date else parts.get_first_partition_key()
    last = week_key(parse_date(to_date, "--to")) if to_date else parts.get_last_partition_key()
    if first > last:
        raise fail(f"--from {from_date} is after --to {to_date}")
    first, last = check_weeks(first, last, "--from", "--to")
    chosen = [x.strip() for x in (strategies or "").split(",") if x.strip()] or list(weekly.STRATEGIES)
    unknown = [x for x in chosen if x not in weekly.STRATEGIES]
    if unknown:
        raise fail(f"--strategies: unknown {', '.join(unknown)}; choose from {', '.join(weekly.STRATEGIES)}")
    config: dict = {"strategies": chosen}
    overrides = {"portfolio_value": portfolio_value, "half_spread_bps": half_spread_bps, "impact_k": impact_k}
    config |= {k: float(v) for k, v in overrides.items() if v is not None}
    custom = len(config) > 1 or chosen != list(weekly.STRATEGIES)
    cid = config_id or ("cli-" + "-".join(f"{k}={v}" for k, v in sorted(config.items()) if k != "strategies")
                        + ("-" + "+".join(chosen) if chosen != list(weekly.STRATEGIES) else "") if custom
                        else DEFAULT_CONFIG_ID)
    if cid == DEFAULT_CONFIG_ID and custom:
        raise fail("--config-id default is the weekly chain; overrides need another --config-id")
    config["config_id"] = cid
    typer.echo(f"Backtest of {', '.join(chosen)} over weeks {first} .. {last} (config_id {cid}) through Dagster ...")
    # The capacity sweep extends its own chains alongside the default chain only.
    selection = ["backtest_daily", "backtest_trades", "backtest_positions", "backtest_book",
                 *(["backtest_capacity"] if cid == DEFAULT_CONFIG_ID else []), "strategy_stats"]
    result = run_selection(build_definitions(s), selection,
                           partition_range=(first, last), tags={"kairos/trigger": "cli_backtest"},
                           run_config={"ops": {BACKTEST_OP: {"config": config},
                                               "strategy_stats": {"config": {"config_id": cid}}}},
                           raise_on_error=False)
    report_run(result)
    with store.connect(s.warehouse, read_only=True) as con:
        rows = con.execute("SELECT strategy, annual_return, annual_volatility, sharpe, max_drawdown, calmar, "
                           "avg_weekly_turnover, annual_cost_drag FROM strategy_stats WHERE config_id = ? AND "
                           "period = 'full' ORDER BY sharpe DESC NULLS LAST", [cid]).fetchall()
    typer.echo(f"{'strategy':12} {'return/yr':>9} {'vol':>7} {'Sharpe':>7} {'max DD':>8} {'Calmar':>7} "
               f"{'turnover/wk':>11} {'cost/yr':>8}")
    for name, ret, vol, sharpe, mdd, calmar, turn, cost in rows:
        typer.echo(f"{name:12} {pct(ret):>9} {pct(vol):>7} {num(sharpe):>7} {pct(mdd):>8} {num(calmar):>7} "
                   f"{pct(turn):>11} {pct(cost):>8}")
    typer.echo(f"Tables: backtest_daily, backtest_trades, backtest_positions, strategy_stats (config_id {cid}) in "
               f"{s.warehouse}")
    if cid == DEFAULT_CONFIG_ID:
        _print_capacity(s.warehouse)
    path = s.output_dir / "backtest" / report_name(cid)
    if path.is_file():
        typer.echo(f"Report: {path}")


def _print_capacity(db) -> None:
    from kairos_dagster.warehouse import store

    with store.connect(db, read_only=True) as con:
        if not store.table_exists(con, "backtest_capacity"):
            return
        rows = con.execute("SELECT portfolio_value, sharpe, sharpe_gross, annual_cost_drag, unfilled_share "
                           "FROM backtest_capacity ORDER BY portfolio_value").fetchall()
    typer.echo("Capacity of ml: " + "; ".join(
        f"${v:,.0f}: Sharpe {num(sh)} (gross {num(g)}, cost {pct(c)}/yr, unfilled {pct(u)})"
        for v, sh, g, c, u in rows))


def register(app: typer.Typer) -> None:
    app.command("backtest")(backtest_cmd)
