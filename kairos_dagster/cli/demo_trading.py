"""The demo's operator loop: paper-trade the last completed rebalances on the simulated broker, then track them.

For each week, oldest first, as an operator would: approve the week's picks (`kairos approve`), execute
them at 09:00 New York on the rebalance date (before the open the simulated broker fills at), and verify
the fills after the close. Then `rebalance_performance` measures every week whose next rebalance date's
open is synced, and the track record is printed (`kairos track`). A kill switch that trips is reported
and that week is left unexecuted; the demo goes on. Every step is a Dagster run (the UI shows them).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from dagster import Definitions

from kairos_dagster import calendar
from kairos_dagster.instance.runner import failure_messages, get_instance, run_selection
from kairos_dagster.settings import Settings

DEMO_TRADED_WEEKS = 8
KILL_SWITCH_MARK = "kill switch"


@dataclass
class PaperTrading:
    executed: list[dt.date] = field(default_factory=list)
    held_back: dict[dt.date, str] = field(default_factory=dict)  # rebalance date -> why not executed
    measured: list[dt.date] = field(default_factory=list)


def traded_weeks(last_week: dt.date, first_allowed: dt.date, n: int = DEMO_TRADED_WEEKS) -> list[dt.date]:
    """The Mondays of the last `n` weeks with a rebalance date, ending at `last_week`, none before
    `first_allowed` (the demo's first feature week)."""
    weeks, w = [], last_week
    while len(weeks) < n and w >= first_allowed:
        if calendar.rebalance_date_for_week(w) is not None:
            weeks.append(w)
        w -= dt.timedelta(weeks=1)
    return weeks[::-1]


def _metadata(result, asset: str) -> dict:
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == asset:
            return dict(event.event_specific_data.materialization.metadata)
    return {}


def paper_trade(defs: Definitions, settings: Settings, weeks: list[dt.date], echo: Callable[[str], None]) -> (
        PaperTrading | None):
    """Approve, execute and verify each week on the simulated broker, then measure them. None when a run
    failed for another reason than a tripped kill switch (its cause is printed)."""
    instance = get_instance()
    out = PaperTrading()

    def run(selection: list[str], week: dt.date, ops: dict[str, dict] | None = None):
        # Each week's plan and order log would be a hundred lines: the loop prints one line a week instead
        # (warnings and errors still show; the run's page in the UI has every event).
        run_config = {"loggers": {"console": {"config": {"log_level": "WARNING"}}},
                      **({"ops": {op: {"config": cfg} for op, cfg in ops.items()}} if ops else {})}
        return run_selection(defs, selection, partition_key=week.isoformat(), run_config=run_config,
                             instance=instance, tags={"kairos/trigger": "demo"}, raise_on_error=False)

    echo(f"\n==> paper trading the last {len(weeks)} completed rebalances on the simulated broker: approve "
         "(as `kairos approve`), execute at 09:00 New York, verify after the close")
    for week in weeks:
        reb = calendar.rebalance_date_for_week(week)
        assert reb is not None  # traded_weeks keeps weeks with a session
        picks = settings.output_dir / "rebalance" / reb.isoformat() / "picks.csv"
        if not picks.exists():
            out.held_back[reb] = "no picks (the rebalance's gates held the week back)"
            echo(f"    {reb}: {out.held_back[reb]}")
            continue
        # One run: the approval (as `kairos approve` records it), then the execution it gates.
        result = run(["rebalance_approval", "execution"], week, {
            "rebalance_approval": {"by": "kairos demo", "note": f"demo paper trading of the week of {week}"},
            "execution": {"mode": "execute", "as_of": f"{reb.isoformat()}T09:00"}})
        if not result.success:
            lines = failure_messages(result)
            if any(KILL_SWITCH_MARK in line for line in lines):
                tripped = [part.strip().lstrip("- ").split("; record `kairos override")[0]
                           for line in lines for part in line.splitlines() if KILL_SWITCH_MARK in part]
                out.held_back[reb] = "KILL SWITCH TRIPPED, not executed: " + "; ".join(tripped)
                echo(f"    {reb}: {out.held_back[reb]} (an operator would look, then `kairos override` or wait)")
                continue
            return _failed(result, echo)
        md = _metadata(result, "execution")
        sent = int(md["submitted"].value) if "submitted" in md else 0
        if sent == 0:
            out.executed.append(reb)
            echo(f"    {reb}: approved; nothing to trade")
            continue
        result = run(["execution_report"], week, {"execution": {"mode": "verify", "as_of": f"{reb.isoformat()}T16:30"}})
        if not result.success:
            return _failed(result, echo)
        s = _metadata(result, "execution_report")["summary"].value
        out.executed.append(reb)
        slip = f"{s['slippage_bps']:.1f} bps" if s["slippage_bps"] is not None else "n/a"
        echo(f"    {reb}: approved; {s['orders']} orders, filled {s['filled']}, partial {s['partial']}, "
             f"rejected {s['rejected']}; fill rate {s['fill_rate']:.1%}, slippage {slip}; "
             f"{md['kill_switch_state'].value if 'kill_switch_state' in md else ''}")
    last_priced = _last_priced(settings)
    measurable = [w for w in weeks if last_priced is not None
                  and calendar.next_rebalance_after(calendar.rebalance_date_for_week(w)) <= last_priced]
    echo(f"\n==> rebalance_performance of {len(measurable)} week(s) (each needs the next rebalance date's open; "
         f"prices through {last_priced})")
    for week in measurable:
        result = run(["rebalance_performance"], week)
        if not result.success:
            return _failed(result, echo)
        out.measured.append(calendar.rebalance_date_for_week(week))
    return out


def _last_priced(settings: Settings) -> dt.date | None:
    from kairos_dagster.warehouse import store

    with store.connect(settings.warehouse, read_only=True) as con:
        return con.execute("SELECT max(date) FROM sep_base").fetchone()[0]


def _failed(result, echo: Callable[[str], None]) -> None:
    echo(f"    run {result.run_id}: FAILURE")
    for line in failure_messages(result):
        echo(f"    {line[:2000]}")
    return None
