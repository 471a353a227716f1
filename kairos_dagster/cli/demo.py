"""`kairos demo` (`make demo`): the weekly job end to end on the synthetic market, through the Dagster instance.

For an as-of day (default today; demo_plan decides the dates): syncs three years plus one year of
warm-up history up to the latest completed rebalance, builds the feature graph, the ML predictions
and feat_matrix_v2 for the three years in single-run backfills, then the rebalances of the last eight
completed weeks, the backtest, and paper-trades those eight weeks on the simulated broker (approve,
execute, verify; cli/demo_trading.py) before printing their track record. Every step is a Dagster run,
so the history shows up in the UI (`make ui`).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from typing import Annotated

import typer
from dagster import AssetSelection, Definitions

from kairos_dagster import calendar
from kairos_dagster.cli.common import fail, num, parse_date, pct, settings, today
from kairos_dagster.cli.demo_trading import paper_trade, traded_weeks
from kairos_dagster.defs.features.automation import FEATURE_GROUPS
from kairos_dagster.instance.runner import failure_messages, get_instance, run_selection
from kairos_dagster.ml.demo_plan import DemoPlan
from kairos_dagster.settings import Settings


def run_demo(defs: Definitions, settings: Settings, plan: DemoPlan, echo: Callable[[str], None]) -> bool:
    instance = get_instance()
    sync_start, feat_start, last = (plan.sync_start.isoformat(), plan.feature_start.isoformat(),
                                    plan.rebalance_week.isoformat())
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    traded = traded_weeks(plan.rebalance_week, plan.feature_start, settings.demo_traded_weeks)
    first_traded = traded[0].isoformat()
    steps: list[tuple[str, AssetSelection, tuple[str, str]]] = [
        ("sync SHARADAR tables (synthetic market)", AssetSelection.groups("sync"), (sync_start, last)),
        ("universe and market returns over the whole history",
         AssetSelection.assets("universe", "market_returns"), (sync_start, last)),
        ("feature graph, ML predictions, feat_matrix_v2 and the factor report",
         AssetSelection.groups(*FEATURE_GROUPS), (feat_start, last)),
    ]
    if "rebalance_picks" in keys:
        # rebalance_picks and rebalance_trades are one multi-asset: select them together.
        steps.append((f"the rebalances of the last {len(traded)} weeks, through {plan.rebalance_date}",
                      AssetSelection.assets("rebalance_picks").required_multi_asset_neighbors(), (first_traded, last)))
    echo(f"Kairos demo: {settings.synthetic_tickers} synthetic tickers (seed {settings.synthetic_seed}), "
         f"weeks {sync_start} .. {last}; warehouse {settings.warehouse}")
    echo(f"Rebalance {plan.rebalance_date} (week {last}): {plan.why}.")
    tunes = "; ".join(f"{w.point}: {w.folds} of 3 folds" + (f" ({w.folds_why})" if w.folds_why else "")
                      for w in plan.tunes)
    echo(f"Walk-forward: anchor {plan.anchor}, {len(plan.fits)} retrain points, tuning at {tunes}")
    for title, selection, (first, final) in steps:
        echo(f"\n==> {title}: weeks {first} .. {final} (one run)")
        t0 = dt.datetime.now()
        result = run_selection(defs, selection, partition_range=(first, final), instance=instance,
                               tags={"kairos/trigger": "demo"}, raise_on_error=False)
        seconds = (dt.datetime.now() - t0).total_seconds()
        echo(f"    run {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'} in {seconds:.0f} s")
        if not result.success:
            if title.startswith("the rebalance") and _only_too_few_names(result):
                # The gate did its job: a small synthetic market has too few liquid names. The stale-data
                # and coverage gates are not excused: the demo controls its data and models.
                echo(f"    the rebalance was held back by its blocking gate min_eligible_block (fewer than 50 "
                     f"names clear the $2M ADV filter in a {settings.synthetic_tickers}-ticker market): "
                     "no picks, nothing to preview. KAIROS_SYNTHETIC_TICKERS=300 or more gives a portfolio.")
                return demo_backtest(defs, settings, feat_start, last, echo)
            for line in failure_messages(result):
                echo(f"    {line[:2000]}")
            return False
    print_rebalance(settings, plan.rebalance_date, echo)
    # The backtest first: the performance of the paper-traded weeks is compared with it.
    if "strategy_stats" in keys and not demo_backtest(defs, settings, feat_start, last, echo):
        return False
    if "execution" in keys:
        return demo_paper_trading(defs, settings, traded, echo)
    return True


def demo_paper_trading(defs: Definitions, settings: Settings, weeks: list[dt.date],
                       echo: Callable[[str], None]) -> bool:
    """The last completed rebalances paper-traded on the simulated broker, then the track record."""
    from kairos_dagster.broker.performance import track_record
    from kairos_dagster.cli.execution import track_lines
    from kairos_dagster.warehouse import store

    if getattr(defs.resources.get("broker"), "kind", "simulated") != "simulated":
        echo("\n==> paper trading: Alpaca credentials are set; the demo trades only on the simulated broker "
             "(unset APCA_API_KEY_ID / ALPACA_API_KEY to see it); skipped")
        return True
    traded = paper_trade(defs, settings, weeks, echo)
    if traded is None:
        return False
    with store.connect(settings.warehouse, read_only=True) as con:
        rows = (con.execute("SELECT * FROM rebalance_performance ORDER BY date").pl()
                if store.table_exists(con, "rebalance_performance") else None)
    echo(f"\n==> track record ({len(traded.executed)} executed, {len(traded.held_back)} held back, "
         f"{len(traded.measured)} measured; `kairos track` prints it again)")
    if rows is None or rows.height == 0:
        echo("    nothing measured yet: each week needs the next rebalance date's open")
    else:
        for line in track_lines(track_record(rows)):
            echo("    " + line)
    tripped = [f"{d}: {why}" for d, why in traded.held_back.items() if "KILL SWITCH" in why]
    if tripped:
        echo("    kill switches tripped (the demo goes on; live, execution waits for an override): "
             + " | ".join(tripped))
    return demo_ops_report(defs, settings, weeks[-1], echo)


def demo_ops_report(defs: Definitions, settings: Settings, week: dt.date, echo: Callable[[str], None]) -> bool:
    """The ops report of the demo's last week (what the Saturday schedule writes)."""
    echo(f"\n==> ops report of the week of {week}")
    result = run_selection(defs, ["ops_report"], partition_key=week.isoformat(), instance=get_instance(),
                           tags={"kairos/trigger": "demo"}, raise_on_error=False)
    echo(f"    run {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'}")
    if not result.success:
        for line in failure_messages(result):
            echo(f"    {line[:2000]}")
        return False
    for event in result.get_asset_materialization_events():
        md = event.event_specific_data.materialization.metadata
        echo(f"    ops report: {md['report'].value}")
    return True


