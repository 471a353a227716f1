"""Risk4 portfolio construction: the pure core of the weekly rebalance (seed 000 §4.2, seed 001 §8.5).

Steps, each a pure function over all tickers at once:
  1. signal_rows        rows at the signal date; drop rows missing sector, vol or price (counted, listed)
  2. filter_adv         keep adv_20 >= min_adv
  3. score_and_rank     alpha_z = clip((alpha - mean) / std_pop, +-3); rank by alpha_z desc, ticker asc
  4. base_weights       alpha_z / vol_blend for the top_n names with alpha_z > 0, normalized to 1
  5. apply_caps         position and sector caps by water-filling; what cannot be placed is cash
  6. smooth_turnover    blend with the prior, cap one-way turnover, repair caps the prior breaks
  7. estimate_portfolio_vol / vol_scale   shrunk trailing covariance; k = min(target/est, max_gross, cap room)
  8. shares             floor(weight * portfolio_value / price)
`build_portfolio` chains them and returns a PortfolioResult with the picks and every diagnostic.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from kairos_dagster import calendar as cal
from kairos_dagster.features.xs import spread_ok
from kairos_dagster.portfolio.config import Risk4Config

TOL = 1e-9
_BISECT_STEPS = 200  # float64 bisection reaches machine precision well before this

PICKS_COLUMNS = ("rank", "ticker", "weight", "weight_pre_vol", "sector", "alpha_z", "vol_blend", "adv_20",
                 "price", "target_value", "shares")


class PortfolioInputError(ValueError):
    """Input the portfolio cannot be built from (missing column, duplicate ticker, look-ahead data...)."""


# --------------------------------------------------------------------------------------------- step 1
def signal_rows(frame: pl.DataFrame, config: Risk4Config,
                signal_date: dt.date | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rows at the signal date in canonical columns (ticker, sector, alpha, vol_blend, adv_20, price).

    Returns (kept, dropped); dropped has ticker and reason (missing_sector, missing_vol, missing_price):
    a name with no sector cannot be sector-capped, no positive vol cannot be risk-weighted, no positive
    price cannot be sized. Missing alpha and ADV are handled later (they feed the coverage gate).
    """
    return _canonical(_rows_at_date(frame, config, signal_date), config)


def _canonical(rows: pl.DataFrame, config: Risk4Config) -> tuple[pl.DataFrame, pl.DataFrame]:
    """signal_rows of rows already checked by _rows_at_date."""
    canon = rows.select(
        pl.col("ticker").cast(pl.String),
        pl.col(config.sector_column).cast(pl.String).alias("sector"),
        _finite(config.alpha_column).alias("alpha"),
        _finite(config.vol_column).alias("vol_blend"),
        _finite(config.adv_column).alias("adv_20"),
        _finite(config.price_column).alias("price"),
    )
    reason = (
        pl.when(pl.col("sector").is_null() | (pl.col("sector").str.strip_chars() == "")).then(pl.lit("missing_sector"))
        .when(pl.col("vol_blend").is_null() | (pl.col("vol_blend") <= 0)).then(pl.lit("missing_vol"))
        .when(pl.col("price").is_null() | (pl.col("price") <= 0)).then(pl.lit("missing_price"))
    )
    canon = canon.with_columns(reason.alias("reason"))
    kept = canon.filter(pl.col("reason").is_null()).drop("reason").sort("ticker")
    dropped = canon.filter(pl.col("reason").is_not_null()).select("ticker", "reason").sort("ticker")
    return kept, dropped


def _finite(col: str) -> pl.Expr:
    # NaN and inf count as missing, the same as null.
    c = pl.col(col).cast(pl.Float64)
    return pl.when(c.is_finite()).then(c).otherwise(None)


