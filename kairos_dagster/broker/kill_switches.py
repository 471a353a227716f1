"""Kill switches: blocking gates of `execution` judged on the account and the track record (no dagster import).

- `max_daily_loss`: the account's loss over the last complete session (equity at its close against the
  close before) beyond `max_daily_loss_pct` (seed default 3%) blocks. Not armed without two closes.
- `min_live_sharpe`: the annualized Sharpe (mean / standard deviation of the weekly held returns x
  sqrt(52)) of the last `live_sharpe_weeks` executed, measured rebalances (rebalance_performance) below
  `min_live_sharpe` (seed default 0.5) blocks. Armed only once that many weeks are tracked.
- `live_vs_backtest_gap` (warn, never blocks): over the same trailing weeks (at least
  GAP_MIN_WEEKS of them), the compounded live return minus the compounded backtest return of the same
  weeks; a gap beyond `max_backtest_gap` in either direction (default 5 percentage points) says live
  trading and the backtest that justified it have parted ways (costs, fills, data) and need a look.

A tripped blocking switch holds `--execute` back (a preview still shows everything) until an operator
records an override for these picks (`kairos override --gate <switch>`, gate_records.record_override).
Every evaluation is kept in `kill_switch_evaluations`, one row per (rebalance date, switch), the latest.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass

import duckdb
import polars as pl

from kairos_dagster.broker.base import SessionChange
from kairos_dagster.warehouse import store

TABLE = "kill_switch_evaluations"
SWITCHES: tuple[tuple[str, bool, str], ...] = (
    ("max_daily_loss", True, "the account's loss over the last session beyond max_daily_loss_pct"),
    ("min_live_sharpe", True, "the trailing live Sharpe over the last N tracked rebalances below min_live_sharpe"),
    ("live_vs_backtest_gap", False, "the trailing live return minus the backtest's beyond max_backtest_gap (warn)"),
)
BLOCKING_SWITCHES = tuple(name for name, blocking, _ in SWITCHES if blocking)
GAP_MIN_WEEKS = 4  # fewer weeks than this say nothing about a gap between live and backtest
WEEKS_PER_YEAR = 52.0
SCHEMA = {
    "rebalance_date": pl.Date, "switch": pl.String, "blocking": pl.Boolean, "armed": pl.Boolean,
    "tripped": pl.Boolean, "overridden_by": pl.String, "value": pl.Float64, "threshold": pl.Float64,
    "detail": pl.String, "picks_hash": pl.String, "evaluated_at": pl.Datetime("us", "UTC"),
}


@dataclass(frozen=True)
class KillSwitchConfig:
    """The seed's `ops.kill_switch` section: enabled, max_daily_loss_pct, min_live_sharpe_threshold."""

    enabled: bool = True
    max_daily_loss_pct: float = 0.03
    min_live_sharpe: float = 0.5
    live_sharpe_weeks: int = 26
    max_backtest_gap: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.max_daily_loss_pct < 1:
            raise ValueError(f"max_daily_loss_pct must be between 0 and 1 (0.03 = 3%), got {self.max_daily_loss_pct}")
        if not math.isfinite(self.min_live_sharpe):
            raise ValueError(f"min_live_sharpe must be a number, got {self.min_live_sharpe}")
        if self.live_sharpe_weeks < 2:
            raise ValueError(f"live_sharpe_weeks must be at least 2, got {self.live_sharpe_weeks}")
        if not 0 < self.max_backtest_gap < 10:
            raise ValueError(f"max_backtest_gap must be positive (0.05 = 5 points), got {self.max_backtest_gap}")


def live_sharpe(returns: pl.Series) -> float | None:
    """Annualized Sharpe of weekly returns; None for a flat or too short series."""
    r = returns.drop_nulls().cast(pl.Float64)
    if r.len() < 2:
        return None
    sd = float(r.std())
    return float(r.mean()) / sd * math.sqrt(WEEKS_PER_YEAR) if sd > 0 else None