def demo_backtest(defs: Definitions, settings: Settings, first: str, last: str, echo: Callable[[str], None]) -> bool:
    """The backtest of the demo's feature weeks, every strategy, and its full-period statistics."""
    from kairos_dagster.backtest.report import report_name
    from kairos_dagster.backtest.tables import DEFAULT_CONFIG_ID
    from kairos_dagster.warehouse import store

    echo(f"\n==> backtest of every strategy and strategy_stats: weeks {first} .. {last} (one run)")
    t0 = dt.datetime.now()
    result = run_selection(defs, AssetSelection.groups("backtest"), partition_range=(first, last),
                           instance=get_instance(), tags={"kairos/trigger": "demo"}, raise_on_error=False)
    echo(f"    run {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'} in "
         f"{(dt.datetime.now() - t0).total_seconds():.0f} s")
    if not result.success:
        for line in failure_messages(result):
            echo(f"    {line[:2000]}")
        return False
    with store.connect(settings.warehouse, read_only=True) as con:
        stats = con.execute("SELECT strategy, annual_return, annual_volatility, sharpe, max_drawdown, "
                            "avg_weekly_turnover, annual_cost_drag FROM strategy_stats WHERE config_id = ? AND "
                            "period = 'full' ORDER BY sharpe DESC NULLS LAST", [DEFAULT_CONFIG_ID]).fetchall()
    echo(f"    {'strategy':12} {'return/yr':>9} {'vol':>7} {'Sharpe':>7} {'max DD':>8} {'turnover/wk':>11} "
         f"{'cost/yr':>8}")
    for s, ret, vol, sharpe, mdd, turn, cost in stats:
        echo(f"    {s:12} {pct(ret):>9} {pct(vol):>7} {num(sharpe):>7} {pct(mdd):>8} {pct(turn):>11} "
             f"{pct(cost):>8}")
    echo("    (net of costs: 5 bps half-spread, square-root impact; strategy_stats in the warehouse and the UI)")
    with store.connect(settings.warehouse, read_only=True) as con:
        sweep = con.execute("SELECT portfolio_value, sharpe, unfilled_share FROM backtest_capacity "
                            "ORDER BY portfolio_value").fetchall() if store.table_exists(con, "backtest_capacity") else []
    if sweep:
        echo("    capacity of ml (net Sharpe by portfolio value): " + ", ".join(
            f"${v:,.0f} {num(s)} (unfilled {pct(u)})" for v, s, u in sweep))
    path = settings.output_dir / "backtest" / report_name(DEFAULT_CONFIG_ID)
    echo(f"    report: {path}" if path.is_file() else "    report: not written (no backtest rows)")
    return True


