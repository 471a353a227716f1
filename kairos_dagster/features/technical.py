"""Phase 2: technical feature tables — the declared feature families and their registry (pure polars).

Each table is a list of `Feature`s (name, expression, lookback) generated from windows x operators,
the way Qlib's Alpha158 config declares its features. Input `prices` is SEP-shaped (ticker, date,
open, high, low, close, volume, closeadj, closeunadj), strictly sorted by (ticker, date), holding each
ticker's contiguous stored history. Every table returns ticker, date + its columns for every input
row; rows without enough in-ticker history are null.

Price conventions: returns and return-based statistics use `closeadj` (dividend-adjusted); indicators
that mix open/high/low/close (TA-Lib definitions, candle shapes, ranges) use the split-adjusted OHLC
so the bar is internally consistent. Volume is split-adjusted; close*volume is dollar volume.

No look-ahead and no dependence on where stored history starts: each value at d reads a fixed
trailing window of at most `lookback_sessions` rows (<= 756); recursive TA-Lib smoothers are truncated
exponential windows (see ops.truncated_ewm). Only `feat_targets` looks forward; it lives in
features.targets and is listed here in TECHNICAL_TABLES. The kernels the families are built from
(smoothers, true range, validation, `build_table`, `TableSpec`) are in features.ops.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import polars as pl

from kairos_dagster.features.ops import (
    ANNUALIZE,
    CA,
    RET,
    C,
    Feature,
    H,
    L,
    O,
    TableSpec,
    V,
    attach_column,
    bars_since,
    block_mean,
    build_table,
    check_columns,
    check_market_returns,
    ema,
    lin_slope,
    merge_feature_stages,
    merge_stages,
    prepare_prices,
    rolling_max_drawdown,
    safe_div,
    true_range,
    wilder,
)
from kairos_dagster.features.targets import TARGETS_SPEC

MAX_LOOKBACK = 756  # 3 years of sessions: the most history any value may read

# SEP's OHLC and volume are adjusted as of the day the data was served, so a *level* (a price or a share
# count, not a ratio) computed from them would change on every later split. Levels are expressed in
# prices as known on the row's own date instead: closeunadj / close is the split factor from the row's
# date to the serving day, constant over a trailing window, so the feature equals the one computed from
# history adjusted as of its own date, and a restated sep_base leaves it as it was.
OWN_DATE_PRICE = pl.col("closeunadj") / C
LEVEL_INPUTS = ("closeunadj",)

LOG_HL = (H / L).log()
LOG_CO = (C / O).log()
DOLLAR_VOL = C * V  # as an expression; feat_adv materializes it as `_dv`
EPS = 1e-12  # Qlib's guard against high == low in the K-bar ratios


# --------------------------------------------------------------------------------------------- price action
RET_HORIZONS = (1, 5, 10, 21, 63, 126, 252)


def _price_action() -> list[Feature]:
    return [
        # total return over h sessions
        *(Feature(f"ret_{h}d", CA / CA.shift(h) - 1.0, h) for h in RET_HORIZONS),
        # overnight gap: today's open vs yesterday's close
        Feature("gap_overnight", O / C.shift(1) - 1.0, 1),
        # intraday range relative to the close
        Feature("range_intraday", (H - L) / C, 0),
        # where the close sits in the day's range (0 = low, 1 = high)
        Feature("close_location", safe_div(C - L, H - L), 0),
        # distance of the close from the 252-session high / low
        Feature("dist_high_252", C / H.rolling_max(252) - 1.0, 251),
        Feature("dist_low_252", C / L.rolling_min(252) - 1.0, 251),
    ]


# --------------------------------------------------------------------------------------------- trend
# Recursive and multi-stage indicators materialize their intermediates as helper columns, stage by
# stage (stage k may read stages < k), so each smoother runs once over the column.
def _c(name: str) -> pl.Expr:
    return pl.col(name)


# Shared intermediates are materialized once as helper columns: polars does not eliminate common
# rolling subexpressions across output columns, so a repeated rolling mean would be recomputed.
C_MEAN20, C_SD20, V_MEAN20 = _c("_c_mean20"), _c("_c_sd20"), _c("_v_mean20")
# Means over windows that are multiples of a shorter one come from adjacent block means
# (ops.block_mean): close means over 10 -> 20, 50 -> 200; return moments over 10 -> 20, 60.
C_MEANS = [
    [C.rolling_mean(10).alias("_c_mean10")],
    [block_mean(_c("_c_mean10"), 10, 2).alias("_c_mean20"), block_mean(_c("_c_mean10"), 10, 5).alias("_c_mean50")],
    [block_mean(_c("_c_mean50"), 50, 4).alias("_c_mean200")],
]
# Bollinger / z-score moments; the price std stays a rolling_std kernel (E[C^2] - E[C]^2 would cancel)
C_MOMENTS_20 = [[*C_MEANS[0], C.rolling_std(20, ddof=0).alias("_c_sd20")], C_MEANS[1][:1]]
RV_BLOCK = 10  # realized-vol windows are multiples of it
RV_HELPERS = [
    [RET.rolling_mean(RV_BLOCK).alias("_r_mean10"), (RET**2).rolling_mean(RV_BLOCK).alias("_rr_mean10")],
    [block_mean(_c(f"_{k}_mean10"), RV_BLOCK, w // RV_BLOCK).alias(f"_{k}_mean{w}")
     for w in (20, 60) for k in ("r", "rr")],
]



def _macd() -> tuple[list[list[pl.Expr]], list[Feature]]:
    e12, lb12 = ema(C, 12)
    e26, lb26 = ema(C, 26)
    sig, lb9 = ema(_c("_macd"), 9)
    lb_macd = max(lb12, lb26)
    stages = [[e12.alias("_ema12"), e26.alias("_ema26")], [(_c("_ema12") - _c("_ema26")).alias("_macd")],
              [sig.alias("_macd_sig")]]
    return stages, [
        # price levels, in prices as known on the row's date (OWN_DATE_PRICE)
        Feature("ema_12", _c("_ema12") * OWN_DATE_PRICE, lb12),
        Feature("ema_26", _c("_ema26") * OWN_DATE_PRICE, lb26),
        # MACD line, signal (EMA 9 of MACD) and histogram, TA-Lib MACD(12, 26, 9)
        Feature("macd", _c("_macd") * OWN_DATE_PRICE, lb_macd),
        Feature("macd_signal", _c("_macd_sig") * OWN_DATE_PRICE, lb_macd + lb9),
        Feature("macd_hist", (_c("_macd") - _c("_macd_sig")) * OWN_DATE_PRICE, lb_macd + lb9),
    ]


def _adx(n: int = 14) -> tuple[list[list[pl.Expr]], list[Feature]]:
    up, dn = H - H.shift(1), L.shift(1) - L
    plus_dm = pl.when((up > dn) & (up > 0)).then(up).otherwise(0.0)
    minus_dm = pl.when((dn > up) & (dn > 0)).then(dn).otherwise(0.0)
    s_tr, lb = wilder(true_range(), n)
    s_pdm, _ = wilder(plus_dm, n)
    s_mdm, _ = wilder(minus_dm, n)
    lb += 1  # the DMs and the true range read the previous bar
    pdi = 100.0 * safe_div(_c("_s_pdm"), _c("_s_tr"))
    mdi = 100.0 * safe_div(_c("_s_mdm"), _c("_s_tr"))
    pdi_, mdi_ = _c("_pdi"), _c("_mdi")
    # DX = 0 when both DIs are 0 (flat market); TA-Lib then keeps the previous ADX instead
    dx = pl.when(pdi_ + mdi_ > 0).then(100.0 * (pdi_ - mdi_).abs() / (pdi_ + mdi_)).otherwise(0.0)
    adx, lb_adx = wilder(_c("_dx"), n)
    stages = [[s_tr.alias("_s_tr"), s_pdm.alias("_s_pdm"), s_mdm.alias("_s_mdm")],
              [pdi.alias("_pdi"), mdi.alias("_mdi")], [dx.alias("_dx")], [adx.alias("_adx")]]
    return stages, [
        Feature(f"plus_di_{n}", pdi_, lb),
        Feature(f"minus_di_{n}", mdi_, lb),
        # trend strength: Wilder average of DX, TA-Lib ADX
        Feature(f"adx_{n}", _c("_adx"), lb + lb_adx),
    ]


def _rsi(n: int = 14) -> tuple[list[list[pl.Expr]], list[Feature]]:
    d = C - C.shift(1)
    gain, lb = wilder(pl.when(d > 0).then(d).otherwise(0.0), n)
    loss, _ = wilder(pl.when(d < 0).then(-d).otherwise(0.0), n)
    g, lo = _c("_rsi_gain"), _c("_rsi_loss")
    # TA-Lib RSI: 100 * avg gain / (avg gain + avg loss), 0 when nothing moved
    rsi = pl.when(g + lo > 0).then(100.0 * g / (g + lo)).otherwise(0.0)
    return [[gain.alias("_rsi_gain"), loss.alias("_rsi_loss")]], [Feature(f"rsi_{n}", rsi, lb + 1)]


def _aroon(n: int = 25) -> tuple[list[list[pl.Expr]], list[Feature]]:
    # TA-Lib AROON looks at n+1 bars; ties go to the most recent bar
    stages = [[bars_since(H, n + 1).alias("_since_high"), bars_since(L, n + 1, lowest=True).alias("_since_low")]]
    up = 100.0 * (n - _c("_since_high")) / n
    down = 100.0 * (n - _c("_since_low")) / n
    return stages, [
        Feature(f"aroon_up_{n}", up, n),
        Feature(f"aroon_down_{n}", down, n),
        Feature(f"aroon_osc_{n}", up - down, n),
    ]


SMA_WINDOWS = (10, 20, 50, 200)
SLOPE_WINDOWS = (20, 60)


def _trend() -> tuple[list[list[pl.Expr]], list[Feature]]:
    stages, feats = merge_feature_stages(_macd(), _adx(14), _rsi(14), _aroon(25), (C_MEANS, []))
    by_name = {f.name: f for f in feats}
    sma = {w: _c(f"_c_mean{w}") for w in SMA_WINDOWS}
    return stages, [
        # close relative to its simple moving average
        *(Feature(f"sma_ratio_{w}", C / sma[w] - 1.0, w - 1) for w in SMA_WINDOWS),
        *(by_name[k] for k in ("ema_12", "ema_26", "macd", "macd_signal", "macd_hist")),
        *(by_name[k] for k in ("adx_14", "plus_di_14", "minus_di_14", "rsi_14")),
        # OLS slope of log(closeadj) per session: drift of the trend
        *(Feature(f"slope_{w}", lin_slope(CA.log(), w), w - 1) for w in SLOPE_WINDOWS),
        *(by_name[k] for k in ("aroon_up_25", "aroon_down_25", "aroon_osc_25")),
    ]


# --------------------------------------------------------------------------------------------- statistical
STAT_WINDOWS = (21, 63)
# operator name -> (expression builder over window w, extra lookback beyond w - 1)
STAT_OPERATORS: dict[str, tuple[Callable[[int], pl.Expr], int]] = {
    "ret_mean": (lambda w: RET.rolling_mean(w), 1),  # average daily return
    "ret_std": (lambda w: RET.rolling_std(w), 1),  # dispersion of daily returns (sample std)
    "ret_skew": (lambda w: RET.rolling_skew(w, bias=True), 1),  # asymmetry (population skewness)
    "ret_kurt": (lambda w: RET.rolling_kurtosis(w, fisher=True, bias=True), 1),  # tails (excess kurtosis)
}


AUTOCORR_WINDOW = 63
# window means of r_t, r_t^2 and r_t * r_{t-1}; those of r_{t-1} and r_{t-1}^2 are the first two
# shifted by one row, so a lag-1 correlation needs 3 rolling means instead of a rolling_corr kernel
AUTOCORR_HELPERS = [[
    RET.rolling_mean(AUTOCORR_WINDOW).alias("_ac_m"),
    (RET**2).rolling_mean(AUTOCORR_WINDOW).alias("_ac_mm"),
    (RET * RET.shift(1)).rolling_mean(AUTOCORR_WINDOW).alias("_ac_ml"),
]]


def _autocorr_1(w: int) -> pl.Expr:
    """Pearson correlation of (r_t, r_{t-1}) over the last w rows; null for a constant window."""
    assert w == AUTOCORR_WINDOW
    m, mm, ml = _c("_ac_m"), _c("_ac_mm"), _c("_ac_ml")
    var_x, var_y = mm - m**2, mm.shift(1) - m.shift(1) ** 2
    cov = ml - m * m.shift(1)
    den = (var_x * var_y).sqrt()
    return pl.when(den > 0).then((cov / den).clip(-1.0, 1.0))


def _statistical() -> list[Feature]:
    mdd = [Feature(f"mdd_{w}", rolling_max_drawdown("closeadj", w)[1], w - 1) for w in (63, 252)]
    return [
        *(
            Feature(f"{op}_{w}", build(w), w - 1 + extra)
            for op, (build, extra) in STAT_OPERATORS.items()
            for w in STAT_WINDOWS
        ),
        # lag-1 autocorrelation of daily returns over 63 sessions (mean reversion vs momentum)
        Feature("autocorr_1_63", _autocorr_1(63), 64),
        # z-score of the close vs its 20-session mean (population std, as Bollinger)
        Feature("zscore_20", safe_div(C - C_MEAN20, C_SD20), 19),
        # worst peak-to-trough drop of closeadj inside the window (<= 0)
        *mdd,
    ]


# --------------------------------------------------------------------------------------------- volume / volatility
VOL_WINDOWS = (10, 20, 60)
OBV_WINDOW = 252  # OBV is a trailing 252-session sum so it does not depend on where history starts


def realized_vol(w: int) -> pl.Expr:
    """Annualized sample std of daily closeadj returns over w sessions; lookback w. Reads the
    RV_HELPERS columns (window means of r and r^2): var = (E[r^2] - E[r]^2) * w / (w - 1)."""
    m, mm = _c(f"_r_mean{w}"), _c(f"_rr_mean{w}")
    return ((mm - m**2).clip(lower_bound=0.0) * (w / (w - 1.0))).sqrt() * ANNUALIZE


def _bollinger(n: int = 20, k: float = 2.0) -> list[Feature]:
    assert n == 20, "the helper columns hold 20-session moments"
    mid, sd = C_MEAN20, C_SD20  # TA-Lib BBANDS uses the population std
    up, lo = mid + k * sd, mid - k * sd
    return [  # the bands are price levels, as known on the row's date
        Feature(f"bb_upper_{n}", up * OWN_DATE_PRICE, n - 1),
        Feature(f"bb_middle_{n}", mid * OWN_DATE_PRICE, n - 1),
        Feature(f"bb_lower_{n}", lo * OWN_DATE_PRICE, n - 1),
        Feature(f"bb_width_{n}", (up - lo) / mid, n - 1),  # band width relative to the middle
        Feature(f"bb_pctb_{n}", safe_div(C - lo, up - lo), n - 1),  # %b: position inside the bands
    ]


def _vol_volatility_helpers() -> list[list[pl.Expr]]:
    """Helper stages of feat_vol_volatility (also VOL_VOLATILITY_HELPERS)."""
    signed_vol = pl.when(C > C.shift(1)).then(V).when(C < C.shift(1)).then(-V).otherwise(0.0)  # noqa: SIM300
    own = [[wilder(true_range(), 14)[0].alias("_atr"), signed_vol.rolling_sum(OBV_WINDOW).alias("_obv"),
            V.rolling_mean(20).alias("_v_mean20")]]
    return merge_stages(own, C_MOMENTS_20, RV_HELPERS)


def _vol_volatility() -> list[Feature]:
    _, lb_atr = wilder(true_range(), 14)
    atr, obv = _c("_atr"), _c("_obv")
    return [
        # close-to-close realized volatility, annualized
        *(Feature(f"vol_{w}", realized_vol(w), w) for w in VOL_WINDOWS),
        # Parkinson: high-low range estimator, annualized
        Feature("parkinson_vol_20", ((LOG_HL**2).rolling_mean(20) / (4 * math.log(2)) * 252).sqrt(), 19),
        # Garman-Klass: range + open-close estimator, annualized
        Feature(
            "gk_vol_20",
            ((0.5 * LOG_HL**2 - (2 * math.log(2) - 1) * LOG_CO**2).rolling_mean(20) * 252).clip(0.0).sqrt(),
            19,
        ),
        # average true range (Wilder, TA-Lib ATR) and its percent of the close (NATR)
        Feature("atr_14", atr * OWN_DATE_PRICE, lb_atr + 1),
        Feature("natr_14", 100.0 * atr / C, lb_atr + 1),
        *_bollinger(20, 2.0),
        # volume vs its 20-session mean, in std units
        Feature("volume_z_20", safe_div(V - V_MEAN20, V.rolling_std(20)), 19),
        # on-balance volume summed over the trailing 252 sessions
        Feature("obv", obv / OWN_DATE_PRICE, OBV_WINDOW),  # a share count, as known on the row's date
        # 20-session OLS slope of that OBV, in units of average daily volume
        Feature("obv_slope_20", safe_div(lin_slope(obv, 20), V_MEAN20), OBV_WINDOW + 19),
        # short vs long volume activity
        Feature("volume_ratio_5_20", safe_div(V.rolling_mean(5), V_MEAN20), 19),
    ]


# --------------------------------------------------------------------------------------------- price shape (Qlib K-bar)
_RANGE = H - L + EPS
KBAR: dict[str, pl.Expr] = {
    "kmid": (C - O) / O,  # body relative to the open
    "klen": (H - L) / O,  # full bar length relative to the open
    "kmid2": (C - O) / _RANGE,  # body as a share of the range
    "kup": (H - pl.max_horizontal(O, C)) / O,  # upper shadow relative to the open
    "kup2": (H - pl.max_horizontal(O, C)) / _RANGE,  # upper shadow as a share of the range
    "klow": (pl.min_horizontal(O, C) - L) / O,  # lower shadow relative to the open
    "klow2": (pl.min_horizontal(O, C) - L) / _RANGE,  # lower shadow as a share of the range
    "ksft": (2 * C - H - L) / O,  # close shifted toward high or low, relative to the open
    "ksft2": (2 * C - H - L) / _RANGE,  # same, as a share of the range
}
KBAR_WINDOWS = (5, 10, 20)


KBAR_BLOCK = KBAR_WINDOWS[0]  # the other windows are multiples: averages of adjacent block means
PRICE_SHAPE_HELPERS = [
    [e.alias(f"_{name}") for name, e in KBAR.items()],
    [_c(f"_{name}").rolling_mean(KBAR_BLOCK).alias(f"_{name}_m{KBAR_BLOCK}") for name in KBAR],
]


def _price_shape() -> list[Feature]:
    assert all(w % KBAR_BLOCK == 0 for w in KBAR_WINDOWS)
    return [
        *(Feature(name, _c(f"_{name}"), 0) for name in KBAR),
        # rolling means of each K-bar shape
        *(
            Feature(f"{name}_mean_{w}", block_mean(_c(f"_{name}_m{KBAR_BLOCK}"), KBAR_BLOCK, w // KBAR_BLOCK), w - 1)
            for name in KBAR
            for w in KBAR_WINDOWS
        ),
    ]


# --------------------------------------------------------------------------------------------- ADV / liquidity
ADV_WINDOWS = (20, 60)


def _adv() -> list[Feature]:
    dv = _c("_dv")
    amihud_day = pl.when(dv > 0).then(RET.abs() / dv * 1e6)
    return [
        # average daily dollar volume (close * volume)
        *(Feature(f"adv_{w}", dv.rolling_mean(w), w - 1) for w in ADV_WINDOWS),
        # average daily share turnover: volume / shares outstanding
        Feature("turnover_20", pl.col("_turnover").rolling_mean(20), 19),
        # Amihud illiquidity: mean |return| per $1M traded, over days that traded
        Feature(
            "amihud_20",
            safe_div(amihud_day.fill_null(0.0).rolling_sum(20), (dv > 0).cast(pl.Float64).rolling_sum(20)),
            20,
        ),
    ]


# --------------------------------------------------------------------------------------------- vol sizing
VOL_FLOOR = 0.05  # 5% annualized: keeps alpha / vol_blend finite for near-constant series
VOL_BLEND_WEIGHTS = {20: 0.5, 60: 0.5}  # vol_blend = 0.5 * vol_20 + 0.5 * vol_60


def _vol_sizing() -> list[Feature]:
    blend = pl.sum_horizontal([wt * realized_vol(w) for w, wt in VOL_BLEND_WEIGHTS.items()])
    down = pl.min_horizontal(RET, pl.lit(0.0))
    return [
        # position-sizing volatility: blend of short and long realized vol, floored
        Feature("vol_blend", blend.clip(lower_bound=VOL_FLOOR), max(VOL_BLEND_WEIGHTS)),
        # downside semi-deviation (root mean square of negative returns), annualized
        Feature("downside_vol_60", (down**2).rolling_mean(60).sqrt() * ANNUALIZE, 60),
    ]


# --------------------------------------------------------------------------------------------- beta
BETA_WINDOWS = (63, 252)
MKT = pl.col("mkt_ret")


def _beta_helpers() -> list[list[pl.Expr]]:
    means = {"r": RET, "m": MKT, "rm": RET * MKT, "mm": MKT**2, "rr": RET**2}
    block = BETA_WINDOWS[0]  # the longer window is a multiple: the average of adjacent block means
    assert all(w % block == 0 for w in BETA_WINDOWS)
    stage1 = [e.rolling_mean(block).alias(f"_mean_{k}_{block}") for k, e in means.items()]
    stage1b = [block_mean(_c(f"_mean_{k}_{block}"), block, w // block).alias(f"_mean_{k}_{w}")
               for w in BETA_WINDOWS[1:] for k in means]
    stage2: list[pl.Expr] = []
    for w in BETA_WINDOWS:
        m = {k: _c(f"_mean_{k}_{w}") for k in means}
        stage2 += [(m["rm"] - m["r"] * m["m"]).alias(f"_cov_{w}"), (m["mm"] - m["m"] ** 2).alias(f"_var_m_{w}"),
                   (m["rr"] - m["r"] ** 2).alias(f"_var_r_{w}")]
    return [stage1, stage1b, stage2]


BETA_HELPERS = _beta_helpers()


def _beta() -> list[Feature]:
    out: list[Feature] = []
    for w in BETA_WINDOWS:
        cov, var_m, var_r = _c(f"_cov_{w}"), _c(f"_var_m_{w}"), _c(f"_var_r_{w}")
        beta = safe_div(cov, var_m)
        out += [
            # sensitivity to the cap-weighted universe return
            Feature(f"beta_{w}", beta, w),
            # correlation with the market
            Feature(f"corr_{w}", safe_div(cov, (var_m * var_r).sqrt()), w),
            # residual (idiosyncratic) volatility after the market, annualized
            Feature(f"idio_vol_{w}", (var_r - beta * cov).clip(0.0).sqrt() * ANNUALIZE, w),
        ]
    return out


# --------------------------------------------------------------------------------------------- table functions
def feat_price_action(prices: pl.DataFrame) -> pl.DataFrame:
    """Returns over 1..252 sessions, overnight gap, intraday range, close location, 252-day high/low distance."""
    return build_table(prepare_prices(prices, "feat_price_action"), PRICE_ACTION)


def feat_trend(prices: pl.DataFrame) -> pl.DataFrame:
    """SMA ratios, EMA 12/26, MACD, ADX/DI, RSI (TA-Lib definitions), log-price slopes, Aroon."""
    return build_table(prepare_prices(prices, "feat_trend", LEVEL_INPUTS), TREND, helpers=TREND_HELPERS)


def feat_statistical(prices: pl.DataFrame) -> pl.DataFrame:
    """Return moments (21, 63), lag-1 autocorrelation, price z-score, max drawdown (63, 252)."""
    return build_table(prepare_prices(prices, "feat_statistical"), STATISTICAL, helpers=STATISTICAL_HELPERS)


def feat_vol_volatility(prices: pl.DataFrame) -> pl.DataFrame:
    """Realized / range volatilities, ATR, Bollinger, volume z-score, OBV, volume ratio."""
    return build_table(prepare_prices(prices, "feat_vol_volatility", LEVEL_INPUTS), VOL_VOLATILITY, helpers=VOL_VOLATILITY_HELPERS)


def feat_price_shape(prices: pl.DataFrame) -> pl.DataFrame:
    """Qlib Alpha158 K-bar shapes and their 5/10/20-session means."""
    return build_table(prepare_prices(prices, "feat_price_shape"), PRICE_SHAPE, helpers=PRICE_SHAPE_HELPERS)


def feat_adv(
    prices: pl.DataFrame, daily: pl.DataFrame | None = None, shares: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Dollar ADV 20/60, share turnover and Amihud illiquidity.

    Turnover needs shares outstanding: pass `shares` (ticker, date, shares — split-adjusted like SEP
    volume) or the DAILY table (ticker, date, marketcap in USD millions). From DAILY, shares =
    marketcap * 1e6 / closeunadj are the shares on that date and volume / close are split-adjusted by
    the same factor, so turnover = close * volume / (marketcap * 1e6) (dollar volume over market cap),
    which is free of later splits. A missing shares/marketcap value makes that day's turnover null,
    and so the 20-session mean.
    """
    lf = prepare_prices(prices, "feat_adv")
    if shares is not None:
        check_columns(shares, "shares", ("ticker", "date", "shares"))
        lf = attach_column(lf, prices, shares, "shares")
        turnover = safe_div(V, pl.col("shares"))
    elif daily is not None:
        check_columns(daily, "daily", ("ticker", "date", "marketcap"), no_nulls=False)
        lf = attach_column(lf, prices, daily, "marketcap")
        turnover = safe_div(DOLLAR_VOL, pl.col("marketcap") * 1e6)
    else:
        raise ValueError("feat_adv: pass `daily` (marketcap) or `shares` to compute share turnover")
    return build_table(lf.with_columns(turnover.alias("_turnover"), DOLLAR_VOL.alias("_dv")), ADV)


