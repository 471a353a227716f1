"""Phase 3: point-in-time fundamental, momentum, insider and institutional factors.

Every builder takes the caller's ``rows`` (one row per (ticker, date), normally the universe) plus the
source tables, and returns exactly one row per input row, in input order, with ``ticker``, ``date``
and the table's feature columns; ``FUNDAMENTAL_TABLES`` registers them for the asset layer. Point in
time (DESIGN.md, "Correctness rules"):

- SF1 and DAILY: the as-of joins of features.pit (``pit_sf1``, ``pit_daily``; rules in its docstring).
- SF2 (insider): transactions with ``filingdate`` in the window (d - N days, d].
- SF3 (13F): a quarter's holdings are known ``SF3_KNOWN_LAG_DAYS`` after its ``calendardate``.
- Prices: ``closeadj`` by XNYS session index, so lags are in sessions and gaps give nulls, not shifts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import polars as pl

from kairos_dagster import calendar
from kairos_dagster.features import keys, xs
from kairos_dagster.features.pit import (
    DAILY_STALE_DAYS,
    SF1_STALE_DAYS,
    pit_daily,
    pit_sf1,
    require_columns,
    require_no_nulls,
    require_unique,
)
from kairos_dagster.sources.schemas import SF3_KNOWN_LAG_DAYS

# DAILY marketcap and ev are in USD millions; SF1 values are in USD.
DAILY_UNITS = 1e6
SF3_STALE_DAYS = 200  # known date of the latest quarter: ~one quarter plus slack
INSIDER_WINDOWS: tuple[int, ...] = (90, 180)


@dataclass(frozen=True)
class Lookback:
    """History a table needs before its first output date: calendar days of each source, sessions of prices."""

    sf1_days: int = 0
    sf2_days: int = 0
    sf3_days: int = 0
    daily_days: int = 0
    price_sessions: int = 0


# SF1 year-ago versions can have been filed up to ~1 year before the current snapshot: 2 x stale window.
LOOKBACKS: dict[str, Lookback] = {
    "feat_value_v2": Lookback(sf1_days=SF1_STALE_DAYS, daily_days=DAILY_STALE_DAYS),
    "feat_quality_v2": Lookback(sf1_days=2 * SF1_STALE_DAYS),
    "feat_momentum_v2": Lookback(price_sessions=253),
    "feat_insider": Lookback(sf2_days=max(INSIDER_WINDOWS), daily_days=DAILY_STALE_DAYS),
    "feat_institutional": Lookback(sf3_days=SF3_STALE_DAYS + SF3_KNOWN_LAG_DAYS + 100),
    "feat_fundamental": Lookback(sf1_days=2 * SF1_STALE_DAYS),
}

# ---------------------------------------------------------------------------------------------------
# row plumbing (point-in-time joins: features.pit)


def _prepare_rows(rows: pl.DataFrame) -> pl.DataFrame:
    require_columns(rows, "rows", ["ticker", "date"])
    require_no_nulls(rows, "rows", ["ticker", "date"])
    require_unique(rows, "rows", ["ticker", "date"])
    return rows.select("ticker", pl.col("date").cast(pl.Date)).with_row_index("_row")


def _finish(df: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    return df.sort("_row").select("ticker", "date", *columns)


def _safe_div(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """num / den, null where den is 0 or null (never ±inf)."""
    return pl.when(den != 0).then(num / den).otherwise(None)


def _pos_div(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """num / den for a positive denominator only (yields on a negative book or market cap are meaningless)."""
    return pl.when(den > 0).then(num / den).otherwise(None)


# ---------------------------------------------------------------------------------------------------
# feat_value_v2

VALUE_SF1 = ("netinccmn", "equity", "revenue", "ebitda", "fcf")
VALUE_FEATURES: dict[str, pl.Expr] = {
    "earnings_yield": _pos_div(pl.col("netinccmn"), pl.col("_mcap")),
    "book_yield": _pos_div(pl.col("equity"), pl.col("_mcap")),
    "sales_yield": _pos_div(pl.col("revenue"), pl.col("_mcap")),
    "ebitda_ev": _pos_div(pl.col("ebitda"), pl.col("_ev")),
    "fcf_yield": _pos_div(pl.col("fcf"), pl.col("_mcap")),
}


def feat_value_v2(rows: pl.DataFrame, sf1: pl.DataFrame, daily: pl.DataFrame) -> pl.DataFrame:
    """TTM (ART) earnings, book, sales, FCF over market cap and EBITDA over EV, as of each date.

    Columns: earnings_yield, book_yield, sales_yield, ebitda_ev, fcf_yield (null for a non-positive
    market cap / EV or missing data).
    """
    r = _prepare_rows(rows)
    r = pit_sf1(r, sf1, VALUE_SF1)
    r = pit_daily(r, daily).with_columns(
        _mcap=pl.col("marketcap") * DAILY_UNITS, _ev=pl.col("ev") * DAILY_UNITS
    )
    return _finish(r.with_columns(**VALUE_FEATURES), list(VALUE_FEATURES))


# ---------------------------------------------------------------------------------------------------
# feat_quality_v2

QUALITY_PY = ("netinc", "assets", "debt", "currentratio", "shareswa", "gp", "revenue")
QUALITY_SF1 = ("netinc", "equity", "assets", "gp", "revenue", "ncfo", "debt", "currentratio", "shareswa")


def _roa(suffix: str = "") -> pl.Expr:
    return _pos_div(pl.col(f"netinc{suffix}"), pl.col(f"assets{suffix}"))


def _ratio(num: str, den: str, suffix: str = "") -> pl.Expr:
    return _pos_div(pl.col(f"{num}{suffix}"), pl.col(f"{den}{suffix}"))


def _above(a: pl.Expr, b: pl.Expr) -> pl.Expr:
    """a > b by more than float rounding (xs.FLAT_RTOL of their size): equal values read from two
    filings (unchanged shares, a repeated ratio) never count as a rise or a fall."""
    return (a - b) > xs.FLAT_RTOL * pl.max_horizontal(a.abs(), b.abs())


# Piotroski (2000) signals computable from SF1 ART snapshots and their year-ago versions; each is
# 1/0, or null when an input is missing. Balance-sheet items are period-end, not averages. Changes
# are judged beyond rounding (_above), so a value equal to its year-ago one scores the same whatever
# its last bits.
PIOTROSKI_SIGNALS: dict[str, pl.Expr] = {
    "f_roa_pos": _roa() > 0,  # 1. profitability: ROA > 0
    "f_cfo_pos": pl.col("ncfo") > 0,  # 2. operating cash flow > 0
    "f_droa_pos": _above(_roa(), _roa("_py")),  # 3. ROA improved on a year ago
    "f_accrual": _above(_ratio("ncfo", "assets"), _roa()),  # 4. cash flow exceeds earnings (low accruals)
    "f_dlever": _above(_ratio("debt", "assets", "_py"), _ratio("debt", "assets")),  # 5. leverage fell
    "f_dliquid": _above(pl.col("currentratio"), pl.col("currentratio_py")),  # 6. current ratio rose
    "f_no_dilution": ~_above(pl.col("shareswa"), pl.col("shareswa_py")),  # 7. no new shares
    "f_dmargin": _above(_ratio("gp", "revenue"), _ratio("gp", "revenue", "_py")),  # 8. gross margin rose
    "f_dturn": _above(_ratio("revenue", "assets"), _ratio("revenue", "assets", "_py")),  # 9. asset turnover rose
}

QUALITY_FEATURES: dict[str, pl.Expr] = {
    "roe": _pos_div(pl.col("netinc"), pl.col("equity")),
    "roa": _roa(),
    "gross_margin": _ratio("gp", "revenue"),
    "gross_profitability": _ratio("gp", "assets"),
    "accruals": _pos_div(pl.col("netinc") - pl.col("ncfo"), pl.col("assets")),
    "leverage": _ratio("debt", "assets"),
}


def feat_quality_v2(rows: pl.DataFrame, sf1: pl.DataFrame) -> pl.DataFrame:
    """ROE, ROA, gross margin, gross profitability, accruals, leverage and a Piotroski F-score (ART).

    ``f_score`` is the number of the nine PIOTROSKI_SIGNALS that hold (0..9) and is null unless all nine
    can be computed (needs the year-ago filing); ``f_score_n`` is how many could be computed.
    """
    r = _prepare_rows(rows)
    r = pit_sf1(r, sf1, QUALITY_SF1, prior_year=QUALITY_PY)
    r = r.with_columns(**QUALITY_FEATURES, **{k: v.cast(pl.Int8) for k, v in PIOTROSKI_SIGNALS.items()})
    sig = list(PIOTROSKI_SIGNALS)
    r = r.with_columns(
        f_score_n=pl.sum_horizontal(pl.col(s).is_not_null().cast(pl.Int8) for s in sig).cast(pl.Int8)
    ).with_columns(
        f_score=pl.when(pl.col("f_score_n") == len(sig))
        .then(pl.sum_horizontal(sig).cast(pl.Int8))
        .otherwise(None)
    )
    return _finish(r, [*QUALITY_FEATURES, "f_score", "f_score_n"])


# ---------------------------------------------------------------------------------------------------
# feat_momentum_v2

MOMENTUM_LAGS = {"mom_12_1": (21, 252), "mom_6_1": (21, 126)}  # (skip, lookback) in sessions
HIGH_WINDOW = 252
HIGH_MIN_SESSIONS = 200


def _session_index(prices: pl.DataFrame, table: str) -> pl.DataFrame:
    lo, hi = prices["date"].min(), prices["date"].max()
    sess = calendar.sessions_frame(lo, hi).with_row_index("_idx").with_columns(pl.col("_idx").cast(pl.Int64))
    out = prices.join(sess, on="date", how="left")
    bad = out.filter(pl.col("_idx").is_null())
    if bad.height:
        raise ValueError(f"{table}: {bad.height} rows dated on non-sessions, e.g. {bad.select('ticker', 'date').head(3).rows()}")
    return out


def _industry(tickers: pl.DataFrame) -> pl.DataFrame:
    require_columns(tickers, "tickers", ["ticker", "industry"])
    t = tickers.filter(pl.col("table") == "SEP") if "table" in tickers.columns else tickers
    t = t.select("ticker", "industry")
    require_unique(t, "tickers (table SEP)", ["ticker"])
    return t


def feat_momentum_v2(rows: pl.DataFrame, prices: pl.DataFrame, tickers: pl.DataFrame) -> pl.DataFrame:
    """12-1 and 6-1 momentum, industry-relative 12-1 momentum and 52-week-high proximity from closeadj.

    mom_12_1 = closeadj[t-21] / closeadj[t-252] - 1 (sessions), mom_6_1 likewise with 126;
    mom_12_1_ind_rel = mom_12_1 minus the mean mom_12_1 of the date's rows in the same TICKERS industry;
    high_52w_ratio = closeadj / max(closeadj over the last 252 sessions) (needs >= 200 of them).
    """
    r = _prepare_rows(rows)
    require_columns(prices, "prices", ["ticker", "date", "closeadj"])
    p = prices.select("ticker", pl.col("date").cast(pl.Date), pl.col("closeadj").cast(pl.Float64))
    require_no_nulls(p, "prices", ["ticker", "date"])
    require_unique(p, "prices", ["ticker", "date"])
    p = _session_index(p, "prices").sort("ticker", "_idx")
    c = xs.clean("closeadj")
    p = p.with_columns(
        high_52w_ratio=c
        / c.rolling_max_by("_idx", window_size=f"{HIGH_WINDOW}i", min_samples=HIGH_MIN_SESSIONS).over("ticker")
    )
    # closeadj k sessions back: the row of the same ticker whose session index is k lower (null in a gap)
    key = p.select(keys.packed(keys.ticker_enum([p]), "_idx")).to_series()  # increasing: p is sorted, unique
    for name, (skip, back) in MOMENTUM_LAGS.items():
        for k in (skip, back):
            if f"_c{k}" not in p.columns:
                p = p.with_columns(pl.col("closeadj").gather(keys.positions(key, key - k)).alias(f"_c{k}"))
        p = p.with_columns(_pos_div(pl.col(f"_c{skip}"), pl.col(f"_c{back}")).sub(1.0).alias(name))
    feats = ["mom_12_1", "mom_6_1", "high_52w_ratio"]
    r = keys.left_join(r, p, "date", feats)
    r = r.join(_industry(tickers), on="ticker", how="left").with_columns(
        mom_12_1_ind_rel=xs.demean("mom_12_1", ["date", "industry"])
    )
    return _finish(r, ["mom_12_1", "mom_6_1", "mom_12_1_ind_rel", "high_52w_ratio"])


# ---------------------------------------------------------------------------------------------------
# feat_insider


def _abs_value() -> pl.Expr:
    v = pl.col("transactionvalue").cast(pl.Float64)
    alt = pl.col("transactionshares").cast(pl.Float64) * pl.col("transactionpricepershare").cast(pl.Float64)
    return pl.coalesce(v, alt).abs()


def _window_sums(rows: pl.DataFrame, events: pl.DataFrame, values: dict[str, str], days: int) -> pl.DataFrame:
    """Per value column of `events` (mapped to its output name), the sum over events with filingdate in
    (d - days, d] per ticker, via cumulative sums: two as-of joins for all the columns at once."""
    cums = {v: f"_cum_{v}" for v in values}
    cum = (
        events.group_by("ticker", "filingdate")
        .agg(*[pl.col(v).sum() for v in values])
        .sort("ticker", "filingdate")
        .with_columns(*[pl.col(v).cum_sum().over("ticker").alias(c) for v, c in cums.items()])
        .select("ticker", "filingdate", *cums.values())
        .sort("filingdate")
    )
    r = rows.with_columns(_d0=pl.col("date") - dt.timedelta(days=days))
    for key, side in (("date", "_c1"), ("_d0", "_c0")):
        r = r.sort(key).join_asof(
            cum.rename({c: f"{side}{c}" for c in cums.values()}), left_on=key, right_on="filingdate", by="ticker",
            strategy="backward", check_sortedness=False,
        ).drop("filingdate")
    out = []
    for v, name in values.items():
        c1, c0 = pl.col(f"_c1{cums[v]}").fill_null(0.0), pl.col(f"_c0{cums[v]}").fill_null(0.0)
        diff = c1 - c0
        # a window whose events net to zero is exactly 0, not the add-subtract residue of two large cum sums
        residue = diff.abs() <= xs.FLAT_RTOL * pl.max_horizontal(c1.abs(), c0.abs())
        out.append(pl.when(residue).then(0.0).otherwise(diff).alias(name))
    return r.with_columns(out).drop("_d0", *[f"{side}{c}" for side in ("_c1", "_c0") for c in cums.values()])


def _window_distinct(rows: pl.DataFrame, events: pl.DataFrame, who: str, days: int, name: str) -> pl.DataFrame:
    """Distinct `who` with an event filed in (d - days, d] per ticker.

    Each event covers [filingdate, filingdate + days); one person's overlapping covers merge into spells,
    and the count at d is (#spells started on or before d) - (#spells ended on or before d).
    """
    w = dt.timedelta(days=days)
    e = (
        events.select("ticker", who, "filingdate").unique().sort("ticker", who, "filingdate")
        .with_columns(_prev=pl.col("filingdate").shift(1).over("ticker", who))
        .with_columns(_new=pl.col("_prev").is_null() | (pl.col("filingdate") >= pl.col("_prev") + w))
        .with_columns(_spell=pl.col("_new").cast(pl.Int64).cum_sum().over("ticker", who))
    )
    spells = e.group_by("ticker", who, "_spell").agg(
        _start=pl.col("filingdate").min(), _end=pl.col("filingdate").max() + w
    )
    marks = pl.concat(
        [
            spells.select("ticker", pl.col("_start").alias("_t"), pl.lit(1, pl.Int64).alias("_n")),
            spells.select("ticker", pl.col("_end").alias("_t"), pl.lit(-1, pl.Int64).alias("_n")),
        ]
    )
    cum = (
        marks.group_by("ticker", "_t").agg(pl.col("_n").sum()).sort("ticker", "_t")
        .with_columns(_cnt=pl.col("_n").cum_sum().over("ticker")).select("ticker", "_t", "_cnt").sort("_t")
    )
    r = rows.sort("date").join_asof(
        cum, left_on="date", right_on="_t", by="ticker", strategy="backward", check_sortedness=False
    )
    return r.with_columns(pl.col("_cnt").fill_null(0).alias(name)).drop("_t", "_cnt")


def feat_insider(rows: pl.DataFrame, sf2: pl.DataFrame, daily: pl.DataFrame) -> pl.DataFrame:
    """Net insider open-market buying by filing date, over the trailing 90 and 180 calendar days.

    For N in INSIDER_WINDOWS, over filings with filingdate in (d - N, d]:
    insider_net_value_{N}d = sum |value| of code-P buys - sum |value| of code-S sells (USD; value is
    transactionvalue, else shares x price), insider_net_mcap_{N}d = that / market cap (DAILY, as of d),
    insider_buyers_{N}d = distinct owners with a P buy, insider_officer_buys_{N}d = P buys by officers
    (isofficer = 'Y'), insider_officer_buy_value_{N}d their value. A ticker without filings in the
    window gets 0 (SF2 history must cover the window: see LOOKBACKS).
    """
    r = _prepare_rows(rows)
    cols = ["ticker", "filingdate", "ownername", "transactioncode", "transactionvalue",
            "transactionshares", "transactionpricepershare", "isofficer"]
    require_columns(sf2, "sf2", cols)
    require_no_nulls(sf2, "sf2", ["ticker", "filingdate"])
    e = sf2.filter(pl.col("transactioncode").is_in(["P", "S"])).select(
        "ticker", pl.col("filingdate").cast(pl.Date), "ownername", "transactioncode", "isofficer", _v=_abs_value()
    )
    bad = e.filter(pl.col("_v").is_null())
    if bad.height:
        raise ValueError(
            f"sf2: {bad.height} P/S transactions without value or shares x price, e.g. "
            f"{bad.select('ticker', 'filingdate', 'ownername').head(3).rows()}"
        )
    e = e.with_columns(
        _net=pl.when(pl.col("transactioncode") == "P").then(pl.col("_v")).otherwise(-pl.col("_v")),
        _offbuy=((pl.col("transactioncode") == "P") & (pl.col("isofficer") == "Y")).cast(pl.Float64),
    ).with_columns(_offval=pl.col("_offbuy") * pl.col("_v"))
    buys = e.filter(pl.col("transactioncode") == "P")
    r = pit_daily(r, daily, ["marketcap"])
    names = []
    for n in INSIDER_WINDOWS:
        r = _window_sums(r, e, {"_net": f"insider_net_value_{n}d", "_offbuy": f"insider_officer_buys_{n}d",
                                "_offval": f"insider_officer_buy_value_{n}d"}, n)
        r = _window_distinct(r, buys, "ownername", n, f"insider_buyers_{n}d")
        r = r.with_columns(
            _pos_div(pl.col(f"insider_net_value_{n}d"), pl.col("marketcap") * DAILY_UNITS).alias(f"insider_net_mcap_{n}d"),
            pl.col(f"insider_officer_buys_{n}d").cast(pl.Int64),
        )
        names += [f"insider_net_value_{n}d", f"insider_net_mcap_{n}d", f"insider_buyers_{n}d",
                  f"insider_officer_buys_{n}d", f"insider_officer_buy_value_{n}d"]
    return _finish(r, names)


# ---------------------------------------------------------------------------------------------------
# feat_institutional


def feat_institutional(rows: pl.DataFrame, sf3: pl.DataFrame) -> pl.DataFrame:
    """13F holdings (securitytype SHR) of the latest quarter known at d (calendardate + 45 days <= d).

    inst_holders = distinct investors with units > 0, inst_shares = sum of units, inst_value = sum of
    value; inst_holders_chg = holders minus the previous quarter's, inst_shares_chg = shares / previous
    quarter's - 1 (the previous quarter is calendardate minus 3 months); inst_calendardate = the quarter.
    """
    r = _prepare_rows(rows)
    require_columns(sf3, "sf3", ["ticker", "investorname", "securitytype", "calendardate", "value", "units"])
    require_no_nulls(sf3, "sf3", ["ticker", "investorname", "calendardate"])
    s = sf3.filter(pl.col("securitytype") == "SHR")
    q = s.group_by("ticker", "calendardate").agg(
        inst_holders=pl.col("investorname").filter(pl.col("units") > 0).n_unique().cast(pl.Int64),
        inst_shares=pl.col("units").cast(pl.Float64).sum(),
        inst_value=pl.col("value").cast(pl.Float64).sum(),
    )
    prev = q.select(
        "ticker", pl.col("calendardate").alias("_cd_prev"),
        pl.col("inst_holders").alias("_h_prev"), pl.col("inst_shares").alias("_s_prev"),
    )
    q = (
        q.with_columns(_cd_prev=pl.col("calendardate").dt.offset_by("-3mo").dt.month_end())
        .join(prev, on=["ticker", "_cd_prev"], how="left")
        .with_columns(
            inst_holders_chg=pl.col("inst_holders") - pl.col("_h_prev"),
            inst_shares_chg=_pos_div(pl.col("inst_shares"), pl.col("_s_prev")) - 1.0,
            _known=pl.col("calendardate") + dt.timedelta(days=SF3_KNOWN_LAG_DAYS),
            inst_calendardate=pl.col("calendardate"),
        )
        .drop("_cd_prev", "_h_prev", "_s_prev", "calendardate")
        .sort("_known")
    )
    r = r.sort("date").join_asof(
        q, left_on="date", right_on="_known", by="ticker", strategy="backward",
        tolerance=dt.timedelta(days=SF3_STALE_DAYS), check_sortedness=False,
    )
    return _finish(
        r, ["inst_holders", "inst_shares", "inst_value", "inst_holders_chg", "inst_shares_chg", "inst_calendardate"]
    )


# ---------------------------------------------------------------------------------------------------
# feat_fundamental

FUNDAMENTAL_SF1 = ("revenue", "eps", "gp", "opinc", "netinc", "ebitda", "fcf")
FUNDAMENTAL_FEATURES: dict[str, pl.Expr] = {
    "revenue_growth_yoy": _pos_div(pl.col("revenue"), pl.col("revenue_py")) - 1.0,
    # EPS growth over |EPS a year ago| so that a loss shrinking counts as growth
    "eps_growth_yoy": _safe_div(pl.col("eps") - pl.col("eps_py"), pl.col("eps_py").abs()),
    "gross_margin": _pos_div(pl.col("gp"), pl.col("revenue")),
    "operating_margin": _pos_div(pl.col("opinc"), pl.col("revenue")),
    "net_margin": _pos_div(pl.col("netinc"), pl.col("revenue")),
    "ebitda_margin": _pos_div(pl.col("ebitda"), pl.col("revenue")),
    "fcf_margin": _pos_div(pl.col("fcf"), pl.col("revenue")),
}


def feat_fundamental(rows: pl.DataFrame, sf1: pl.DataFrame) -> pl.DataFrame:
    """TTM (ART) revenue and EPS growth on the year-ago filing, and a margins snapshot, as of each date.

    Also carries the snapshot's ``datekey`` and ``reportperiod`` so staleness is visible.
    """
    r = _prepare_rows(rows)
    r = pit_sf1(r, sf1, FUNDAMENTAL_SF1, prior_year=("revenue", "eps"))
    r = r.with_columns(**FUNDAMENTAL_FEATURES)
    return _finish(r, [*FUNDAMENTAL_FEATURES, "datekey", "reportperiod"])


# ---------------------------------------------------------------------------------------------------
# registry for the asset layer


@dataclass(frozen=True)
class FundamentalTable:
    """How the asset layer wires a Phase 3 table: its function, the warehouse inputs after `rows`
    (universe rows of the window), its value columns and its lookback."""

    name: str
    fn: Callable[..., pl.DataFrame]
    inputs: tuple[str, ...]
    columns: tuple[str, ...]

    @property
    def lookback(self) -> Lookback:
        return LOOKBACKS[self.name]


_INSIDER_COLUMNS = tuple(
    f"{stem}_{n}d"
    for n in INSIDER_WINDOWS
    for stem in ("insider_net_value", "insider_net_mcap", "insider_buyers", "insider_officer_buys",
                 "insider_officer_buy_value")
)

FUNDAMENTAL_TABLES: dict[str, FundamentalTable] = {
    t.name: t
    for t in (
        FundamentalTable("feat_value_v2", feat_value_v2, ("sf1", "daily"), tuple(VALUE_FEATURES)),
        FundamentalTable("feat_quality_v2", feat_quality_v2, ("sf1",), (*QUALITY_FEATURES, "f_score", "f_score_n")),
        FundamentalTable("feat_momentum_v2", feat_momentum_v2, ("sep_base", "tickers"),
                         ("mom_12_1", "mom_6_1", "mom_12_1_ind_rel", "high_52w_ratio")),
        FundamentalTable("feat_insider", feat_insider, ("sf2", "daily"), _INSIDER_COLUMNS),
        FundamentalTable("feat_institutional", feat_institutional, ("sf3",),
                         ("inst_holders", "inst_shares", "inst_value", "inst_holders_chg", "inst_shares_chg",
                          "inst_calendardate")),
        FundamentalTable("feat_fundamental", feat_fundamental, ("sf1",),
                         (*FUNDAMENTAL_FEATURES, "datekey", "reportperiod")),
    )
}
