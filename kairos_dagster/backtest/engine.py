"""The weekly strategy replayed over history (no dagster): targets from the live portfolio code, fills at
the rebalance date's open with costs, daily drift with total returns in between.

Timing, as live: each week's target comes from its signal session (the one before the rebalance date),
given the backtest's own holdings at that session's close as the prior; orders fill at the rebalance
date's open; positions then drift with daily total returns (SEP's `closeadj`, so splits and dividends are
in the returns) until the next rebalance. The book holds *units* of `closeadj`: a split changes neither
units nor value. A name without a price on a rebalance date (delisted, halted) leaves at its last
traded price. Cash earns `cash_rate` (annual, per session). Weights, not integer shares, are replayed.

The only loop is over weeks: each week's prior is the book the week before left. Within a week every
step is one vectorized polars expression over all held tickers and sessions.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import polars as pl

from kairos_dagster.backtest.costs import TRADING_DAYS, CostModel, fill_and_cost
from kairos_dagster.portfolio.rebalance_weeks import HOLDINGS_SCHEMA, WeekPlan

PRICE_COLUMNS = ("ticker", "date", "open", "close", "closeadj")
DAILY_SCHEMA = {"date": pl.Date, "equity": pl.Float64, "ret_gross": pl.Float64, "ret_net": pl.Float64,
                "cost": pl.Float64, "turnover": pl.Float64, "gross_exposure": pl.Float64, "n_positions": pl.Int64}
TRADES_SCHEMA = {"date": pl.Date, "ticker": pl.String, "side": pl.String, "order_value": pl.Float64,
                 "filled_value": pl.Float64, "unfilled_value": pl.Float64, "price": pl.Float64,
                 "commission": pl.Float64, "spread_cost": pl.Float64, "impact_cost": pl.Float64,
                 "cost": pl.Float64, "reason": pl.String}
POSITIONS_SCHEMA = {"date": pl.Date, "ticker": pl.String, "weight": pl.Float64, "units": pl.Float64}
DUST = 1e-9  # $ below which a position is closed (float residue of a full sale)

# (plan, prior holdings at the signal close) -> target weights (ticker, weight), or None to hold this week.
TargetFn = Callable[[WeekPlan, pl.DataFrame], "pl.DataFrame | None"]


class BacktestInputError(ValueError):
    """Prices or liquidity the backtest cannot use (named in the message)."""


@dataclass(frozen=True)
class Book:
    """The portfolio after a session's close: cash, and units of closeadj with their last mark."""

    date: dt.date | None
    cash: float
    units: pl.DataFrame  # ticker, units, mark

    @staticmethod
    def start(value: float) -> Book:
        if not (math.isfinite(value) and value > 0):
            raise BacktestInputError(f"portfolio value must be a finite number > 0, got {value!r}")
        return Book(None, float(value), pl.DataFrame(schema={"ticker": pl.String, "units": pl.Float64, "mark": pl.Float64}))

    @property
    def positions_value(self) -> float:
        return float((self.units["units"] * self.units["mark"]).sum()) if self.units.height else 0.0

    @property
    def equity(self) -> float:
        return self.cash + self.positions_value

    def holdings(self) -> pl.DataFrame:
        """The book as a portfolio prior (HOLDINGS_SCHEMA): weights of equity. Costs can leave cash a hair
        below zero; the weights are then scaled to sum to 1 (the prior must be a long-only book)."""
        if self.units.height == 0 or self.equity <= 0:
            return pl.DataFrame(schema=HOLDINGS_SCHEMA)
        h = self.units.select("ticker", (pl.col("units") * pl.col("mark") / self.equity).alias("weight"))
        total = float(h["weight"].sum())
        if total > 1.0:
            h = h.with_columns(pl.col("weight") / total)
        return h.with_columns(pl.lit(None, pl.String).alias("sector"), pl.lit(0, pl.Int64).alias("shares"),
                              pl.lit(None, pl.Float64).alias("price")).select(list(HOLDINGS_SCHEMA)).cast(HOLDINGS_SCHEMA)


