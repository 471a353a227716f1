"""Trades that move current holdings to the picks: share deltas, values and reasons.

Columns follow seed 001 §8.4 plus the reason of seed 000 §4.4. SELLs come first (they fund the BUYs),
each side ordered by ticker, so the same inputs always give the same file.
"""

from __future__ import annotations

import polars as pl

TRADES_COLUMNS = ("ticker", "action", "shares", "trade_value", "target_value", "current_value", "price", "reason")
TRADES_SCHEMA = {"ticker": pl.String, "action": pl.String, "shares": pl.Int64, "trade_value": pl.Float64,
                 "target_value": pl.Float64, "current_value": pl.Float64, "price": pl.Float64, "reason": pl.String}
REASONS = ("new_position", "increase_weight", "decrease_weight", "exit_position")


class TradePlanError(ValueError):
    """Holdings, picks or prices that trades cannot be planned from."""


def plan_trades(picks: pl.DataFrame, current_holdings: pl.DataFrame | None,
                prices: pl.DataFrame | None = None) -> pl.DataFrame:
    """Orders from current shares to the picks' target shares.

    picks: ticker, shares (target), price. current_holdings: ticker, shares[, price] (None/empty = cash).
    prices: ticker, price, the latest price to value trades at; falls back to the picks' price, then the
    holding's price. A name that needs a trade and has no positive price raises, naming the ticker.
    trade_value = |delta shares| x price; target_value and current_value are shares x the same price.
    """
    tgt = _shares_frame(picks, "picks").select("ticker", pl.col("shares").alias("target_shares"),
                                                _price_col(picks).alias("price_picks"))
    cur = (_shares_frame(current_holdings, "current holdings") if current_holdings is not None and current_holdings.height
           else pl.DataFrame(schema={"ticker": pl.String, "shares": pl.Int64}))
    cur = cur.select("ticker", pl.col("shares").alias("current_shares"),
                     _price_col(cur).alias("price_holding"))
    px = pl.DataFrame(schema={"ticker": pl.String, "price_latest": pl.Float64})
    if prices is not None and prices.height:
        missing = [c for c in ("ticker", "price") if c not in prices.columns]
        if missing:
            raise TradePlanError(f"prices lack column(s) {', '.join(missing)}")
        dup = prices.group_by("ticker").len().filter(pl.col("len") > 1).get_column("ticker").sort()
        if dup.len():
            raise TradePlanError(f"prices have duplicate tickers: {dup.head(10).to_list()}")
        px = prices.select(pl.col("ticker").cast(pl.String), pl.col("price").cast(pl.Float64).alias("price_latest"))

    def positive(c: str) -> pl.Expr:
        return pl.when(pl.col(c).is_finite() & (pl.col(c) > 0)).then(pl.col(c))

    book = (
        tgt.join(cur, on="ticker", how="full", coalesce=True)
        .join(px, on="ticker", how="left")
        .with_columns(pl.col("target_shares").fill_null(0), pl.col("current_shares").fill_null(0))
        .with_columns((pl.col("target_shares") - pl.col("current_shares")).alias("delta"),
                      pl.coalesce(positive("price_latest"), positive("price_picks"), positive("price_holding")).alias("price"))
        .filter(pl.col("delta") != 0)
    )
    unpriced = book.filter(pl.col("price").is_null()).get_column("ticker").sort()
    if unpriced.len():
        raise TradePlanError(f"no positive price to trade {unpriced.head(10).to_list()}")
    action = pl.when(pl.col("delta") > 0).then(pl.lit("BUY")).otherwise(pl.lit("SELL"))
    reason = (pl.when(pl.col("current_shares") == 0).then(pl.lit("new_position"))
              .when(pl.col("target_shares") == 0).then(pl.lit("exit_position"))
              .when(pl.col("delta") > 0).then(pl.lit("increase_weight"))
              .otherwise(pl.lit("decrease_weight")))
    return (
        book.with_columns(action.alias("action"), reason.alias("reason"),
                          pl.col("delta").abs().alias("shares"),
                          (pl.col("delta").abs() * pl.col("price")).alias("trade_value"),
                          (pl.col("target_shares") * pl.col("price")).alias("target_value"),
                          (pl.col("current_shares") * pl.col("price")).alias("current_value"))
        .sort([pl.col("action") == "BUY", pl.col("ticker")])
        .select(TRADES_COLUMNS)
        .cast(TRADES_SCHEMA)
    )


def _price_col(frame: pl.DataFrame) -> pl.Expr:
    return pl.col("price").cast(pl.Float64) if "price" in frame.columns else pl.lit(None, pl.Float64)


def _shares_frame(frame: pl.DataFrame, what: str) -> pl.DataFrame:
    missing = [c for c in ("ticker", "shares") if c not in frame.columns]
    if missing:
        raise TradePlanError(f"{what} lack column(s) {', '.join(missing)}")
    if frame.get_column("ticker").null_count():
        raise TradePlanError(f"{what} have a null ticker")
    dup = frame.group_by("ticker").len().filter(pl.col("len") > 1).get_column("ticker").sort()
    if dup.len():
        raise TradePlanError(f"{what} have duplicate tickers: {dup.head(10).to_list()}")
    sh = frame.get_column("shares")
    if not sh.dtype.is_numeric():
        raise TradePlanError(f"{what}.shares must be numeric, got {sh.dtype}")
    shf = sh.cast(pl.Float64)
    bad = frame.filter(shf.is_null() | ~shf.is_finite() | (shf < 0) | (shf != shf.floor()))
    if bad.height:
        t, s = bad.select("ticker", "shares").row(0)
        raise TradePlanError(f"{what}: shares for {t} is {s}; must be a whole number >= 0 (long only)")
    return frame.with_columns(pl.col("ticker").cast(pl.String), pl.col("shares").cast(pl.Int64))