def _only_too_few_names(result) -> bool:
    """Whether the run failed only because the min_eligible_block gate held the rebalance back."""
    from kairos_dagster.portfolio.gates import GATES

    blocking = {name for name, is_blocking, _ in GATES if is_blocking}
    failed = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed} & blocking
    return failed == {"min_eligible_block"}


def _fmt(x: object) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def print_rebalance(settings: Settings, rebalance_date: dt.date, echo: Callable[[str], None]) -> None:
    """Where the demo's picks are, and the short summary an operator reads first."""
    import json

    latest = settings.output_dir / "rebalance" / rebalance_date.isoformat()
    if not (latest / "portfolio_summary.json").exists():
        echo(f"\nNo picks were written for {rebalance_date} ({latest})")
        return
    summary = json.loads((latest / "portfolio_summary.json").read_text())
    port, metrics, regime = summary.get("portfolio", {}), summary.get("metrics", {}), summary.get("regime", {})
    echo(f"\nRebalance {summary.get('rebalance_date')}: picks {latest / 'picks.csv'}")
    echo(f"    {port.get('n_positions')} positions, total weight {port.get('total_weight'):.3f}, "
         f"top 5 weight {port.get('top_5_weight'):.3f}, estimated vol {port.get('estimated_vol'):.3f}, "
         f"turnover vs prior {_fmt(metrics.get('turnover_vs_prior'))}, regime {regime.get('regime')}")
    echo(f"    trades {latest / 'trades.csv'}; summary {latest / 'portfolio_summary.json'}; "
         f"schedule {latest / 'schedule.json'}")


def demo_cmd(
    as_of: Annotated[str | None, typer.Option(
        "--as-of", help="run the demo as if this ISO day were today (morning, before the open); default today "
                        "in New York. A future day is allowed: the synthetic market is generated for it.")] = None,
) -> None:
    """Run the weekly job end to end on the synthetic market and print where the outputs are."""
    from kairos_dagster.ml.demo_plan import DemoPlanError, demo_plan

    day = parse_date(as_of, "--as-of") or today()
    # The demo's partitions start with its data: one year of warm-up history, then three years of
    # features, models and rebalances up to the latest completed rebalance, with the walk-forward grid
    # anchored at the first feature week and a small Optuna budget. Variables the operator set win.
    # These must be in the environment before the partitions and the Definitions are built (their
    # modules read it).
    if os.environ.get("KAIROS_DATA_SOURCE", "synthetic").strip().lower() not in ("", "synthetic"):
        raise fail("the demo runs on the synthetic market: unset KAIROS_DATA_SOURCE or set it to synthetic")
    os.environ["KAIROS_DATA_SOURCE"] = "synthetic"  # a Nasdaq key in the environment must not switch it
    try:
        operator_start = os.environ.get("KAIROS_START_DATE", "").strip()
        operator_anchor = os.environ.get("KAIROS_ML_ANCHOR", "").strip()
        plan = demo_plan(day, first_partition=dt.date.fromisoformat(operator_start) if operator_start else None,
                         anchor=dt.date.fromisoformat(operator_anchor) if operator_anchor else None)
    except (DemoPlanError, calendar.CalendarError) as exc:
        raise fail(f"--as-of {day}: {exc}") from None
    except ValueError as exc:
        raise fail(f"KAIROS_START_DATE / KAIROS_ML_ANCHOR: {exc}") from None
    os.environ["KAIROS_AS_OF"] = day.isoformat()
    for name, value in {
        "KAIROS_START_DATE": plan.sync_start.isoformat(),
        "KAIROS_ML_ANCHOR": plan.anchor.isoformat(),
        "KAIROS_ML_TRIALS": "3",
    }.items():
        os.environ.setdefault(name, value)
    s = settings()
    from kairos_dagster.definitions import build_definitions
    from kairos_dagster.instance.runner import dagster_home
    from kairos_dagster.warehouse.summary import warehouse_summary

    defs = build_definitions(s)
    # `make ui` reads this file so the UI sees the demo's partitions, walk-forward anchor and as-of day.
    names = ["KAIROS_START_DATE", "KAIROS_ML_ANCHOR", "KAIROS_ML_TRIALS", "KAIROS_DATA_SOURCE"]
    if as_of is not None:  # a replayed day; a demo of today leaves the UI on the real clock
        names.append("KAIROS_AS_OF")
    s.duckdb_path.parent.mkdir(parents=True, exist_ok=True)
    (s.duckdb_path.parent / "demo.env").write_text("".join(f"{k}={os.environ[k]}\n" for k in names))
    ok = run_demo(defs, s, plan, typer.echo)
    typer.echo("\n" + warehouse_summary(s.warehouse))
    typer.echo(f"\nRun history and asset metadata: DAGSTER_HOME={dagster_home()}; open the UI with `make ui` "
               "(http://127.0.0.1:3000).")
    typer.echo(f"Rebalance outputs: {s.output_dir / 'rebalance'}")
    if not ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