def evaluate(config: KillSwitchConfig, *, session: SessionChange | None, track: pl.DataFrame,
             overrides: Mapping[str, str] = {}) -> pl.DataFrame:
    """One row per switch (switch, blocking, armed, tripped, overridden_by, value, threshold, detail).

    `track`: the executed, measured rebalances before this one (rebalance_performance rows: date,
    held_return, backtest_return), any order. `overrides`: switch -> who overrode it for these picks.
    """
    rows: list[dict] = []

    def add(name: str, armed: bool, tripped: bool, value: float | None, threshold: float, detail: str) -> None:
        blocking = dict((n, b) for n, b, _ in SWITCHES)[name]
        by = overrides.get(name) if tripped else None
        rows.append({"switch": name, "blocking": blocking, "armed": armed, "tripped": tripped, "overridden_by": by,
                     "value": value, "threshold": threshold,
                     "detail": detail + (f" (overridden by {by})" if by else "")})

    if not config.enabled:
        for name, _, _ in SWITCHES:
            add(name, False, False, None, math.nan, "kill switches disabled (KAIROS_KILL_SWITCHES=0)")
        return pl.DataFrame(rows, schema={k: SCHEMA[k] for k in rows[0]})
    # max_daily_loss
    if session is None:
        add("max_daily_loss", False, False, None, config.max_daily_loss_pct,
            "not armed: the account has no two session closes yet")
    else:
        loss = -session.change
        add("max_daily_loss", True, bool(loss > config.max_daily_loss_pct), loss, config.max_daily_loss_pct,
            f"the account's change over the session of {session.session}: {-loss:+.2%} (equity "
            f"{session.equity_before:,.2f} -> {session.equity_after:,.2f}), limit -{config.max_daily_loss_pct:.2%}")
    measured = track.filter(pl.col("held_return").is_not_null()).sort("date")
    n, need = measured.height, config.live_sharpe_weeks
    trailing = measured.tail(need)
    # min_live_sharpe
    if n < need:
        add("min_live_sharpe", False, False, live_sharpe(trailing["held_return"]), config.min_live_sharpe,
            f"not armed: {n} of {need} tracked rebalances")
    else:
        sr = live_sharpe(trailing["held_return"])
        tripped = sr is None or sr < config.min_live_sharpe
        add("min_live_sharpe", True, tripped, sr, config.min_live_sharpe,
            f"live Sharpe {'n/a (flat returns)' if sr is None else f'{sr:.2f}'} over the last {need} rebalances "
            f"({trailing['date'].min()} .. {trailing['date'].max()}) vs minimum {config.min_live_sharpe:.2f}")
    # live_vs_backtest_gap
    both = trailing.filter(pl.col("backtest_return").is_not_null())
    if both.height < GAP_MIN_WEEKS:
        add("live_vs_backtest_gap", False, False, None, config.max_backtest_gap,
            f"not armed: {both.height} of {GAP_MIN_WEEKS} tracked weeks with a backtest to compare")
    else:
        live = float((1.0 + both["held_return"]).product()) - 1.0
        back = float((1.0 + both["backtest_return"]).product()) - 1.0
        gap = live - back
        add("live_vs_backtest_gap", True, bool(abs(gap) > config.max_backtest_gap), gap, config.max_backtest_gap,
            f"live {live:+.2%} vs backtest {back:+.2%} over {both.height} weeks: gap {gap:+.2%} "
            f"(bound ±{config.max_backtest_gap:.2%})")
    return pl.DataFrame(rows, schema={k: SCHEMA[k] for k in rows[0]})


def state_text(switches: pl.DataFrame) -> str:
    """One line: which switches tripped (and whether overridden or warn-only), else which are armed."""
    tripped = switches.filter(pl.col("tripped"))
    if not tripped.height:
        armed = switches.filter(pl.col("armed"))["switch"].to_list()
        return f"no kill switch tripped (armed: {', '.join(armed) or 'none'})"
    return "; ".join(f"{r['switch']} TRIPPED" + (f" (overridden by {r['overridden_by']})" if r["overridden_by"] else
                                                  "" if r["blocking"] else " (warn)")
                     for r in tripped.iter_rows(named=True))


# ------------------------------------------------------------------------------ warehouse
def tracked_before(con: duckdb.DuckDBPyConnection, rebalance_date: dt.date) -> pl.DataFrame:
    """The live track record as known on the morning of `rebalance_date`: executed, measured rebalances whose
    measurement ended before it. A week is measured to the next rebalance's open, so the week just before
    (which ends at this date's open) is not known yet, even when a replay finds it stored."""
    cols = {"date": pl.Date, "held_return": pl.Float64, "backtest_return": pl.Float64}
    if not store.table_exists(con, "rebalance_performance"):
        return pl.DataFrame(schema=cols)
    return con.execute("SELECT date, held_return, backtest_return FROM rebalance_performance WHERE next_date < ? AND "
                       "held_return IS NOT NULL ORDER BY date", [rebalance_date]).pl().cast(cols)


def record(con: duckdb.DuckDBPyConnection, rebalance_date: dt.date, switches: pl.DataFrame, picks_hash: str,
           now: dt.datetime) -> None:
    """Keep the latest evaluation of each switch for the rebalance date."""
    rows = switches.with_columns(rebalance_date=pl.lit(rebalance_date), picks_hash=pl.lit(picks_hash),
                                 evaluated_at=pl.lit(now).cast(SCHEMA["evaluated_at"])).select(list(SCHEMA)).cast(SCHEMA)
    store.upsert_rows(con, TABLE, rows, ["rebalance_date"])


def latest_state(con: duckdb.DuckDBPyConnection, on_or_before: dt.date | None = None) -> pl.DataFrame:
    """The last stored evaluation (every switch of the latest rebalance date evaluated)."""
    if not store.table_exists(con, TABLE):
        return pl.DataFrame(schema=SCHEMA)
    where, params = ("WHERE rebalance_date <= ?", [on_or_before]) if on_or_before else ("", [])
    return con.execute(f"SELECT * FROM {TABLE} WHERE rebalance_date = (SELECT max(rebalance_date) FROM {TABLE} "
                       f"{where}) ORDER BY switch", params).pl()