def _rows_at_date(frame: pl.DataFrame, config: Risk4Config, signal_date: dt.date | None) -> pl.DataFrame:
    need = ["ticker", config.sector_column, config.alpha_column, config.vol_column, config.adv_column,
            config.price_column]
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise PortfolioInputError(f"feat_matrix_v2 rows at the signal date lack column(s) {', '.join(missing)}")
    rows = frame
    if "date" in frame.columns:
        if signal_date is not None:
            rows = frame.filter(pl.col("date") == signal_date)
            if rows.height == 0:
                dates = frame.get_column("date").unique().sort()
                raise PortfolioInputError(f"feat_matrix_v2 has no rows at signal date {signal_date}; "
                                          f"dates present: {dates.head(5).to_list()}")
        elif (n_dates := frame.get_column("date").n_unique()) > 1:
            raise PortfolioInputError(f"feat_matrix_v2 frame holds {n_dates} dates; pass signal_date")
    if rows.height == 0:
        raise PortfolioInputError("feat_matrix_v2 frame at the signal date is empty")
    tickers = rows.get_column("ticker")
    if tickers.null_count():
        raise PortfolioInputError("feat_matrix_v2 has rows with a null ticker at the signal date")
    if tickers.n_unique() < rows.height:  # the names only on failure: the check runs every week
        dup = tickers.filter(tickers.is_duplicated()).unique().sort()
        raise PortfolioInputError(f"feat_matrix_v2 has duplicate tickers at the signal date: {dup.head(10).to_list()}")
    return rows


# --------------------------------------------------------------------------------------------- step 2
def filter_adv(rows: pl.DataFrame, min_adv: float) -> tuple[pl.DataFrame, int]:
    """Keep adv_20 >= min_adv (a missing ADV fails the filter); returns (kept, number removed)."""
    kept = rows.filter(pl.col("adv_20").is_not_null() & (pl.col("adv_20") >= min_adv))
    return kept, rows.height - kept.height


# --------------------------------------------------------------------------------------------- step 3
def score_and_rank(eligible: pl.DataFrame, clip: float) -> pl.DataFrame:
    """alpha_z over the eligible rows (population std), clipped to +-clip, with rank 1..n.

    Ties (clipping makes many) are broken by ticker so the ranking is deterministic. A cross-section
    with zero spread, or a spread within float rounding of its scale (features.xs.FLAT_RTOL), has no
    information: every alpha_z is 0.
    """
    a = pl.col("alpha")
    std = a.std(ddof=0)
    z = pl.when(spread_ok(std, a.mean())).then((a - a.mean()) / std).otherwise(0.0).clip(-clip, clip)
    return (
        eligible.with_columns(z.alias("alpha_z"))
        .sort(["alpha_z", "ticker"], descending=[True, False])
        .with_row_index("rank", offset=1)
        .with_columns(pl.col("rank").cast(pl.Int64))
    )


def select_top_n(ranked: pl.DataFrame, top_n: int) -> pl.DataFrame:
    return ranked.filter(pl.col("rank") <= top_n)


# --------------------------------------------------------------------------------------------- step 4
def base_weights(selected: pl.DataFrame) -> pl.DataFrame:
    """weight = alpha_z / vol_blend for alpha_z > 0 (others 0), normalized to sum 1 (all 0 if none)."""
    raw = pl.when(pl.col("alpha_z") > 0).then(pl.col("alpha_z") / pl.col("vol_blend")).otherwise(0.0)
    total = raw.sum()
    return selected.with_columns(pl.when(total > 0).then(raw / total).otherwise(0.0).alias("weight"))


# --------------------------------------------------------------------------------------------- step 5
def universe_sector_weights(eligible: pl.DataFrame, config: Risk4Config) -> pl.DataFrame:
    """sector, n, universe_weight (share of eligible rows by count), cap = min(mult x weight, hard cap)."""
    n = max(eligible.height, 1)
    return (
        eligible.group_by("sector").len("n").sort("sector")
        .with_columns((pl.col("n") / n).alias("universe_weight"))
        .with_columns(pl.min_horizontal(pl.col("universe_weight") * config.max_sector_mult,
                                        pl.lit(config.max_sector_cap)).alias("cap"))
    )


@dataclass(frozen=True)
class CapResult:
    weights: pl.DataFrame  # input columns with `weight` replaced by the capped weight
    cash_weight: float
    feasible: bool  # whether the caps allowed a full allocation
    reason: str | None


