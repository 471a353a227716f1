"""Pure order planning: client ids, order type policy, target-vs-position orders, skips, risk checks.

Everything here is a function of its arguments (no broker, no clock, no IO) so the engine's
decisions can be unit-tested and shown in a preview exactly as they will be executed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import polars as pl

from kairos_dagster.broker.base import Account, AssetInfo, Position
from kairos_dagster.constants import NEW_YORK as NY

# Alpaca rejects OPG orders sent between 09:28 and 19:00 New York time.
OPG_CUTOFF = dt.time(9, 28)
OPG_REOPEN = dt.time(19, 0)
MAX_CLIENT_ORDER_ID = 128

PLAN_SCHEMA = {
    "ticker": pl.String, "side": pl.String, "qty": pl.Int64, "current_shares": pl.Float64,
    "target_shares": pl.Int64, "price": pl.Float64, "notional": pl.Float64, "reason": pl.String,
}


class ExecutionRefusedError(RuntimeError):
    """The engine refuses to send orders; the message says why and what to do."""


class PlanInputError(ValueError):
    """Picks or positions that cannot be planned from (names the ticker and column)."""


def client_order_id(account_id: str, rebalance_date: dt.date, ticker: str, side: str) -> str:
    """Deterministic id for one (account, rebalance, ticker, side) order.

    The same order always gets the same id, so a retried or re-run submission hits Alpaca's
    uniqueness rule (422) instead of creating a second order. The hash covers the account so two
    accounts never collide; the readable parts help operators find the order in the dashboard.
    """
    side = side.lower()
    if side not in {"buy", "sell"}:
        raise ValueError(f"side must be 'buy' or 'sell', got {side!r}")
    if not ticker:
        raise ValueError("ticker must not be empty")
    digest = hashlib.sha256(f"{account_id}|{rebalance_date.isoformat()}|{ticker}|{side}".encode()).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9.]", "_", ticker)[:40]
    cid = f"kairos-{rebalance_date:%Y%m%d}-{readable}-{side}-{digest}"
    assert len(cid) <= MAX_CLIENT_ORDER_ID
    return cid


@dataclass(frozen=True)
class OrderTiming:
    order_type: str  # always "market"
    time_in_force: str  # "day" | "opg"
    note: str


def order_timing(*, is_live: bool, now: dt.datetime, intraday: bool = False,
                 force_moo: bool = False) -> OrderTiming:
    """Order type policy: paper → DAY market orders, live → OPG (market-on-open).

    `intraday` forces DAY market orders, `force_moo` forces OPG (e.g. to test MOO on paper).
    OPG is refused between 09:28 and 19:00 New York time (Alpaca rejects those orders); after
    19:00 an OPG order queues for the next open.
    """
    if intraday and force_moo:
        raise ExecutionRefusedError("intraday and force_moo are mutually exclusive; choose one")
    if now.tzinfo is None:
        raise ValueError(f"now must be timezone-aware, got naive {now!r}")
    use_opg = force_moo or (is_live and not intraday)
    if not use_opg:
        why = "intraday override" if intraday else "Paper trading detected, using intraday orders"
        return OrderTiming("market", "day", why)
    ny = now.astimezone(NY)
    if OPG_CUTOFF <= ny.time() < OPG_REOPEN:
        raise ExecutionRefusedError(
            f"market-on-open (OPG) orders cannot be sent at {ny:%Y-%m-%d %H:%M} New York time: Alpaca "
            f"rejects OPG orders between 09:28 and 19:00. Send them before 09:28 (or after 19:00 for the "
            f"next open), or pass intraday=True to use DAY market orders.")
    why = "force_moo override" if force_moo and not is_live else "Live trading, using market-on-open orders"
    return OrderTiming("market", "opg", why)


def positions_frame(positions: Iterable[Position]) -> pl.DataFrame:
    """Broker positions as a frame (ticker, qty, current_price)."""
    rows = [(p.symbol, float(p.qty), float(p.current_price)) for p in positions]
    return pl.DataFrame(rows, schema={"ticker": pl.String, "qty": pl.Float64, "current_price": pl.Float64},
                        orient="row")


def _check_targets(targets: pl.DataFrame, need_weight: bool) -> None:
    need = ["ticker", "price"] + (["weight"] if need_weight else ["target_shares"])
    missing = [c for c in need if c not in targets.columns]
    if missing:
        raise PlanInputError(f"picks are missing column(s) {missing}; got {targets.columns}")
    dup = targets.filter(pl.col("ticker").is_duplicated())["ticker"].unique().sort().to_list()
    if dup:
        raise PlanInputError(f"picks list ticker(s) more than once: {dup}")
    checks = {
        "ticker": pl.col("ticker").is_null() | (pl.col("ticker").cast(pl.String).str.strip_chars() == ""),
        "price": pl.col("price").is_null() | ~(pl.col("price").cast(pl.Float64) > 0)
        | ~pl.col("price").cast(pl.Float64).is_finite(),
    }
    if need_weight:
        checks["weight"] = pl.col("weight").is_null() | (pl.col("weight").cast(pl.Float64) < 0)
    else:
        ts = pl.col("target_shares").cast(pl.Float64)
        checks["target_shares"] = ts.is_null() | (ts < 0) | (ts != ts.floor())
    for col, bad in checks.items():
        bad_rows = targets.filter(bad)
        if bad_rows.height:
            raise PlanInputError(f"picks column {col!r} is invalid (missing, negative, non-finite or "
                                 f"fractional shares) for ticker(s) {bad_rows['ticker'].to_list()[:20]}")


def plan_orders(targets: pl.DataFrame, positions: pl.DataFrame, *,
                portfolio_value_override: float | None = None) -> pl.DataFrame:
    """Orders that move `positions` to `targets`: SELLs first, then BUYs, each by ticker.

    targets: ticker, target_shares (or `shares`, as in picks.csv), price (the picks price), optionally weight. With
    `portfolio_value_override` the target shares are recomputed as floor(weight * value / price).
    positions: ticker, qty, current_price (from `positions_frame`). Held tickers absent from the
    picks are sold out (priced at their current price). Quantities are whole shares; a fractional
    holding is traded down to its whole part. Returns PLAN_SCHEMA columns with a reason per row.
    """
    if "target_shares" not in targets.columns and "shares" in targets.columns:
        targets = targets.rename({"shares": "target_shares"})  # picks.csv of kairos_dagster.portfolio
    _check_targets(targets, need_weight=portfolio_value_override is not None)
    if portfolio_value_override is not None:
        if not (portfolio_value_override > 0 and math.isfinite(portfolio_value_override)):
            raise PlanInputError(f"portfolio_value_override must be positive, got {portfolio_value_override}")
        targets = targets.with_columns(
            target_shares=(pl.col("weight").cast(pl.Float64) * portfolio_value_override
                           / pl.col("price").cast(pl.Float64)).floor())
    for col in ("ticker", "qty"):
        if col not in positions.columns:
            raise PlanInputError(f"positions are missing column {col!r}; got {positions.columns}")
    if "current_price" not in positions.columns:
        positions = positions.with_columns(current_price=pl.lit(None, pl.Float64))
    t = targets.select(pl.col("ticker").cast(pl.String), pl.col("target_shares").cast(pl.Float64),
                       pl.col("price").cast(pl.Float64))
    p = positions.select(pl.col("ticker").cast(pl.String), pl.col("qty").cast(pl.Float64).alias("current_shares"),
                         pl.col("current_price").cast(pl.Float64))
    held_only = p.join(t, on="ticker", how="anti").filter(pl.col("current_price").is_null())
    if held_only.height:
        raise PlanInputError(f"positions not in the picks have no current_price to size the exit: "
                             f"{held_only['ticker'].to_list()[:20]}")
    m = t.join(p, on="ticker", how="full", coalesce=True).with_columns(
        pl.col("target_shares").fill_null(0.0), pl.col("current_shares").fill_null(0.0),
        pl.coalesce("price", "current_price").alias("price"))
    # Whole shares: trade the whole part of the difference (truncate toward zero).
    m = m.with_columns(delta=(pl.col("target_shares") - pl.col("current_shares")))
    m = m.with_columns(delta=pl.when(pl.col("delta") >= 0).then(pl.col("delta").floor())
                       .otherwise(pl.col("delta").ceil()))
    reason = (pl.when(pl.col("current_shares") == 0).then(pl.lit("new_position"))
              .when(pl.col("target_shares") == 0).then(pl.lit("exit_position"))
              .when(pl.col("delta") > 0).then(pl.lit("increase_weight"))
              .otherwise(pl.lit("decrease_weight")))
    out = m.filter(pl.col("delta") != 0)
    out = out.with_columns(side=pl.when(pl.col("delta") > 0).then(pl.lit("buy")).otherwise(pl.lit("sell")),
                           qty=pl.col("delta").abs().cast(pl.Int64), reason=reason)
    return (out.with_columns(notional=pl.col("qty") * pl.col("price"),
                             target_shares=pl.col("target_shares").cast(pl.Int64))
            .sort([pl.col("side") != "sell", "ticker"])
            .select([pl.col(c).cast(dtp) for c, dtp in PLAN_SCHEMA.items()]))


def apply_skips(plan: pl.DataFrame, *, assets: Mapping[str, AssetInfo | None],
                latest_prices: Mapping[str, float], max_gap: float | None) -> pl.DataFrame:
    """Add latest_price, gap and skip_reason (null = will be sent) to a plan.

    Non-tradable or unknown assets are skipped; with `max_gap` (a fraction, 0.05 = 5%) an order
    whose latest price moved more than that from the picks price is skipped, and so is one with no
    latest price to check against (never sent blind).
    """
    if max_gap is not None and not (0 < max_gap < 1):
        raise ValueError(f"max_gap is a fraction between 0 and 1 (0.05 = 5%), got {max_gap}")
    tickers = plan["ticker"].to_list()
    info = pl.DataFrame({
        "ticker": tickers,
        "known": [assets.get(t) is not None for t in tickers],
        "tradable": [bool(a.tradable and a.status == "active") if (a := assets.get(t)) else False
                     for t in tickers],
        "inactive": [bool(a.status != "active") if (a := assets.get(t)) else False for t in tickers],
        "latest_price": [latest_prices.get(t) for t in tickers],
    }, schema={"ticker": pl.String, "known": pl.Boolean, "tradable": pl.Boolean, "inactive": pl.Boolean,
               "latest_price": pl.Float64})
    out = plan.join(info, on="ticker", how="left", maintain_order="left")
    gap = (pl.col("latest_price") / pl.col("price") - 1.0)
    skip = (pl.when(~pl.col("known")).then(pl.lit("unknown_asset: broker does not list this symbol"))
            .when(pl.col("inactive")).then(pl.lit(
                "delisted: the asset is inactive at the broker (delisted or suspended); left out of the orders, "
                "a holding stays until the broker settles it"))
            .when(~pl.col("tradable")).then(pl.lit("not_tradable: asset is not tradable/active at the broker")))
    if max_gap is not None:
        skip = (skip.when(pl.col("latest_price").is_null())
                .then(pl.lit(f"no_latest_price: cannot check max_gap {max_gap:.1%}"))
                .when(gap.abs() > max_gap)
                .then(pl.format("max_gap: latest {} vs picks {} moved {}% > {}%", pl.col("latest_price").round(4),
                                pl.col("price").round(4), (gap * 100).round(2), pl.lit(round(max_gap * 100, 2)))))
    return out.with_columns(gap=gap, skip_reason=skip.otherwise(pl.lit(None, pl.String))).drop(
        "known", "tradable", "inactive")


@dataclass(frozen=True)
class RiskLimits:
    max_order_pct: float = 0.05  # one order's notional / equity
    max_turnover: float = 0.50  # one-sided turnover / equity without a `turnover` override record


def turnover(plan: pl.DataFrame, equity: float) -> float:
    """One-sided turnover: (buys + sells) / 2 / equity, over orders that will be sent."""
    if equity <= 0:
        return math.inf
    return float(plan["notional"].sum()) / 2.0 / equity


def risk_checks(plan: pl.DataFrame, account: Account, *, failed_gates: Sequence[str] = (),
                turnover_overridden_by: str | None = None, limits: RiskLimits = RiskLimits(),
                portfolio_value_override: float | None = None) -> pl.DataFrame:
    """Pre-trade checks over the orders that will be sent (skipped rows excluded). All block.

    Buying power credits the proceeds of the planned sells, which are submitted first; Alpaca
    checks buying power per order at submission, so a buy it still refuses is reported as a
    rejection by verify(). Equity is the portfolio value override when one is given.
    Returns check, passed, blocking, detail.
    """
    live = plan.filter(pl.col("skip_reason").is_null()) if "skip_reason" in plan.columns else plan
    equity = float(portfolio_value_override if portfolio_value_override is not None else account.equity)
    buys = float(live.filter(pl.col("side") == "buy")["notional"].sum())
    sells = float(live.filter(pl.col("side") == "sell")["notional"].sum())
    cap = limits.max_order_pct * equity
    big = live.filter(pl.col("notional") > cap)
    to = turnover(live, equity)
    rows = [
        ("account_status", account.status.upper() == "ACTIVE" and not account.account_blocked
         and not account.trading_blocked,
         f"status={account.status} account_blocked={account.account_blocked} "
         f"trading_blocked={account.trading_blocked}"),
        ("rebalance_gates", not failed_gates,
         "all blocking gates passed" if not failed_gates else f"failed blocking gates: {sorted(failed_gates)}"),
        ("max_order_notional", big.height == 0,
         f"largest order {float(live['notional'].max() or 0):,.2f} vs limit {cap:,.2f} "
         f"({limits.max_order_pct:.1%} of equity {equity:,.2f})"
         + (f"; over limit: {big['ticker'].to_list()[:20]}" if big.height else "")),
        ("buying_power", buys <= account.buying_power + sells,
         f"buys {buys:,.2f} vs buying power {account.buying_power:,.2f} + planned sells {sells:,.2f}"),
        ("turnover", to <= limits.max_turnover or bool(turnover_overridden_by),
         f"turnover {to:.1%} vs limit {limits.max_turnover:.0%}"
         + ("" if to <= limits.max_turnover else
            (f" (overridden by {turnover_overridden_by})" if turnover_overridden_by else
             "; record `kairos override --gate turnover` with a note to trade it"))),
    ]
    return pl.DataFrame(
        [(n, bool(ok), True, d) for n, ok, d in rows], orient="row",
        schema={"check": pl.String, "passed": pl.Boolean, "blocking": pl.Boolean, "detail": pl.String})


def order_outcome() -> pl.Expr:
    """What became of an order row (status, qty, filled_qty): skipped (never sent), rejected / submit_error,
    filled, partial, unfilled (expired or canceled with nothing filled) or open."""
    filled = pl.col("filled_qty").fill_null(0.0)
    return (pl.when(pl.col("status") == "skipped").then(pl.lit("skipped"))
            .when(pl.col("status").is_in(["rejected", "submit_error"])).then(pl.col("status"))
            .when(filled >= pl.col("qty")).then(pl.lit("filled"))
            .when((filled > 0) & (filled < pl.col("qty"))).then(pl.lit("partial"))
            .when(pl.col("status").is_in(["expired", "canceled", "done_for_day"])).then(pl.lit("unfilled"))
            .otherwise(pl.lit("open")))


def blocking_failures(checks: pl.DataFrame) -> list[str]:
    failed = checks.filter(pl.col("blocking") & ~pl.col("passed"))
    return [f"{c}: {d}" for c, d in zip(failed["check"], failed["detail"], strict=True)]