def feat_vol_sizing(prices: pl.DataFrame) -> pl.DataFrame:
    """`vol_blend` = max(0.5 * vol_20 + 0.5 * vol_60, 5%) annualized, and 60-session downside vol."""
    return build_table(prepare_prices(prices, "feat_vol_sizing"), VOL_SIZING, helpers=VOL_SIZING_HELPERS)


def feat_beta(prices: pl.DataFrame, mkt_ret: pl.DataFrame) -> pl.DataFrame:
    """Beta, correlation and idiosyncratic vol vs `mkt_ret` (date, mkt_ret) over 63 and 252 sessions.

    A session without a market return makes every window containing it null.
    """
    check_market_returns(mkt_ret, "mkt_ret")
    lf = prepare_prices(prices, "feat_beta").join(
        mkt_ret.lazy().select("date", "mkt_ret"), on="date", how="left", maintain_order="left"
    )
    return build_table(lf, BETA, helpers=BETA_HELPERS)


# --------------------------------------------------------------------------------------------- registry
PRICE_ACTION = _price_action()
TREND_HELPERS, TREND = _trend()
STATISTICAL = _statistical()
VOL_VOLATILITY = _vol_volatility()
PRICE_SHAPE = _price_shape()
VOL_VOLATILITY_HELPERS = _vol_volatility_helpers()
STATISTICAL_HELPERS = merge_stages(C_MOMENTS_20, AUTOCORR_HELPERS)
ADV = _adv()
VOL_SIZING = _vol_sizing()
VOL_SIZING_HELPERS = RV_HELPERS
BETA = _beta()