def apply_caps(weights: pl.DataFrame, sector_caps: pl.DataFrame, max_position: float) -> CapResult:
    """Position and sector caps by water-filling, solved for its fixed point.

    The allocation the clip-and-redistribute passes converge to is w_i = min(c, h_s * b_i): names share
    weight in proportion to their base weight b_i under a common water level g, a capped sector s under
    its own lower level h_s <= g that fills it exactly to its cap. We find g by bisection on the total
    (monotone in g) and each h_s by a vectorized bisection over sectors, rather than by alternating
    clip passes that can need many rounds and depend on the order of the passes. Bisection keeps the
    lower end, so every cap holds exactly and the sum is 1 to ~1e-15. When the caps hold less than the
    whole book (sum over sectors of min(cap_s, c x names_s) < 1) the rest is cash and feasible is False.
    `weights` needs ticker, sector, weight (>= 0); `sector_caps` needs sector, cap.
    """
    b_all = weights.get_column("weight").to_numpy().astype(np.float64)
    if (b_all < 0).any() or not np.isfinite(b_all).all():
        raise PortfolioInputError("apply_caps: base weights must be finite and >= 0")
    total_b = b_all.sum()
    if total_b <= 0:
        return CapResult(weights.with_columns(pl.lit(0.0).alias("weight")), 1.0, True, "no positive alpha_z")
    b = b_all / total_b
    # Shares below 1e-15 of the book are zero: they cannot matter, and a subnormal share would make the
    # water level (cap / share) overflow.
    b = np.where(b >= 1e-15, b, 0.0)
    codes, caps = _sector_codes(weights, sector_caps)
    n_sec = len(caps)
    pos = b > 0

    def sector_sum(level: np.ndarray | float) -> np.ndarray:
        lv = level if np.isscalar(level) else level[codes]
        return np.bincount(codes, weights=np.minimum(max_position, lv * b) * pos, minlength=n_sec)

    capacity = np.minimum(caps, max_position * np.bincount(codes, weights=pos.astype(float), minlength=n_sec))
    g_hi = float(max_position / b[pos].min())  # every name saturated at this level
    feasible = capacity.sum() >= 1.0 - TOL
    if feasible:
        lo, hi = 0.0, g_hi
        for _ in range(_BISECT_STEPS):
            mid = 0.5 * (lo + hi)
            if np.minimum(caps, sector_sum(mid)).sum() <= 1.0:
                lo = mid
            else:
                hi = mid
        g = lo
    else:
        g = g_hi
    # Sectors that would exceed their cap at level g get their own level h_s solving sum = cap_s.
    over = sector_sum(g) > caps
    h = np.full(n_sec, g)
    if over.any():
        lo_s, hi_s = np.zeros(n_sec), np.full(n_sec, g)
        for _ in range(_BISECT_STEPS):
            mid = 0.5 * (lo_s + hi_s)
            ok = sector_sum(mid) <= caps
            lo_s = np.where(ok, mid, lo_s)
            hi_s = np.where(ok, hi_s, mid)
        h = np.where(over, lo_s, g)
    w = np.minimum(max_position, h[codes] * b) * pos
    cash = max(0.0, 1.0 - float(w.sum()))
    if cash < TOL:
        cash = 0.0
    reason = None if feasible else (f"caps hold only {capacity.sum():.6f} of the book "
                                    f"(max_position {max_position}, sector caps); the rest is cash")
    return CapResult(weights.with_columns(pl.Series("weight", w)), cash, bool(feasible), reason)


