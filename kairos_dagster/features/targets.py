"""The forward-looking table `feat_targets`: forward returns, the labels and the ML label (pure polars).

THE ONLY LOOK-AHEAD TABLE: its values at d read sessions after d, so it is a target, never a feature.
`ML_LABEL` names the column models are trained on (why this label: see feat_targets). `TARGETS_SPEC`
describes the table to the asset layer; features.technical lists it in TECHNICAL_TABLES.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from kairos_dagster.features.ops import (
    CA,
    IDX,
    TableSpec,
    check_columns,
    check_market_returns,
    prepare_prices,
)

TARGET_HORIZONS = (1, 5, 21)
LABEL_HORIZON = 5
TOP_QUINTILE = 0.8
# The ML label (see feat_targets): the market-residual 5-session return above its date's median.
ML_LABEL = "label_resid_above_median_5d"
RISK_COLUMNS = ("beta_252", "beta_63")
TARGET_COLUMNS = (*(f"ret_{h}d_f" for h in TARGET_HORIZONS), "label_end_date", "label_top_quintile_5d",
                  "mkt_ret_5d_f", "ret_5d_resid_f", ML_LABEL)


def market_forward_return(mkt_ret: pl.DataFrame, horizon: int = LABEL_HORIZON) -> pl.DataFrame:
    """date, mkt_ret_{h}d_f: the market's compounded return over the `horizon` sessions after each date
    (null where fewer than `horizon` later sessions are stored). `mkt_ret` is market_returns."""
    check_market_returns(mkt_ret)
    m = mkt_ret.select("date", "mkt_ret").sort("date")
    growth = (1.0 + pl.col("mkt_ret")).log().rolling_sum(horizon).shift(-horizon)
    return m.select("date", (growth.exp() - 1.0).alias(f"mkt_ret_{horizon}d_f"))


def feat_targets(prices: pl.DataFrame, universe: pl.DataFrame | None = None, mkt_ret: pl.DataFrame | None = None,
                 risk: pl.DataFrame | None = None) -> pl.DataFrame:
    """Forward returns ret_{1,5,21}d_f = closeadj[t+h] / closeadj[t] - 1 in the ticker's own sessions,
    `label_end_date` (the session the 5-day horizon ends on; purge on it), `label_top_quintile_5d`
    and, given market_returns (`mkt_ret`) and feat_beta rows (`risk`), the ML label (null without them).

    THE ONLY LOOK-AHEAD TABLE: never a feature. Rows whose horizon runs past the stored history are
    null. Forward returns come from the full price history; if `universe` (ticker, date) is given the
    output keeps only those rows, and each label's cross-section per date is the rows returned.

    - label_top_quintile_5d: 1 when ret_5d_f ranks in the top 20% of its date (average rank / count
      > 0.8), else 0; null where ret_5d_f is null.
    - mkt_ret_5d_f: the cap-weighted market's return over the same 5 sessions.
    - ret_5d_resid_f = ret_5d_f - beta * mkt_ret_5d_f, beta = beta_252 on the row's date (beta_63 for
      younger listings, 1 without either): the part of the return the market does not explain.
    - label_resid_above_median_5d (the ML label): 1 when ret_5d_resid_f is above its date's median
      (average rank / count > 0.5), else 0; null where ret_5d_resid_f is null.
      Why this label: the probability of landing in a *tail* (top quintile) of raw returns is driven
      by a stock's volatility and by beta times the market's move, so a classifier of it ranks stocks
      by risk, not by expected return (out-of-sample weekly rank IC 0.003 on the synthetic market at
      5,000 tickers x 10 years). Above the median of the market residual, the probability rises with
      the expected residual return whatever the stock's volatility or beta (rank IC 0.035, t 12;
      benchmarks/RESULTS.md). Scaling the residual by idiosyncratic vol gained little and needs 63
      sessions of history a young listing does not have.
    """
    lf = prepare_prices(prices, "feat_targets").with_columns(pl.len().over("ticker").alias("_n"))
    left = pl.col("_n") - 1 - pl.col(IDX)  # sessions of this ticker after the row

    def fwd(e: pl.Expr, h: int) -> pl.Expr:
        return pl.when(left >= h).then(e)

    lf = lf.select(
        "ticker", "date",
        *(fwd(CA.shift(-h) / CA - 1.0, h).alias(f"ret_{h}d_f") for h in TARGET_HORIZONS),
        fwd(pl.col("date").shift(-LABEL_HORIZON), LABEL_HORIZON).alias("label_end_date"),
    )
    if universe is not None:
        check_columns(universe, "universe", ("ticker", "date"))
        lf = lf.join(universe.lazy().select("ticker", "date").unique(), on=["ticker", "date"], how="semi",
                     maintain_order="left")

    def above(y: pl.Expr, cut: float) -> pl.Expr:
        pct = y.rank("average").over("date") / y.count().over("date")
        return pl.when(y.is_not_null()).then((pct > cut).cast(pl.Int8))

    y = pl.col(f"ret_{LABEL_HORIZON}d_f")
    lf = lf.with_columns(above(y, TOP_QUINTILE).alias("label_top_quintile_5d"))
    if mkt_ret is None or risk is None:  # no market or risk inputs: the risk-adjusted columns are unknown
        return lf.with_columns(
            pl.lit(None, pl.Float64).alias(c) for c in ("mkt_ret_5d_f", "ret_5d_resid_f")
        ).with_columns(pl.lit(None, pl.Int8).alias(ML_LABEL)).select("ticker", "date", *TARGET_COLUMNS).collect()
    check_columns(risk, "feat_beta", ("ticker", "date", *RISK_COLUMNS), no_nulls=False)
    dup = risk.filter(pl.struct("ticker", "date").is_duplicated())
    if dup.height:  # a repeated key would silently duplicate target rows in the join
        raise ValueError(f"feat_beta: duplicate key ticker={dup['ticker'][0]!r} date={dup['date'][0]}")
    beta = pl.coalesce("beta_252", "beta_63", pl.lit(1.0))
    return (
        lf.join(market_forward_return(mkt_ret).lazy(), on="date", how="left", maintain_order="left")
        .join(risk.lazy().select("ticker", "date", *RISK_COLUMNS), on=["ticker", "date"], how="left",
              maintain_order="left")
        .with_columns((y - beta * pl.col("mkt_ret_5d_f")).alias("ret_5d_resid_f"))
        .with_columns(above(pl.col("ret_5d_resid_f"), 0.5).alias(ML_LABEL))
        .select("ticker", "date", *TARGET_COLUMNS)
        .collect()
    )


def label_end_dates(dates: pl.Series, horizon: int = LABEL_HORIZON) -> pl.Series:
    """XNYS session `horizon` sessions after each date (the calendar, not a ticker's own rows)."""
    from kairos_dagster import calendar as cal

    if dates.null_count():
        raise ValueError("label_end_dates: dates contain nulls")
    if dates.len() == 0:
        return pl.Series("label_end_date", [], dtype=pl.Date)
    lo, hi = dates.min(), dates.max()
    days = cal.sessions_array(lo, cal.sessions_offset(hi, horizon + 5))
    arr = dates.to_numpy().astype("datetime64[D]")
    pos = np.searchsorted(days, arr, side="right") - 1 + horizon
    return pl.Series("label_end_date", days[pos]).cast(pl.Date)


TARGETS_SPEC = TableSpec(
    "feat_targets", feat_targets, ("sep_base", "universe", "mkt_ret", "risk"), TARGET_COLUMNS,
    lookback_sessions=0, lookahead_sessions=max(TARGET_HORIZONS),
)