@dataclass
class BacktestResult:
    daily: pl.DataFrame  # DAILY_SCHEMA, one row per session
    trades: pl.DataFrame  # TRADES_SCHEMA, one row per order of each rebalance (exits of unpriced names too)
    positions: pl.DataFrame  # POSITIONS_SCHEMA, the book after each rebalance's fills
    book: Book  # the book after the last session: a later replay continues from it
    weekly_books: list[Book]  # the book after each week's last session (the chain a later week continues)


def price_panel(sep: pl.DataFrame) -> pl.DataFrame:
    """ticker, date, open_adj, mark, raw_price from sep_base rows (sorted by date, ticker): the open in closeadj units (open x
    closeadj / close: SEP's open and close share the split adjustment, closeadj adds dividends), the
    close, and the exchange's price for per-share commissions (closeunadj when present)."""
    missing = [c for c in PRICE_COLUMNS if c not in sep.columns]
    if missing:
        raise BacktestInputError(f"sep_base rows lack column(s) {', '.join(missing)}")
    bad = sep.filter(~(pl.col("open").is_finite() & pl.col("close").is_finite() & pl.col("closeadj").is_finite())
                     | (pl.col("open") <= 0) | (pl.col("close") <= 0) | (pl.col("closeadj") <= 0))
    if bad.height:
        r = bad.row(0, named=True)
        raise BacktestInputError(f"{bad.height} sep_base row(s) with a non-positive or non-finite price, e.g. "
                                 f"{r['ticker']} {r['date']}: open {r['open']}, close {r['close']}, closeadj {r['closeadj']}")
    dup = sep.height - sep.select("ticker", "date").unique().height
    if dup:
        raise BacktestInputError(f"sep_base rows repeat {dup} (ticker, date) key(s)")
    raw = pl.col("closeunadj") if "closeunadj" in sep.columns else pl.col("close")
    return sep.select(
        pl.col("ticker").cast(pl.String), pl.col("date"),
        (pl.col("open") * pl.col("closeadj") / pl.col("close")).cast(pl.Float64).alias("open_adj"),
        pl.col("closeadj").cast(pl.Float64).alias("mark"), raw.cast(pl.Float64).alias("raw_price"),
    ).sort("date", "ticker")


def rows_between(by_date: pl.DataFrame, dates: pl.Series, lo: dt.date, hi: dt.date) -> pl.DataFrame:
    """The rows dated [lo, hi] (inclusive) of a frame sorted by date (`dates` its date column): a binary
    search and a zero-copy slice, not a scan. Every weekly lookup of the backtest goes through here."""
    a, b = int(dates.search_sorted(lo, side="left")), int(dates.search_sorted(hi, side="right"))
    return by_date.slice(a, b - a)


def _liquidity_at(liquidity: pl.DataFrame, signal_date: dt.date) -> tuple[pl.DataFrame, float, float]:
    """ticker, adv, daily_vol at the signal date (`liquidity` sorted by date), and the cross-section's
    medians (for names it lacks)."""
    rows = rows_between(liquidity, liquidity.get_column("date"), signal_date, signal_date).select(
        "ticker", "adv", "daily_vol")
    adv, vol = rows["adv"].median() if rows.height else None, rows["daily_vol"].median() if rows.height else None
    # No liquidity known at all (the first weeks of a history): no cap and no impact, the spread still paid.
    return rows, math.inf if adv is None else float(adv), 0.0 if vol is None else float(vol)


