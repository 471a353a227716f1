"""Phase 1: the point-in-time tradable universe and the cap-weighted market return (pure polars).

Universe rule (the original `create_option_b_universe.py`: ADV >= $500K, price >= $2), decided per
date from trailing data only:
- common stock: TICKERS rows with table = 'SEP' and category starting with "Domestic Common Stock"
  (covers "Domestic Common Stock", "... Primary Class", "... Secondary Class"; excludes ADRs,
  ETFs/funds, preferred, warrants, Canadian/foreign). The category is a static attribute of the
  security, not a trailing measurement, so using today's TICKERS row does not look ahead.
  `isdelisted` is ignored on purpose: delisted names stay in while they traded (no survivorship).
- liquidity: adv_20 = mean of close * volume over the 20 sessions ending at d (all 20 required);
  close and volume are split-adjusted by the same factor, so their product is the day's dollar volume.
- price: closeunadj (the price actually traded on d) >= min_price. SEP `close` is back-adjusted for
  splits that happen after d, so filtering on it would let future splits decide past membership.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from kairos_dagster.features.ops import IDX, check_columns, check_sorted_unique

COMMON_STOCK_PREFIX = "Domestic Common Stock"
ADV_WINDOW = 20


def common_stock_tickers(tickers: pl.DataFrame) -> pl.DataFrame:
    """SEP tickers whose category is domestic common stock: ticker, category."""
    check_columns(tickers, "tickers", ("table", "ticker", "category"), no_nulls=False)
    sep = tickers.filter(pl.col("table") == "SEP")
    dup = sep.filter(pl.col("ticker").is_duplicated())
    if dup.height:
        raise ValueError(f"tickers: ticker {dup['ticker'][0]!r} appears more than once with table='SEP'")
    return sep.filter(pl.col("category").str.starts_with(COMMON_STOCK_PREFIX)).select("ticker", "category")


def universe(
    prices: pl.DataFrame, tickers: pl.DataFrame, *, min_adv: float = 500_000, min_price: float = 2.0
) -> pl.DataFrame:
    """Universe rows (ticker, date) with the numbers behind the decision:
    ticker, date, adv_20, closeunadj, category, in_universe (always True on returned rows); no
    split-adjusted price: it would be one as of the build day (see technical.OWN_DATE_PRICE)."""
    check_columns(prices, "sep_base", ("ticker", "date", "close", "closeunadj", "volume"))
    check_sorted_unique(prices, "sep_base")
    common = common_stock_tickers(tickers)
    lf = prices.lazy().select("ticker", "date", "close", "closeunadj", "volume").with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).over("ticker").alias(IDX)
    )
    # whole-column rolling mean, masked where the window would reach into the previous ticker
    adv = pl.when(pl.col(IDX) >= ADV_WINDOW - 1).then((pl.col("close") * pl.col("volume")).rolling_mean(ADV_WINDOW))
    return (
        lf.with_columns(adv.alias("adv_20"))
        .join(common.lazy(), on="ticker", how="inner", maintain_order="left")
        .with_columns(((pl.col("adv_20") >= min_adv) & (pl.col("closeunadj") >= min_price)).alias("in_universe"))
        .filter(pl.col("in_universe"))
        .select("ticker", "date", "adv_20", "closeunadj", "category", "in_universe")
        .collect()
    )


def market_returns(prices: pl.DataFrame, marketcap: pl.DataFrame, universe: pl.DataFrame) -> pl.DataFrame:
    """Cap-weighted universe daily return: date, mkt_ret, n_constituents.

    The return of a ticker on d is closeadj[d] / closeadj[prev] - 1 with prev its previous stored
    session. It counts on d when the ticker was in the universe on prev and is weighted by its DAILY
    marketcap on prev: the portfolio one could have held at prev's close, so nothing from d or later
    decides who is in or how much. A constituent without a positive marketcap on prev is an error.
    """
    check_columns(prices, "sep_base", ("ticker", "date", "closeadj"))
    check_sorted_unique(prices, "sep_base")
    check_columns(marketcap, "daily", ("ticker", "date", "marketcap"), no_nulls=False)
    check_columns(universe, "universe", ("ticker", "date"))
    ca = pl.col("closeadj")
    rets = (
        prices.lazy()
        .select("ticker", "date", "closeadj")
        .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over("ticker").alias(IDX))
        .with_columns(
            pl.when(pl.col(IDX) >= 1).then(pl.col("date").shift(1)).alias("prev_date"),
            pl.when(pl.col(IDX) >= 1).then(ca / ca.shift(1) - 1.0).alias("ret"),
        )
        .filter(pl.col("prev_date").is_not_null())
        .join(
            universe.lazy().select("ticker", pl.col("date").alias("prev_date")).unique(),
            on=["ticker", "prev_date"], how="semi", maintain_order="left",
        )
        .join(
            marketcap.lazy().select("ticker", pl.col("date").alias("prev_date"), "marketcap"),
            on=["ticker", "prev_date"], how="left", validate="m:1", maintain_order="left",
        )
        .collect()
    )
    bad = rets.filter(pl.col("marketcap").is_null() | (pl.col("marketcap") <= 0)).sort("prev_date", "ticker")
    if bad.height:
        r = bad.row(0, named=True)
        raise ValueError(
            f"daily: {bad.height} universe constituent(s) lack a positive marketcap on their weighting date; "
            f"first: ticker={r['ticker']!r} date={r['prev_date']} marketcap={r['marketcap']}"
        )
    # per-date weighted sums in a fixed (date, ticker) order with numpy, so the result is
    # byte-identical run to run (a parallel group-by may add in any order)
    rets = rets.sort("date", maintain_order=True)  # rows come ticker-sorted: stable sort keeps (date, ticker)
    dates = rets["date"]
    starts = np.flatnonzero(np.r_[True, dates[1:].to_numpy() != dates[:-1].to_numpy()]) if rets.height else []
    starts = np.asarray(starts, dtype=np.int64)
    r, w = rets["ret"].to_numpy(), rets["marketcap"].to_numpy()
    num = np.add.reduceat(r * w, starts) if rets.height else np.array([])
    den = np.add.reduceat(w, starts) if rets.height else np.array([])
    counts = np.diff(np.r_[starts, rets.height]).astype(np.int64)
    return pl.DataFrame(
        {"date": dates.gather(starts), "mkt_ret": num / den, "n_constituents": counts},
        schema={"date": pl.Date, "mkt_ret": pl.Float64, "n_constituents": pl.Int64},
    )


def market_index(mkt_ret: pl.DataFrame, base: float = 100.0) -> pl.DataFrame:
    """Cumulative level of the market return: date, mkt_ret, mkt_index (= base before the first return)."""
    check_columns(mkt_ret, "mkt_ret", ("date", "mkt_ret"))
    return mkt_ret.sort("date").select(
        "date", "mkt_ret", (base * (1.0 + pl.col("mkt_ret")).cum_prod()).alias("mkt_index")
    )
