"""Performance of executed rebalances, from the broker's own records (no dagster import): the pure
`measure` and the warehouse reads that feed it.

For the rebalance of date R, executed (orders filled at the broker, `execution_orders`), and the next
rebalance date N:
- the held portfolio is every fill through R, each in split-adjusted units (filled shares x closeunadj /
  close of its own fill day, so a later split does not change it);
- its realized return runs from R's open, right after the fills, to N's open, before the next fills,
  in total-return prices (the open x closeadj / close: dividends count);
- the picks' return is the same move at the picks' target weights; both are returns of the invested
  book (weights normalized to sum to one; the account's cash is not part of either);
- the implementation shortfall of an order is its fill price against R's unadjusted open, in bps,
  positive when it cost (a buy above, a sell below);
- the drift is each held weight against its picks weight (the post-trade check "the portfolio matches
  picks.csv"), with the largest gap judged against a tolerance;
- a position's contribution is its weight times its return; the best and worst five are shown.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from kairos_dagster import calendar as cal
from kairos_dagster.broker import reports
from kairos_dagster.portfolio.outputs import read_picks_csv
from kairos_dagster.warehouse import store

DRIFT_TOLERANCE = 0.01  # a held weight more than 1 percentage point from its picks weight fails the check
FILLED = ("filled", "partially_filled", "partial")

SUMMARY_SCHEMA = {
    "date": pl.Date, "next_date": pl.Date, "status": pl.String, "positions": pl.Int64, "orders_filled": pl.Int64,
    "held_return": pl.Float64, "picks_return": pl.Float64, "universe_ew_return": pl.Float64,
    "market_return": pl.Float64, "backtest_return": pl.Float64, "excess_vs_market": pl.Float64,
    "shortfall_bps": pl.Float64, "max_drift": pl.Float64, "drift_tolerance": pl.Float64, "note": pl.String,
}
POSITION_SCHEMA = {"date": pl.Date, "ticker": pl.String, "units": pl.Float64, "weight_held": pl.Float64,
                   "weight_picks": pl.Float64, "drift": pl.Float64, "return": pl.Float64,
                   "contribution": pl.Float64}
ORDER_SCHEMA = {"date": pl.Date, "ticker": pl.String, "side": pl.String, "filled_qty": pl.Float64,
                "fill_price": pl.Float64, "open_price": pl.Float64, "notional": pl.Float64,
                "shortfall_bps": pl.Float64}


@dataclass(frozen=True)
class RebalancePerformance:
    summary: pl.DataFrame  # one row (SUMMARY_SCHEMA)
    positions: pl.DataFrame  # POSITION_SCHEMA
    orders: pl.DataFrame  # ORDER_SCHEMA


def _row(**values: object) -> pl.DataFrame:
    base = dict.fromkeys(SUMMARY_SCHEMA)
    base.update(values)
    return pl.DataFrame([base], schema=SUMMARY_SCHEMA)


def not_executed(rebalance_date: dt.date, next_date: dt.date | None, note: str) -> RebalancePerformance:
    """A week with nothing to measure: marked, never invented."""
    return RebalancePerformance(_row(date=rebalance_date, next_date=next_date, status="not executed", note=note),
                                pl.DataFrame(schema=POSITION_SCHEMA), pl.DataFrame(schema=ORDER_SCHEMA))


def held_units(fills: pl.DataFrame, prices: pl.DataFrame) -> pl.DataFrame:
    """ticker, units: the split-adjusted shares held after every fill in `fills` (rebalance_date, ticker,
    side, filled_qty), each fill converted with closeunadj / close of its rebalance date (raw shares x raw
    price = adjusted units x adjusted price)."""
    f = fills.filter(pl.col("filled_qty") > 0).join(
        prices.select("ticker", pl.col("date").alias("rebalance_date"),
                      (pl.col("closeunadj") / pl.col("close")).alias("to_adjusted")),
        on=["ticker", "rebalance_date"], how="left")
    missing = f.filter(pl.col("to_adjusted").is_null())
    if missing.height:
        raise ValueError("sep_base has no price for filled order(s) on their fill day: "
                         f"{missing.select('ticker', 'rebalance_date').unique().sort('ticker').rows()[:10]}")
    signed = pl.when(pl.col("side") == "buy").then(pl.col("filled_qty")).otherwise(-pl.col("filled_qty"))
    return (f.group_by("ticker").agg((signed * pl.col("to_adjusted")).sum().alias("units"))
            .filter(pl.col("units").abs() > 1e-9).sort("ticker"))


def measure(rebalance_date: dt.date, next_date: dt.date, *, fills: pl.DataFrame, picks: pl.DataFrame,
            prices: pl.DataFrame, benchmarks: dict[str, float | None],
            drift_tolerance: float = DRIFT_TOLERANCE, notes: tuple[str, ...] = ()) -> RebalancePerformance:
    """The week from `rebalance_date`'s fills to `next_date`'s. `fills`: every filled order through the
    rebalance date (execution_orders rows); `picks`: the week's picks (ticker, weight); `prices`: sep_base
    rows (ticker, date, open, close, closeadj, closeunadj) of every fill day and of `next_date`;
    `benchmarks`: universe_ew, market and backtest returns over the week (None where not stored)."""
    week = fills.filter((pl.col("rebalance_date") == rebalance_date) & pl.col("status").is_in(FILLED)
                        & (pl.col("filled_qty") > 0))
    if not week.height:
        return not_executed(rebalance_date, next_date, "no order of this rebalance was filled at the broker")
    through = fills.filter((pl.col("rebalance_date") <= rebalance_date) & pl.col("status").is_in(FILLED))
    units = held_units(through, prices)
    tr = prices.select("ticker", "date", (pl.col("open") * pl.col("closeadj") / pl.col("close")).alias("tr_open"),
                       (pl.col("open") * pl.col("closeunadj") / pl.col("close")).alias("raw_open"),
                       "open")
    start = tr.filter(pl.col("date") == rebalance_date).drop("date")
    end = tr.filter(pl.col("date") == next_date).select("ticker", pl.col("tr_open").alias("tr_next"))
    book = (units.join(start, on="ticker", how="left").join(end, on="ticker", how="left")
            .with_columns((pl.col("units") * pl.col("open")).alias("value")))
    unpriced = book.filter(pl.col("open").is_null())
    if unpriced.height:
        raise ValueError(f"sep_base has no open on {rebalance_date} for held {unpriced['ticker'].to_list()[:10]}")
    # A name with no price on the next date (delisted in between) leaves at its last traded price: flat.
    book = book.with_columns(pl.when(pl.col("tr_next").is_null()).then(0.0)
                             .otherwise(pl.col("tr_next") / pl.col("tr_open") - 1.0).alias("return"))
    total = float(book["value"].sum())
    invested = float(picks["weight"].cast(pl.Float64).sum())
    if not invested > 0:
        raise ValueError(f"the picks of {rebalance_date} have no positive weight")
    w = (picks.select("ticker", (pl.col("weight").cast(pl.Float64) / invested).alias("weight_picks"))
         .join(start.join(end, on="ticker", how="left"), on="ticker", how="left")
         .with_columns(pl.when(pl.col("tr_next").is_null() | pl.col("tr_open").is_null()).then(0.0)
                       .otherwise(pl.col("tr_next") / pl.col("tr_open") - 1.0).alias("return")))
    picks_return = float((w["weight_picks"] * w["return"]).sum())
    positions = (book.select("ticker", "units", (pl.col("value") / total).alias("weight_held"), "return")
                 .join(w.select("ticker", "weight_picks"), on="ticker", how="full", coalesce=True)
                 .with_columns(pl.col("units").fill_null(0.0), pl.col("weight_held").fill_null(0.0),
                               pl.col("weight_picks").fill_null(0.0))
                 .with_columns((pl.col("weight_held") - pl.col("weight_picks")).alias("drift"),
                               (pl.col("weight_held") * pl.col("return").fill_null(0.0)).alias("contribution"),
                               pl.lit(rebalance_date).alias("date"))
                 .select(list(POSITION_SCHEMA)).sort("ticker"))
    held_return = float(positions["contribution"].sum())
    orders = (week.join(start.select("ticker", "raw_open"), on="ticker", how="left")
              .with_columns(sign=pl.when(pl.col("side") == "buy").then(1.0).otherwise(-1.0))
              .select(pl.lit(rebalance_date).alias("date"), "ticker", "side", "filled_qty",
                      pl.col("filled_avg_price").alias("fill_price"), pl.col("raw_open").alias("open_price"),
                      (pl.col("filled_qty") * pl.col("filled_avg_price")).alias("notional"),
                      (pl.col("sign") * (pl.col("filled_avg_price") / pl.col("raw_open") - 1.0) * 1e4
                       ).alias("shortfall_bps"))
              .sort("ticker"))
    n = orders["notional"].sum()
    shortfall = float((orders["shortfall_bps"] * orders["notional"]).sum() / n) if n else None
    market = benchmarks.get("market")
    max_drift = float(positions["drift"].abs().max() or 0.0)
    summary = _row(date=rebalance_date, next_date=next_date, status="executed", positions=book.height,
                   orders_filled=week.height, held_return=held_return, picks_return=picks_return,
                   universe_ew_return=benchmarks.get("universe_ew"), market_return=market,
                   backtest_return=benchmarks.get("backtest"),
                   excess_vs_market=held_return - market if market is not None and math.isfinite(market) else None,
                   shortfall_bps=shortfall, max_drift=max_drift, drift_tolerance=drift_tolerance,
                   note="; ".join([*notes, *([] if max_drift <= drift_tolerance else [
                       f"held weights drift up to {max_drift:.2%} from the picks (tolerance {drift_tolerance:.2%})"])]))
    return RebalancePerformance(summary, positions, orders)


def track_record(rows: pl.DataFrame) -> pl.DataFrame:
    """`rebalance_performance` rows in date order with the compounded held and market returns since the
    first executed week (weeks not executed carry the running totals unchanged)."""
    out = rows.sort("date")
    growth = (1.0 + pl.col("held_return").fill_null(0.0)).cum_prod() - 1.0
    market = (1.0 + pl.col("market_return").fill_null(0.0)).cum_prod() - 1.0
    return out.with_columns(growth.alias("cumulative"), market.alias("cumulative_market"))


# ------------------------------------------------------------------------------ warehouse reads
def week_benchmarks(con: duckdb.DuckDBPyConnection, rebalance_date: dt.date, next_date: dt.date
                    ) -> dict[str, float | None]:
    """universe_ew, market and the ml backtest over the same week, from the stored backtest's equity at
    the two signal sessions (its marks are closes: the week the picks were held); None where not stored."""
    out: dict[str, float | None] = {"universe_ew": None, "market": None, "backtest": None}
    if not store.table_exists(con, "backtest_daily"):
        return out
    s0, s1 = cal.previous_session(rebalance_date), cal.previous_session(next_date)
    rows = con.execute(
        "SELECT strategy, max(equity) FILTER (WHERE date = ?), max(equity) FILTER (WHERE date = ?) FROM backtest_daily "
        "WHERE config_id = 'default' AND strategy IN ('universe_ew', 'market', 'ml') GROUP BY strategy",
        [s0, s1]).fetchall()
    for strategy, e0, e1 in rows:
        out["backtest" if strategy == "ml" else strategy] = (e1 / e0 - 1.0) if e0 and e1 else None
    return out


def measure_week(con: duckdb.DuckDBPyConnection, rebalance_date: dt.date, picks_file: Path) -> RebalancePerformance:
    """Read what `measure` needs for one rebalance from the warehouse and measure it. The picks are the
    rebalance_picks rows of the date, else `picks_file`. A ValueError names what is missing (the next
    rebalance date's prices not synced yet, a fill day without prices)."""
    nxt = cal.next_rebalance_after(rebalance_date)
    held_next = con.execute("SELECT count(*) FROM sep_base WHERE date = ?", [nxt]).fetchone()[0] \
        if store.table_exists(con, "sep_base") else 0
    if not held_next:
        raise ValueError(f"the week of {rebalance_date} is measured to the next rebalance's open ({nxt}), which "
                         "sep_base does not hold yet: materialize this week after that week's sync")
    if not store.table_exists(con, "execution_orders"):
        return not_executed(rebalance_date, nxt, "nothing was ever executed (no execution_orders)")
    fills = con.execute("SELECT rebalance_date, ticker, side, filled_qty, filled_avg_price, status "
                        "FROM execution_orders WHERE rebalance_date <= ?", [rebalance_date]).pl()
    if rebalance_date not in measurable_dates(con, executed_only=True):
        return not_executed(rebalance_date, nxt, "no order of this rebalance was filled at the broker")
    picks = reports.table_picks(con, rebalance_date)
    if picks is None:
        picks = read_picks_csv(picks_file)
    tickers = sorted(set(fills["ticker"]) | set(picks["ticker"]))
    days = sorted(set(fills["rebalance_date"]) | {rebalance_date, nxt})
    prices = con.execute(
        "SELECT ticker, date, open, close, closeadj, closeunadj FROM sep_base WHERE ticker IN "
        "(SELECT unnest(?)) AND date IN (SELECT unnest(?::DATE[]))", [tickers, days]).pl()
    # A holding that stopped trading before the rebalance date (delisted; its sell could not fill) stays in
    # the book at its last close, flat: the account still holds it.
    priced = set(prices.filter(pl.col("date") == rebalance_date)["ticker"])
    gone = sorted(set(fills.filter(pl.col("filled_qty") > 0)["ticker"]) - priced)
    notes: tuple[str, ...] = ()
    if gone:
        last = con.execute(
            "SELECT ticker, max(date), arg_max(close, date), arg_max(closeadj, date), arg_max(closeunadj, date) "
            "FROM sep_base WHERE ticker IN (SELECT unnest(?)) AND date < ? AND close > 0 GROUP BY ticker",
            [gone, rebalance_date]).fetchall()
        stale = pl.DataFrame([{"ticker": t, "date": rebalance_date, "open": c, "close": c, "closeadj": ca,
                               "closeunadj": cu} for t, _, c, ca, cu in last], schema=prices.schema)
        prices = pl.concat([prices, stale])
        notes = (f"{len(last)} holding(s) without a price on {rebalance_date} (delisted?) valued at their last close, "
                 f"flat: " + ", ".join(f"{t} ({d})" for t, d, *_ in last[:10]),)
    return measure(rebalance_date, nxt, fills=fills, picks=picks, prices=prices,
                   benchmarks=week_benchmarks(con, rebalance_date, nxt), notes=notes)


def measurable_dates(con: duckdb.DuckDBPyConnection, *, executed_only: bool = False) -> list[dt.date]:
    """Executed rebalance dates (an order filled) whose next rebalance date's open is in sep_base and that
    rebalance_performance does not hold as executed yet (with `executed_only`: every executed date)."""
    if not store.table_exists(con, "execution_orders"):
        return []
    executed = [r[0] for r in con.execute(
        "SELECT DISTINCT rebalance_date FROM execution_orders WHERE filled_qty > 0 AND status IN "
        "(SELECT unnest(?)) ORDER BY 1", [list(FILLED)]).fetchall()]
    if executed_only:
        return executed
    measured = set()
    if store.table_exists(con, "rebalance_performance"):
        measured = {r[0] for r in con.execute(
            "SELECT date FROM rebalance_performance WHERE status = 'executed'").fetchall()}
    latest = con.execute("SELECT max(date) FROM sep_base").fetchone()[0] if store.table_exists(con, "sep_base") \
        else None
    return [d for d in executed if d not in measured and latest is not None
            and cal.next_rebalance_after(d) <= latest]