def _rebalance(book: Book, day: pl.DataFrame, target: pl.DataFrame | None, plan: WeekPlan, liquidity: pl.DataFrame,
               costs: CostModel) -> tuple[float, pl.DataFrame, pl.DataFrame, float, float, float]:
    """Trade at the open of `plan.rebalance_date`: (cash, units, trade rows, cost, turnover, equity at the open)."""
    d = plan.rebalance_date
    held = book.units.join(day.select("ticker", "open_adj", "raw_price"), on="ticker", how="left")
    # A held name without a price today leaves at its last traded price.
    gone = held.filter(pl.col("open_adj").is_null())
    cash = book.cash + float((gone["units"] * gone["mark"]).sum())
    exits = gone.select(pl.lit(d).alias("date"), "ticker", pl.lit("sell").alias("side"),
                        (-pl.col("units") * pl.col("mark")).alias("order_value"),
                        (-pl.col("units") * pl.col("mark")).alias("filled_value"), pl.lit(0.0).alias("unfilled_value"),
                        pl.col("mark").alias("price"), pl.lit(0.0).alias("commission"), pl.lit(0.0).alias("spread_cost"),
                        pl.lit(0.0).alias("impact_cost"), pl.lit(0.0).alias("cost"),
                        pl.lit("no price on the rebalance date: left at its last traded price").alias("reason"))
    held = held.filter(pl.col("open_adj").is_not_null()).select("ticker", "units")
    open_value = held.join(day, on="ticker").select((pl.col("units") * pl.col("open_adj")).sum()).item() or 0.0
    equity_open = cash + float(open_value)
    if target is None:
        return cash, held, exits.cast(TRADES_SCHEMA), 0.0, 0.0, equity_open
    book_units = held.join(target.select("ticker", pl.col("weight").cast(pl.Float64)), on="ticker", how="full",
                           coalesce=True).with_columns(pl.col("units").fill_null(0.0), pl.col("weight").fill_null(0.0))
    priced = book_units.join(day.select("ticker", "open_adj", "raw_price"), on="ticker", how="left")
    unpriced = priced.filter(pl.col("open_adj").is_null() & (pl.col("weight") > 0))
    liq, adv_med, vol_med = _liquidity_at(liquidity, plan.signal_date)
    orders = (priced.filter(pl.col("open_adj").is_not_null())
              .with_columns(((pl.col("weight") * equity_open / pl.col("open_adj") - pl.col("units"))
                             * pl.col("open_adj")).alias("order_value"))
              .join(liq, on="ticker", how="left")
              .with_columns((pl.col("adv").is_null() | pl.col("daily_vol").is_null()).alias("_assumed"))
              .with_columns(pl.col("adv").fill_null(adv_med), pl.col("daily_vol").fill_null(vol_med),
                            pl.col("open_adj").alias("price")))
    orders = fill_and_cost(orders.filter(pl.col("order_value").abs() > DUST), costs)
    filled = orders.select("ticker", (pl.col("filled_value") / pl.col("open_adj")).alias("delta"))
    units = (held.join(filled, on="ticker", how="full", coalesce=True)
             .select("ticker", (pl.col("units").fill_null(0.0) + pl.col("delta").fill_null(0.0)).alias("units"))
             .join(day.select("ticker", "open_adj"), on="ticker", how="left")
             .filter((pl.col("units") * pl.col("open_adj")).abs() > DUST).select("ticker", "units"))
    cost = float(orders["cost"].sum()) if orders.height else 0.0
    cash -= float(orders["filled_value"].sum()) + cost if orders.height else 0.0
    turnover = float(orders["filled_value"].abs().sum()) / 2.0 / equity_open if equity_open > 0 else 0.0
    rows = orders.select(
        pl.lit(d).alias("date"), "ticker",
        pl.when(pl.col("order_value") > 0).then(pl.lit("buy")).otherwise(pl.lit("sell")).alias("side"),
        "order_value", "filled_value", "unfilled_value", "price", "commission", "spread_cost", "impact_cost", "cost",
        pl.when(pl.col("unfilled_value").abs() > DUST).then(pl.lit("participation cap: remainder not filled, not carried"))
        # Costs priced on assumed liquidity are said so, never silently.
        .when(pl.col("_assumed")).then(pl.lit("no ADV or vol at the signal date: the cross-section's median used "
                                              "(none known: no cap, no impact)"))
        .otherwise(pl.lit(None, pl.String)).alias("reason"))
    skipped = unpriced.select(
        pl.lit(d).alias("date"), "ticker", pl.lit("buy").alias("side"), (pl.col("weight") * equity_open).alias("order_value"),
        pl.lit(0.0).alias("filled_value"), (pl.col("weight") * equity_open).alias("unfilled_value"),
        pl.lit(None, pl.Float64).alias("price"), *[pl.lit(0.0).alias(c) for c in ("commission", "spread_cost",
                                                                                  "impact_cost", "cost")],
        pl.lit("no price on the rebalance date: not bought").alias("reason"))
    trades = pl.concat([exits.cast(TRADES_SCHEMA), rows.cast(TRADES_SCHEMA), skipped.cast(TRADES_SCHEMA)])
    return cash, units, trades, cost, turnover, equity_open


