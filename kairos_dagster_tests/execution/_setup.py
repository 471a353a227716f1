"""Shared fixtures data for the execution tests: a small sep_base and a hand-made picks.csv."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from kairos_dagster import calendar as cal
from kairos_dagster.warehouse import store

REB = dt.date(2026, 1, 16)  # a Friday session: the week 2026-01-12's rebalance date
WEEK = "2026-01-12"
# picks price = close of the signal date (01-15) = open of the rebalance date (01-16)
PRICES = {"AAA": 50.0, "BBB": 100.0, "CCC": 20.0, "DDD": 80.0}
SHARES = {"AAA": 80, "BBB": 40, "CCC": 200, "DDD": 50}  # 4,000 each: 4% of a 100k account


def build_sep(path: Path) -> None:
    """sep_base for 4 tickers, 2025-12-01..2026-01-23: flat prices, unadjusted == adjusted (no splits)."""
    days = cal.sessions_between(dt.date(2025, 12, 1), dt.date(2026, 1, 23))
    rows = [{"ticker": t, "date": d, "open": p, "close": p, "closeunadj": p, "closeadj": p}
            for t, p in PRICES.items() for d in days]
    sep = pl.DataFrame(rows).with_columns(pl.col("date").cast(pl.Date))
    with store.connect(path) as con:
        store.replace_table(con, "sep_base", sep)


def picks_frame(shares: dict[str, int] | None = None) -> pl.DataFrame:
    shares = shares or SHARES
    tickers = sorted(shares)
    return pl.DataFrame({
        "rank": list(range(1, len(tickers) + 1)), "ticker": tickers,
        "weight": [shares[t] * PRICES[t] / 100_000 for t in tickers], "sector": ["Technology"] * len(tickers),
        "alpha_z": [1.0] * len(tickers), "vol_blend": [0.3] * len(tickers), "adv_20": [1e7] * len(tickers),
        "price": [PRICES[t] for t in tickers], "target_value": [shares[t] * PRICES[t] for t in tickers],
        "shares": [shares[t] for t in tickers]})


def write_picks(outputs: Path, shares: dict[str, int] | None = None, day: dt.date = REB, *,
                record_gates: bool = True, db: Path | None = None) -> Path:
    """A picks.csv standing in for the rebalance's; with `record_gates` (default) its passing gate verdicts
    are stored in the warehouse (KAIROS_DUCKDB_PATH, or `db`) the way `rebalance` stores them."""
    import os

    from kairos_dagster.broker.approval import picks_content_hash
    from kairos_dagster.portfolio import gate_records
    from kairos_dagster.portfolio.gates import GateResult

    folder = outputs / "rebalance" / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "picks.csv"
    picks_frame(shares).write_csv(path)
    if record_gates:
        gates = [GateResult(name, True, "block", "passed", None)
                 for name in ("feat_matrix_has_signal_date", "ml_alpha_coverage", "min_eligible_block")]
        with store.connect(db or Path(os.environ["KAIROS_DUCKDB_PATH"])) as con:
            gate_records.record_gate_results(con, gate_records.gate_rows(
                day, cal.previous_session(day), gates, picks_content_hash(path), blocking={g.name for g in gates},
                run_id="test-rebalance", now=dt.datetime(2026, 1, 15, 22, tzinfo=dt.UTC)))
    return path