# Helper-column stages per table (added in order before the table's select; see build_table).
TABLE_HELPERS: dict[str, list[list[pl.Expr]]] = {
    "feat_trend": TREND_HELPERS,
    "feat_statistical": STATISTICAL_HELPERS,
    "feat_vol_volatility": VOL_VOLATILITY_HELPERS,
    "feat_price_shape": PRICE_SHAPE_HELPERS,
    "feat_vol_sizing": VOL_SIZING_HELPERS,
    "feat_beta": BETA_HELPERS,
}


def _spec(name: str, fn: Callable[..., pl.DataFrame], feats: list[Feature], inputs: tuple[str, ...]) -> TableSpec:
    lb = max(f.lookback for f in feats)
    assert lb <= MAX_LOOKBACK, f"{name}: lookback {lb} exceeds {MAX_LOOKBACK}"
    return TableSpec(name, fn, inputs, tuple(f.name for f in feats), lb,
                     column_lookbacks=tuple(f.lookback for f in feats))


TECHNICAL_TABLES: dict[str, TableSpec] = {
    s.name: s
    for s in (
        _spec("feat_price_action", feat_price_action, PRICE_ACTION, ("sep_base",)),
        _spec("feat_trend", feat_trend, TREND, ("sep_base",)),
        _spec("feat_statistical", feat_statistical, STATISTICAL, ("sep_base",)),
        _spec("feat_vol_volatility", feat_vol_volatility, VOL_VOLATILITY, ("sep_base",)),
        _spec("feat_price_shape", feat_price_shape, PRICE_SHAPE, ("sep_base",)),
        _spec("feat_adv", feat_adv, ADV, ("sep_base", "daily")),
        _spec("feat_vol_sizing", feat_vol_sizing, VOL_SIZING, ("sep_base",)),
        _spec("feat_beta", feat_beta, BETA, ("sep_base", "mkt_ret")),
        TARGETS_SPEC,
    )
}