def _drift(units: pl.DataFrame, prices: pl.DataFrame, sessions: Sequence[dt.date], last_marks: pl.DataFrame
           ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(date, value, n_positions) of the fixed `units` over `sessions`, and each name's mark at the last
    session (ticker, mark): a name without a row keeps its last mark."""
    days = pl.DataFrame({"date": list(sessions)}, schema={"date": pl.Date})
    if units.height == 0:
        return (days.with_columns(pl.lit(0.0).alias("value"), pl.lit(0, pl.Int64).alias("n_positions")),
                pl.DataFrame(schema={"ticker": pl.String, "mark": pl.Float64}))
    grid = (units.join(days, how="cross")
            .join(prices.select("ticker", "date", "mark"), on=["ticker", "date"], how="left")
            .join(last_marks.select("ticker", pl.col("mark").alias("seed")), on="ticker", how="left")
            .sort("ticker", "date")
            .with_columns(pl.col("mark").forward_fill().over("ticker"))
            .with_columns(pl.col("mark").fill_null(pl.col("seed"))))
    values = (grid.group_by("date").agg((pl.col("units") * pl.col("mark")).sum().alias("value"),
                                        (pl.col("units") * pl.col("mark") > DUST).sum().cast(pl.Int64).alias("n_positions"))
              .sort("date"))
    return values, grid.filter(pl.col("date") == sessions[-1]).select("ticker", "mark")


def rebase(book: Book, prices: pl.DataFrame) -> Book:
    """The book in the closeadj units of `prices`: the feed rescales a ticker's whole closeadj history on
    every later split and dividend, so units stored with an earlier week's marks are re-expressed with
    the marks `prices` hold for the book's own session (the value each holds is unchanged). A ticker with
    no row on that session, or the same mark, keeps its units as they are."""
    if book.date is None or not book.units.height:
        return book
    now = prices.filter(pl.col("date") == book.date).select("ticker", pl.col("mark").alias("_now"))
    units = book.units.join(now, on="ticker", how="left", maintain_order="left").with_columns(
        pl.when(pl.col("_now").is_not_null() & (pl.col("_now") != pl.col("mark")))
        .then(pl.col("units") * pl.col("mark") / pl.col("_now")).otherwise(pl.col("units")).alias("units"),
        pl.coalesce("_now", "mark").alias("mark"))
    return Book(book.date, book.cash, units.select("ticker", "units", "mark"))


def replay(plans: Sequence[WeekPlan], sep: pl.DataFrame | None, target_fn: TargetFn, *, liquidity: pl.DataFrame,
           end: dt.date, costs: CostModel | None = None, book: Book | None = None, portfolio_value: float = 100_000.0,
           cash_rate: float = 0.0, panel: pl.DataFrame | None = None) -> BacktestResult:
    """Replay `plans` (weekly rebalances, in any order) from `book` (default: `portfolio_value` in cash)
    through the session `end`.

    `sep`: sep_base rows (ticker, date, open, close, closeadj[, closeunadj]) covering the sessions from the
    first rebalance date to `end`, and the book's last session. `liquidity`: ticker, date, adv (20-day
    dollar ADV), daily_vol (daily return volatility) at the signal dates, for the costs. The sessions are
    the dates `sep` holds. Continuing from a result's `book` gives the same rows as one longer replay.
    `panel`: `price_panel(sep)` instead of `sep`, when several strategies replay the same prices."""
    if not (math.isfinite(cash_rate) and cash_rate > -1):
        raise BacktestInputError(f"cash_rate must be a finite annual rate > -100%, got {cash_rate!r}")
    for c in ("ticker", "date", "adv", "daily_vol"):
        if c not in liquidity.columns:
            raise BacktestInputError(f"liquidity rows lack column {c!r}")
    costs = costs or CostModel()
    book = book or Book.start(portfolio_value)
    if (sep is None) == (panel is None):
        raise BacktestInputError("replay needs exactly one of sep rows or their price panel")
    prices = price_panel(sep) if panel is None else panel
    prices_by_date = prices  # price_panel sorts by date, then ticker
    price_dates = prices_by_date.get_column("date")
    if not liquidity.get_column("date").is_sorted():  # each rebalance reads its signal date's rows by search
        liquidity = liquidity.sort("date")
    plans = sorted(plans, key=lambda p: p.rebalance_date)
    if book.date is not None:
        plans = [p for p in plans if p.rebalance_date > book.date]
    plans = [p for p in plans if p.rebalance_date <= end]
    sessions = sorted(d for d in prices["date"].unique().to_list() if (book.date is None or d > book.date) and d <= end)
    if plans:
        sessions = [d for d in sessions if d >= plans[0].rebalance_date or book.date is not None]
    daily, trades, positions, books = [], [], [], []
    growth = (1.0 + cash_rate) ** (1.0 / TRADING_DAYS)
    # Segments of sessions with fixed units: a new one starts at each rebalance date and each trading week,
    # so the book is kept at every week's last session whatever span is replayed.
    by_date = {p.rebalance_date: p for p in plans}
    segments: list[tuple[WeekPlan | None, list[dt.date]]] = []
    for d in sessions:
        monday = d - dt.timedelta(days=d.weekday())
        if not segments or d in by_date or monday != segments[-1][1][-1] - dt.timedelta(
                days=segments[-1][1][-1].weekday()):
            segments.append((by_date.get(d), [d]))
        else:
            segments[-1][1].append(d)
    book = rebase(book, prices)
    prev_equity = book.equity
    cash, units, marks = book.cash, book.units.select("ticker", "units"), book.units.select("ticker", "mark")
    for k, (plan, days) in enumerate(segments):
        cost_today, turnover_today = 0.0, 0.0
        window = rows_between(prices_by_date, price_dates, days[0], days[-1])
        if plan is not None and days[0] == plan.rebalance_date:
            prior = Book(book.date, cash, units.join(marks, on="ticker", how="left")).holdings()
            target = target_fn(plan, prior)
            today = rows_between(window, window.get_column("date"), plan.rebalance_date, plan.rebalance_date)
            cash, units, week_trades, cost_today, turnover_today, eq_open = _rebalance(
                Book(None, cash, units.join(marks, on="ticker", how="left")), today, target, plan, liquidity, costs)
            trades.append(week_trades)
            pos = units.join(today.select("ticker", "open_adj"), on="ticker")
            positions.append(pos.select(pl.lit(plan.rebalance_date).alias("date"), "ticker",
                                        (pl.col("units") * pl.col("open_adj") / eq_open).alias("weight"), "units")
                             .cast(POSITIONS_SCHEMA))
        values, marks = _drift(units, window, days, marks)
        cash_path = [cash * growth ** (k + 1) for k in range(len(days))]
        seg = values.with_columns(pl.Series("cash", cash_path)).with_columns(
            (pl.col("cash") + pl.col("value")).alias("equity"))
        equity = seg["equity"].to_list()
        before = [prev_equity, *equity[:-1]]
        costs_col = [cost_today] + [0.0] * (len(days) - 1)
        seg = seg.with_columns(
            pl.Series("ret_net", [e / b - 1.0 for e, b in zip(equity, before, strict=True)]),
            pl.Series("ret_gross", [(e + c) / b - 1.0 for e, c, b in zip(equity, costs_col, before, strict=True)]),
            pl.Series("cost", costs_col), pl.Series("turnover", [turnover_today] + [0.0] * (len(days) - 1)),
            (pl.col("value") / pl.col("equity")).alias("gross_exposure"))
        daily.append(seg.select(list(DAILY_SCHEMA)).cast(DAILY_SCHEMA))
        prev_equity, cash = equity[-1], cash_path[-1]
        book = Book(days[-1], cash, units.join(marks, on="ticker", how="left").select("ticker", "units", "mark"))
        if (len(segments) == k + 1 or segments[k + 1][1][0] - dt.timedelta(days=segments[k + 1][1][0].weekday())
                != days[-1] - dt.timedelta(days=days[-1].weekday())):
            books.append(book)  # the week's last session
    final = Book(book.date, cash, units.join(marks, on="ticker", how="left").select("ticker", "units", "mark"))
    return BacktestResult(
        pl.concat(daily) if daily else pl.DataFrame(schema=DAILY_SCHEMA),
        pl.concat(trades) if trades else pl.DataFrame(schema=TRADES_SCHEMA),
        pl.concat(positions) if positions else pl.DataFrame(schema=POSITIONS_SCHEMA),
        final, books,
    )