def _sector_codes(weights: pl.DataFrame, sector_caps: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    # A sector without a cap row (absent from today's eligible universe) gets cap 0: its names must exit.
    joined = weights.select("sector").with_row_index("_i").join(
        sector_caps.select("sector", "cap"), on="sector", how="left").sort("_i")
    joined = joined.with_columns(pl.col("cap").fill_null(0.0), pl.col("sector").fill_null("<unknown>"))
    uniq = joined.select("sector", "cap").unique("sector").sort("sector")
    codes = joined.join(uniq.with_row_index("_code").select("sector", "_code"), on="sector").sort("_i")
    return codes.get_column("_code").to_numpy().astype(np.int64), uniq.get_column("cap").to_numpy().astype(float)


def check_caps(weights: pl.DataFrame, sector_caps: pl.DataFrame, max_position: float) -> list[str]:
    """Human-readable cap violations (empty when every position and sector cap holds within 1e-9)."""
    out = [f"{t}: weight {w:.6f} > max_position_pct {max_position}"
           for t, w in weights.filter(pl.col("weight") > max_position + TOL).select("ticker", "weight").iter_rows()]
    sec = (weights.group_by("sector").agg(pl.col("weight").sum())
           .join(sector_caps.select("sector", "cap"), on="sector", how="left")
           .with_columns(pl.col("cap").fill_null(0.0)).sort("sector"))
    out += [f"sector {s}: weight {w:.6f} > cap {c:.6f}"
            for s, w, c in sec.filter(pl.col("weight") > pl.col("cap") + TOL).select("sector", "weight", "cap").iter_rows()]
    return out


# --------------------------------------------------------------------------------------------- step 6
@dataclass(frozen=True)
class TurnoverResult:
    weights: pl.DataFrame  # ticker, sector, weight_target, weight_prior, weight
    turnover: float  # one-way sum|w - w_prior| / 2 after everything
    turnover_blend: float  # one-way turnover of the blend before the cap
    scaled: bool  # whether the turnover cap scaled the trade vector
    cap_repair_weight: float  # weight moved to cash to restore caps the prior broke
    fresh_start: bool


def validate_prior(prior: pl.DataFrame | None) -> pl.DataFrame:
    """Prior weights as (ticker, weight[, sector]); empty for a fresh start. Bad rows raise."""
    if prior is None or prior.height == 0:
        return pl.DataFrame(schema={"ticker": pl.String, "weight": pl.Float64, "sector": pl.String})
    for c in ("ticker", "weight"):
        if c not in prior.columns:
            raise PortfolioInputError(f"prior weights lack column {c!r}")
    p = prior.select(pl.col("ticker").cast(pl.String), pl.col("weight").cast(pl.Float64),
                     (pl.col("sector").cast(pl.String) if "sector" in prior.columns else pl.lit(None, pl.String)).alias("sector"))
    if p.get_column("ticker").null_count():
        raise PortfolioInputError("prior weights have a null ticker")
    bad = p.filter(~pl.col("weight").is_finite() | (pl.col("weight") < 0) | pl.col("weight").is_null())
    if bad.height:
        t, w = bad.row(0)[:2]
        raise PortfolioInputError(f"prior weight for {t} is {w}; weights must be finite and >= 0 (long only)")
    tickers = p.get_column("ticker")
    if tickers.n_unique() < p.height:
        dup = tickers.filter(tickers.is_duplicated()).unique().sort()
        raise PortfolioInputError(f"prior weights have duplicate tickers: {dup.head(10).to_list()}")
    total = p.get_column("weight").sum()
    if total > 1.0 + 1e-6:
        raise PortfolioInputError(f"prior weights sum to {total:.6f} > 1")
    return p


def smooth_turnover(target: pl.DataFrame, prior: pl.DataFrame, sectors: pl.DataFrame,
                    sector_caps: pl.DataFrame, config: Risk4Config) -> TurnoverResult:
    """w = lambda*w_prior + (1-lambda)*w_target over the union of names; cap one-way turnover.

    `target` has ticker, weight; `prior` ticker, weight (empty: fresh start, w = w_target, no cap);
    `sectors` maps ticker -> sector for every name (prior-only names included).
    The result is w_prior + t*(w_target - w_prior) with t in [0, 1-lambda]: a convex combination of two
    points, so when both satisfy today's (linear) caps the result does too. A prior that breaks today's
    caps (the universe's sector mix moved, a name's sector is unknown today) is repaired afterwards by
    clipping positions and scaling down sectors, the freed weight to cash; caps take precedence over the
    turnover cap, so in that case only the reported turnover may exceed max_turnover (cap_repair_weight
    says by how much weight).
    """
    fresh = prior.height == 0
    u = (
        target.select("ticker", pl.col("weight").alias("weight_target"))
        .join(prior.select("ticker", pl.col("weight").alias("weight_prior")), on="ticker", how="full", coalesce=True)
        .with_columns(pl.col("weight_target").fill_null(0.0), pl.col("weight_prior").fill_null(0.0))
        .join(sectors.select("ticker", "sector"), on="ticker", how="left")
        .sort("ticker")
    )
    wt = u.get_column("weight_target").to_numpy()
    wp = u.get_column("weight_prior").to_numpy()
    if fresh:
        w, to_blend, scaled = wt.copy(), float(np.abs(wt).sum() / 2), False
    else:
        w = config.lambda_tc * wp + (1 - config.lambda_tc) * wt
        to_blend = float(np.abs(w - wp).sum() / 2)
        scaled = to_blend > config.max_turnover + TOL
        if scaled:
            w = wp + (w - wp) * (config.max_turnover / to_blend)
    u = u.with_columns(pl.Series("weight", w))
    repaired = repair_caps(u, sector_caps, config.max_position_pct)
    repair = float(w.sum() - repaired.get_column("weight").sum())
    wf = repaired.get_column("weight").to_numpy()
    turnover = float(np.abs(wf - wp).sum() / 2)
    return TurnoverResult(repaired.select("ticker", "sector", "weight_target", "weight_prior", "weight"),
                          turnover, to_blend, scaled, max(repair, 0.0), fresh)


def repair_caps(weights: pl.DataFrame, sector_caps: pl.DataFrame, max_position: float) -> pl.DataFrame:
    """Clip positions to the cap, then scale over-cap sectors down to their cap; nothing is redistributed."""
    clipped = weights.with_columns(pl.col("weight").clip(upper_bound=max_position))
    caps = sector_caps.select("sector", "cap")
    return (
        clipped.join(caps, on="sector", how="left")
        .with_columns(pl.col("cap").fill_null(0.0), pl.col("weight").sum().over("sector").alias("_sw"))
        .with_columns(pl.when(pl.col("_sw") > pl.col("cap"))
                      .then(pl.col("weight") * pl.col("cap") / pl.col("_sw"))
                      .otherwise(pl.col("weight")).alias("weight"))
        .drop("cap", "_sw")
    )


# --------------------------------------------------------------------------------------------- step 7
@dataclass(frozen=True)
class VolEstimate:
    est_vol: float  # annualized volatility of the given weights
    n_names: int
    n_with_history: int
    n_fallback: int  # names whose diagonal came from vol_blend (too little return history)
    avg_corr: float  # constant-correlation target used in the shrinkage
    window_start: dt.date | None
    window_end: dt.date | None


def estimate_portfolio_vol(weights: pl.DataFrame, returns: pl.DataFrame, signal_date: dt.date,
                           config: Risk4Config, fallback_vol: float | None = None) -> VolEstimate:
    """Annualized vol of the book from a shrunk trailing covariance of daily returns.

    `weights`: ticker, weight, vol_blend (annualized; may be null for names not in today's frame).
    `returns`: long frame ticker, date, ret (daily simple returns); dates after `signal_date` are
    look-ahead and raise. Window: the `cov_window` XNYS sessions ending at the signal date.
    Covariance = D R D. D: each name's sample daily std x sqrt(annualization). R: sample correlation of
    the standardized returns (a missing day counts as a zero standardized return, which keeps R positive
    semi-definite) shrunk toward the constant-correlation target:
    R = (1 - delta) R_sample + delta C(r_bar), delta = cov_shrinkage (0.5: fixed, documented intensity,
    because 63 sessions of 75+ names give a singular sample matrix), r_bar = mean sample off-diagonal
    correlation floored at 0 (cov_fallback_corr when fewer than two names have history).
    Fallback: a name with fewer than cov_min_obs returns (or zero variance) uses vol_blend on the
    diagonal (fallback_vol, e.g. the universe median, if vol_blend is null) and enters R only through the
    target's r_bar; the matrix stays positive semi-definite.
    """
    held = weights.filter(pl.col("weight") > 0).sort("ticker")
    n = held.height
    if n == 0:
        return VolEstimate(0.0, 0, 0, 0, 0.0, None, None)
    returns = _validate_returns(returns, signal_date, held.get_column("ticker"))
    days = cal.sessions_array(cal.sessions_offset(signal_date, -(config.cov_window - 1)), signal_date)
    start, end = days[0].astype(dt.date), days[-1].astype(dt.date)
    idx_t = held.select("ticker").with_row_index("_ti")
    idx_d = pl.DataFrame({"date": days}).with_columns(pl.col("date").cast(pl.Date)).with_row_index("_di")
    obs = (returns.select("ticker", pl.col("date").cast(pl.Date), pl.col("ret").cast(pl.Float64))
           .filter(pl.col("ret").is_not_null())
           .join(idx_t, on="ticker").join(idx_d, on="date"))
    x = np.full((len(days), n), np.nan)
    x[obs.get_column("_di").to_numpy(), obs.get_column("_ti").to_numpy()] = obs.get_column("ret").to_numpy()

    seen = ~np.isnan(x)
    count = seen.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(x, axis=0) / np.maximum(count, 1)
        dev = np.where(seen, x - mean, 0.0)
        sd = np.sqrt((dev ** 2).sum(axis=0) / np.maximum(count - 1, 1))
    hist = (count >= config.cov_min_obs) & (sd > 0)

    vol_blend = held.get_column("vol_blend").cast(pl.Float64).to_numpy()
    fb = fallback_vol if fallback_vol is not None else float(np.nanmedian(vol_blend)) if np.isfinite(vol_blend).any() else None
    vol_blend = np.where(np.isfinite(vol_blend), vol_blend, np.nan if fb is None else fb)
    need_fb = ~hist & ~np.isfinite(vol_blend)
    if need_fb.any():
        bad = held.get_column("ticker").to_numpy()[need_fb][:10].tolist()
        raise PortfolioInputError(f"no return history and no vol_blend for {bad} at {signal_date}")
    sigma = np.where(hist, sd * math.sqrt(config.annualization), vol_blend)

    z = np.where(seen[:, hist], dev[:, hist] / np.where(sd[hist] > 0, sd[hist], 1.0), 0.0)
    norms = np.sqrt((z ** 2).sum(axis=0))
    zc = z / norms
    r_hist = zc.T @ zc
    k = int(hist.sum())
    r_bar = float(max((r_hist.sum() - k) / (k * (k - 1)), 0.0)) if k >= 2 else config.cov_fallback_corr
    r_ext = np.eye(n)
    hi = np.flatnonzero(hist)
    r_ext[np.ix_(hi, hi)] = r_hist
    target = np.full((n, n), r_bar)
    np.fill_diagonal(target, 1.0)
    corr = (1 - config.cov_shrinkage) * r_ext + config.cov_shrinkage * target
    w = held.get_column("weight").to_numpy()
    sw = sigma * w
    var = float(sw @ corr @ sw)
    return VolEstimate(math.sqrt(max(var, 0.0)), n, k, int((~hist).sum()), r_bar, start, end)


def _validate_returns(returns: pl.DataFrame, signal_date: dt.date, tickers: pl.Series) -> pl.DataFrame:
    """The rows of `tickers` (the book's names), checked: no row of any name after the signal date, and the
    book's rows finite and unique. Only the book's rows are checked for values: a window of the whole
    market's returns is handed in once per week, and the book reads its 75-odd names of it."""
    missing = [c for c in ("ticker", "date", "ret") if c not in returns.columns]
    if missing:
        raise PortfolioInputError(f"returns frame lacks column(s) {', '.join(missing)}")
    if returns.height == 0:
        return returns
    latest = returns.get_column("date").max()  # a max, not a filter: the window is checked every week
    if latest is not None and latest > signal_date:
        t, d = returns.filter(pl.col("date") > signal_date).sort("date").select("ticker", "date").row(0)
        raise PortfolioInputError(f"returns hold data after the signal date {signal_date} "
                                  f"(look-ahead), e.g. {t} on {d}")
    returns = returns.filter(pl.col("ticker").is_in(tickers.implode()))
    bad = returns.filter(pl.col("ret").is_not_null() & ~pl.col("ret").cast(pl.Float64).is_finite())
    if bad.height:
        t, d = bad.select("ticker", "date").row(0)
        raise PortfolioInputError(f"returns hold a non-finite ret for {t} on {d}")
    dup = returns.group_by("ticker", "date").len().filter(pl.col("len") > 1)
    if dup.height:
        t, d = dup.sort("ticker", "date").select("ticker", "date").row(0)
        raise PortfolioInputError(f"returns hold duplicate rows for {t} on {d}")
    return returns


def vol_scale(weights: pl.DataFrame, est_vol: float, sector_caps: pl.DataFrame, config: Risk4Config) -> float:
    """k = min(target_vol / est_vol, max_gross, cap room). max_gross <= 1, so k only scales down and caps
    hold; the cap room term keeps them even so if a book arrives with a position at its cap and k > 1."""
    w = weights.filter(pl.col("weight") > 0)
    if w.height == 0 or est_vol <= 0:
        return 0.0
    room_pos = config.max_position_pct / w.get_column("weight").max()
    sec = (w.group_by("sector").agg(pl.col("weight").sum())
           .join(sector_caps.select("sector", "cap"), on="sector", how="left").with_columns(pl.col("cap").fill_null(0.0)))
    room_sec = (sec.get_column("cap") / sec.get_column("weight")).min()
    return float(min(config.target_vol / est_vol, config.max_gross, room_pos, room_sec))


# --------------------------------------------------------------------------------------------- step 8
def shares_for(weights: pl.DataFrame, portfolio_value: float) -> pl.DataFrame:
    """target_value = weight x value; shares = floor(target_value / price) (1e-9 guards float round-off)."""
    return weights.with_columns((pl.col("weight") * portfolio_value).alias("target_value")).with_columns(
        (pl.col("target_value") / pl.col("price") + 1e-9).floor().cast(pl.Int64).alias("shares"))


# ------------------------------------------------------------------------------------------ pipeline
@dataclass(frozen=True)
class PortfolioResult:
    picks: pl.DataFrame  # PICKS_COLUMNS, one row per name with final weight > 0, by rank then ticker
    signal_date: dt.date | None
    config: Risk4Config
    n_input: int
    n_dropped_missing: int  # rows dropped for missing sector / vol / price
    dropped: pl.DataFrame  # ticker, reason
    n_below_adv: int
    n_missing_alpha: int  # ADV-eligible rows without alpha (excluded from scoring)
    alpha_coverage: float  # share of ADV-eligible rows with alpha (the ML coverage gate)
    n_eligible: int  # rows scored (sector, vol, price, ADV and alpha present)
    n_selected: int  # top_n names with alpha_z > 0
    universe_sector_weights: pl.DataFrame  # sector, n, universe_weight, cap
    caps_feasible: bool
    cap_reason: str | None
    cash_after_caps: float
    fresh_start: bool
    turnover: float  # one-way vs prior of the pre-vol book (steps 5-6), the value max_turnover caps
    turnover_final: float  # one-way vs prior of the final (vol-scaled) weights: what is traded
    turnover_blend: float
    turnover_scaled: bool
    cap_repair_weight: float
    forced_exits: pl.DataFrame  # ticker, reason: held names that cannot be priced at the signal date
    est_vol: float  # annualized vol of the pre-vol book
    vol_scale: float  # k
    est_vol_final: float  # k x est_vol
    n_vol_fallback: int
    avg_corr: float
    cash_weight: float  # 1 - sum(final weights)
    notes: list[str] = field(default_factory=list)

    @property
    def sector_weights_vs_caps(self) -> pl.DataFrame:
        """sector, weight (the book's), cap: every capped sector, and any held sector without a cap."""
        held = pl.DataFrame({"sector": list(self.sector_weights),
                             "weight": [float(v) for v in self.sector_weights.values()]},
                            schema={"sector": pl.String, "weight": pl.Float64})
        return (held.join(self.universe_sector_weights.select("sector", "cap"), on="sector", how="full",
                          coalesce=True).with_columns(pl.col("weight").fill_null(0.0)).sort("sector"))

    @property
    def sector_weights(self) -> dict[str, float]:
        s = self.picks.group_by("sector").agg(pl.col("weight").sum()).sort("sector")
        return dict(zip(s.get_column("sector").to_list(), s.get_column("weight").to_list(), strict=True))

    @property
    def n_positions(self) -> int:
        return self.picks.height

    @property
    def total_weight(self) -> float:
        return float(self.picks.get_column("weight").sum())


def build_portfolio(frame_at_signal_date: pl.DataFrame, prior_weights: pl.DataFrame | None,
                    returns: pl.DataFrame, config: Risk4Config,
                    signal_date: dt.date | None = None) -> PortfolioResult:
    """Steps 1-8. `frame_at_signal_date`: feat_matrix_v2 rows (joined with sector and price) at the
    signal date; `prior_weights`: ticker, weight[, sector] (None/empty: fresh start); `returns`: ticker,
    date, ret up to the signal date (needed only when there are positions)."""
    rows = _rows_at_date(frame_at_signal_date, config, signal_date)
    if signal_date is None and "date" in rows.columns:
        signal_date = rows.get_column("date")[0]
    if signal_date is None:
        raise PortfolioInputError("build_portfolio needs a signal_date (or a `date` column in the frame)")
    notes: list[str] = []
    kept, dropped = _canonical(rows, config)
    adv_ok, n_below = filter_adv(kept, config.min_adv)
    n_adv = adv_ok.height
    eligible = adv_ok.filter(pl.col("alpha").is_not_null())
    n_missing_alpha = n_adv - eligible.height
    coverage = eligible.height / n_adv if n_adv else 0.0
    ranked = score_and_rank(eligible, config.zscore_clip)
    selected = base_weights(select_top_n(ranked, config.top_n))
    usw = universe_sector_weights(eligible, config)
    capped = apply_caps(selected.select("ticker", "sector", "weight"), usw, config.max_position_pct)
    if capped.reason:
        notes.append(capped.reason)

    prior = validate_prior(prior_weights)
    # Sector of every name we may hold: today's frame first, the prior file's sector otherwise.
    today = rows.select(pl.col("ticker").cast(pl.String),
                        pl.col(config.sector_column).cast(pl.String).alias("sector_today"),
                        _finite(config.price_column).alias("price_today"),
                        _finite(config.vol_column).alias("vol_today"),
                        _finite(config.adv_column).alias("adv_today"))
    names = (pl.concat([capped.weights.select("ticker"), prior.select("ticker")]).unique()
             .join(today, on="ticker", how="left")
             .join(prior.select("ticker", pl.col("sector").alias("sector_prior")), on="ticker", how="left")
             .with_columns(pl.coalesce("sector_today", "sector_prior").alias("sector")))
    smooth = smooth_turnover(capped.weights.select("ticker", "weight"), prior, names.select("ticker", "sector"),
                             usw, config)
    if smooth.cap_repair_weight > TOL:
        notes.append(f"prior broke today's caps: {smooth.cap_repair_weight:.6f} of weight moved to cash")

    book = (smooth.weights.join(names.select("ticker", "price_today", "vol_today", "adv_today"), on="ticker", how="left")
            .join(ranked.select("ticker", "rank", "alpha_z"), on="ticker", how="left"))
    unpriced = book.filter((pl.col("weight") > 0) & (pl.col("price_today").is_null() | (pl.col("price_today") <= 0)))
    forced = unpriced.select("ticker", pl.lit("no price at the signal date").alias("reason")).sort("ticker")
    if forced.height:
        notes.append(f"forced exit of {forced.height} held name(s) with no price: {forced.get_column('ticker').head(10).to_list()}")
        book = book.with_columns(pl.when(pl.col("ticker").is_in(forced.get_column("ticker").implode()))
                                 .then(0.0).otherwise(pl.col("weight")).alias("weight"))
    book = book.with_columns(pl.when(pl.col("vol_today") > 0).then(pl.col("vol_today")).alias("vol_blend"))

    fallback_vol = float(eligible.get_column("vol_blend").median()) if eligible.height else None
    vol = estimate_portfolio_vol(book.select("ticker", "weight", "vol_blend"), returns, signal_date, config,
                                 fallback_vol) if book.filter(pl.col("weight") > 0).height else \
        VolEstimate(0.0, 0, 0, 0, 0.0, None, None)
    k = vol_scale(book, vol.est_vol, usw, config)

    picks = (
        book.filter(pl.col("weight") > 0)
        .with_columns(pl.col("weight").alias("weight_pre_vol"), (pl.col("weight") * k).alias("weight"),
                      pl.col("price_today").alias("price"), pl.col("adv_today").alias("adv_20"))
        # A subnormal weight (a turnover cap near 0 moves a name by ~1e-324) can underflow to 0 under k.
        .filter(pl.col("weight") > 0)
    )
    picks = shares_for(picks, config.portfolio_value).sort(["rank", "ticker"], nulls_last=True).select(PICKS_COLUMNS)
    total = float(picks.get_column("weight").sum())
    final = picks.select("ticker", "weight").join(prior.select("ticker", pl.col("weight").alias("wp")),
                                                   on="ticker", how="full", coalesce=True).fill_null(0.0)
    turnover_final = float((final.get_column("weight") - final.get_column("wp")).abs().sum() / 2)
    return PortfolioResult(
        picks=picks, signal_date=signal_date, config=config, n_input=rows.height,
        n_dropped_missing=dropped.height, dropped=dropped, n_below_adv=n_below,
        n_missing_alpha=n_missing_alpha, alpha_coverage=coverage, n_eligible=eligible.height,
        n_selected=int(selected.filter(pl.col("weight") > 0).height), universe_sector_weights=usw,
        caps_feasible=capped.feasible, cap_reason=capped.reason, cash_after_caps=capped.cash_weight,
        fresh_start=smooth.fresh_start, turnover=smooth.turnover, turnover_final=turnover_final, turnover_blend=smooth.turnover_blend,
        turnover_scaled=smooth.scaled, cap_repair_weight=smooth.cap_repair_weight, forced_exits=forced,
        est_vol=vol.est_vol, vol_scale=k, est_vol_final=k * vol.est_vol, n_vol_fallback=vol.n_fallback,
        avg_corr=vol.avg_corr, cash_weight=max(0.0, 1.0 - total), notes=notes,
    )
