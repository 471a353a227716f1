"""The weekly rebalance as a function of its inputs: what a week reads from the warehouse (feat_matrix_v2
at the signal date, trailing sep_base returns, the regime, the prior holdings), the weeks of a window,
the Risk4 sequence over them, and the files each week writes.

The rebalance asset and the CLI's `--check-only` both call these, so a check and a run cannot disagree.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from kairos_dagster import calendar as cal
from kairos_dagster.portfolio import rebalance_weeks as rw
from kairos_dagster.portfolio.config import Risk4Config
from kairos_dagster.portfolio.outputs import read_picks_csv, write_rebalance_outputs
from kairos_dagster.sources.sync import current_symbols
from kairos_dagster.warehouse import store

MATRIX = "feat_matrix_v2"
REGIME_TABLE = "regime_history_academic"
PRIOR_LOOKBACK_DAYS = 28  # the default prior: the latest rebalance_picks of the 4 weeks before


@dataclass(frozen=True)
class RebalanceInputs:
    matrix: pl.DataFrame  # feat_matrix_v2 rows at the signal dates (the config's columns)
    matrix_dates: list[dt.date]  # dates feat_matrix_v2 holds around the window
    sep_dates: list[dt.date]
    returns: pl.DataFrame  # ticker, date, ret from sep_base closeadj
    prior: pl.DataFrame  # holdings before the first week
    prior_source: str
    regimes: pl.DataFrame | None  # date, regime, vol_regime, trend_regime


def _dates(con: duckdb.DuckDBPyConnection, table: str, lo: dt.date, hi: dt.date) -> list[dt.date]:
    if not store.table_exists(con, table):
        return []
    rows = con.execute(f"SELECT DISTINCT date FROM {store.ident(table)} WHERE date >= ? AND date <= ? ORDER BY 1",
                       [lo, hi]).fetchall()
    return [r[0] for r in rows]


def load_prior(con: duckdb.DuckDBPyConnection | None, first: dt.date, prior_holdings: str | None,
               no_prior: bool) -> tuple[pl.DataFrame, str]:
    """Holdings before `first`: none (--no-prior), a picks.csv, or the latest rebalance_picks before it."""
    if no_prior and prior_holdings:
        raise ValueError("pass either prior_holdings or no_prior, not both")
    if no_prior:
        return rw.empty_holdings(), "none (no_prior)"
    if prior_holdings:
        held = rw.holdings_from_picks(read_picks_csv(prior_holdings))
        if con is not None:  # a file written before a ticker change names the company's old symbol
            held = held.with_columns(current_symbols(con, held.get_column("ticker"))).sort("ticker")
        return held, f"file {prior_holdings}"
    if con is None or not store.table_exists(con, "rebalance_picks"):
        return rw.empty_holdings(), "none (no earlier rebalance_picks)"
    last = con.execute("SELECT max(date) FROM rebalance_picks WHERE date < ? AND date >= ?",
                       [first, first - dt.timedelta(days=PRIOR_LOOKBACK_DAYS)]).fetchone()[0]
    if last is None:
        return rw.empty_holdings(), f"none (no rebalance_picks in the {PRIOR_LOOKBACK_DAYS} days before {first})"
    rows = store.read_window(con, "rebalance_picks", "date", last, last + dt.timedelta(days=1))
    return rw.holdings_from_picks(rows), f"rebalance_picks of {last}"


def load_inputs(con: duckdb.DuckDBPyConnection, plans: Sequence[rw.WeekPlan], config: Risk4Config,
                prior_holdings: str | None = None, no_prior: bool = False) -> RebalanceInputs:
    """Everything the weeks need, read from the warehouse in a few window queries."""
    first = min(p.rebalance_date for p in plans)
    first_sig = min(p.signal_date for p in plans)
    last_sig = max(p.signal_date for p in plans)
    last = max(p.rebalance_date for p in plans)
    cols = list(dict.fromkeys(["ticker", "date", config.alpha_column, config.vol_column, config.adv_column,
                               config.sector_column, config.price_column]))
    matrix = pl.DataFrame(schema={"ticker": pl.String, "date": pl.Date})
    if store.table_exists(con, MATRIX):
        have = store.table_columns(con, MATRIX)
        cols += [c for c in rw.REGIME_KEYS if c in have and c not in cols]
        sigs = {p.signal_date for p in plans}
        matrix = store.read_window(con, MATRIX, "date", first_sig, last_sig + dt.timedelta(days=1), columns=cols)
        matrix = matrix.filter(pl.col("date").is_in(sorted(sigs)))
    lookback_lo = first_sig - dt.timedelta(days=14)
    matrix_dates = _dates(con, MATRIX, lookback_lo, last)
    sep_dates = _dates(con, "sep_base", lookback_lo, last)
    # cov_window returns need cov_window + 1 prices.
    px_lo = cal.sessions_offset(first_sig, -config.cov_window)
    returns = pl.DataFrame(schema={"ticker": pl.String, "date": pl.Date, "ret": pl.Float64})
    if store.table_exists(con, "sep_base"):
        px = store.read_window(con, "sep_base", "date", px_lo, last_sig + dt.timedelta(days=1),
                               columns=["ticker", "date", "closeadj"])
        returns = rw.daily_returns(px)
    regimes = None
    if store.table_exists(con, REGIME_TABLE):
        regimes = store.read_window(con, REGIME_TABLE, "date", first_sig, last_sig + dt.timedelta(days=1),
                                    columns=["date", *rw.REGIME_KEYS])
    elif set(rw.REGIME_KEYS) <= set(matrix.columns):
        regimes = matrix.select("date", *rw.REGIME_KEYS).unique()
    prior, source = load_prior(con, first, prior_holdings, no_prior)
    return RebalanceInputs(matrix, matrix_dates, sep_dates, returns, prior, source, regimes)


def compute_rebalance(inputs: RebalanceInputs, plans: Sequence[rw.WeekPlan], config: Risk4Config) -> list[rw.WeekRebalance]:
    return rw.rebalance_sequence(plans, inputs.matrix, inputs.matrix_dates, inputs.returns, inputs.prior, config,
                                 inputs.prior_source)


def freshness(inputs: RebalanceInputs, plan: rw.WeekPlan) -> dict[str, object]:
    """Latest date each input holds as of the rebalance date (later rows are not observable then)."""
    def latest(dates: list[dt.date]) -> dt.date | None:
        seen = [d for d in dates if d <= plan.rebalance_date]
        return max(seen) if seen else None
    return {"sep_base": latest(inputs.sep_dates), MATRIX: latest(inputs.matrix_dates),
            "signal_date": plan.signal_date}


def plans_for_window(start: dt.date, end: dt.date, rebalance_date: str | None, force: bool) -> list[rw.WeekPlan]:
    """The weeks of [start, end); an explicit as-of date must lie in a one-week window and, without
    `force`, be its week's rebalance date."""
    if rebalance_date is None:
        return rw.week_plans(start, end)
    d = cal.parse_date(rebalance_date)
    if (end - start).days != 7 or not (start <= d < end):
        raise ValueError(f"rebalance_date {d} must lie inside a single-week partition window {start}..{end - dt.timedelta(days=1)}")
    week_reb = cal.rebalance_date_for_week(d)
    if d != week_reb and not force:
        raise ValueError(f"{d} is not a rebalance day ({cal.REBALANCE_RULE.lower()}; this week's is {week_reb}); "
                         "pass force to rebalance anyway")
    return [rw.WeekPlan.for_date(d)]


def write_week_files(parent: Path, inputs: RebalanceInputs, week: rw.WeekRebalance, now: dt.datetime) -> Path:
    assert week.result is not None and week.trades is not None
    return write_rebalance_outputs(
        parent / week.plan.rebalance_date.isoformat(), week.result, week.trades, week.plan.rebalance_date, now,
        regime=rw.regime_at(inputs.regimes, week.plan.signal_date), data_freshness=freshness(inputs, week.plan),
        overwrite=True)


def signal_date_rows(con: duckdb.DuckDBPyConnection, signal_date: dt.date) -> tuple[int, dt.date | None] | None:
    """(rows of feat_matrix_v2 at `signal_date`, its latest date), or None when the table does not exist:
    whether the rebalance of that signal date can run."""
    if not store.table_exists(con, MATRIX):
        return None
    n, latest = con.execute(f"SELECT count(*) FILTER (WHERE date = ?), max(date) FROM {MATRIX}",
                            [signal_date]).fetchone()
    return int(n), latest
