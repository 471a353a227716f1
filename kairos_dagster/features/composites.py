"""Phases 4 and 5: composite alpha signals from cross-sectionally z-scored factors.

All weights live in ``COMPOSITES`` below, one ``CompositeSpec`` per output table, in dependency order
(a composite may use an earlier composite as a factor). A composite is computed per date as:

1. each factor f: ``z_f`` = z-score of f per date (per date and sector when ``sector_neutral``),
   population std, winsorized at ±``CLIP``; a factor with a negative weight counts against the score;
2. ``raw`` = sum(w_f * z_f) / sum(|w_f|) over the factors present for the row (missing factors drop
   out and the remaining weights are renormalized); null when the present factors carry less than
   ``min_coverage`` of the total |weight|;
3. the composite = z-score of ``raw`` per date, winsorized at ±``CLIP`` (so every composite is on one
   scale, mean 0 / std ~1 each date).

``feat_composite_v31_smooth`` is the trailing mean of ``feat_composite_v31`` over the last
``smooth_window`` XNYS sessions per ticker (missing days skipped): it depends only on that fixed
window, never on where history starts. ``feat_composite_v33_regime`` picks its weight table by the
date's ``regime`` (from ``regime_history_academic``); dates without a regime (window warm-up) use the
``default`` table. Input factor names are Phase 2 (``technical.py``: ret_21d, rsi_14, vol_blend,
beta_252, idio_vol_252, ...) and Phase 3 (``fundamental.py``) columns, plus ``sector``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import polars as pl

from kairos_dagster import calendar
from kairos_dagster.features import xs

CLIP = 3.0
DEFAULT_REGIME = "default"


@dataclass(frozen=True)
class CompositeSpec:
    """A composite's factor weights (column -> weight; sign = direction) and flags."""

    weights: Mapping[str, float] = field(default_factory=dict)
    sector_neutral: bool = False
    min_coverage: float = 0.5  # share of total |weight| that must be present for a value
    # Regime-dependent composites: one weight table per regime (plus DEFAULT_REGIME).
    regime_weights: Mapping[str, Mapping[str, float]] | None = None
    # Smoothed composites: the source column and its trailing window in sessions.
    smooth_source: str | None = None
    smooth_window: int = 0

    def tables(self) -> dict[str, Mapping[str, float]]:
        return dict(self.regime_weights) if self.regime_weights is not None else {DEFAULT_REGIME: self.weights}

    def inputs(self) -> list[str]:
        if self.smooth_source is not None:
            return [self.smooth_source]
        return list(dict.fromkeys(c for w in self.tables().values() for c in w))


_REGIME_BASE = {"feat_composite_v31_smooth": 0.4, "f_score": 0.1}

# Every composite weight in the system. Weights of each table sum to 1 in absolute value.
COMPOSITES: dict[str, CompositeSpec] = {
    # Long-only blend: momentum, value, quality, low volatility.
    "feat_composite_long_v2": CompositeSpec(
        weights={
            "mom_12_1": 0.25, "earnings_yield": 0.15, "book_yield": 0.10, "fcf_yield": 0.10,
            "roe": 0.10, "gross_profitability": 0.10, "f_score": 0.05, "vol_blend": -0.15,
        },
    ),
    # Academic factors (HML, RMW/gross profitability, UMD, short-term reversal, BAB, accruals), sector neutral.
    "feat_composite_academic": CompositeSpec(
        weights={
            "book_yield": 0.20, "earnings_yield": 0.10, "gross_profitability": 0.20, "mom_12_1": 0.20,
            "ret_21d": -0.10, "beta_252": -0.10, "accruals": -0.10,
        },
        sector_neutral=True,
    ),
    # v31: academic core plus industry-relative momentum, 52w high, insiders, institutions, growth.
    "feat_composite_v31": CompositeSpec(
        weights={
            "feat_composite_academic": 0.40, "mom_12_1_ind_rel": 0.15, "high_52w_ratio": 0.10,
            "insider_net_mcap_90d": 0.10, "inst_shares_chg": 0.05, "revenue_growth_yoy": 0.10,
            "idio_vol_252": -0.10,
        },
        sector_neutral=True,
    ),
    "feat_composite_v31_smooth": CompositeSpec(smooth_source="feat_composite_v31", smooth_window=10),
    # v32b: the smoothed v31 with quality, insider breadth, earnings growth and an RSI reversal tilt.
    "feat_composite_v32b": CompositeSpec(
        weights={
            "feat_composite_v31_smooth": 0.60, "f_score": 0.10, "insider_buyers_90d": 0.10,
            "eps_growth_yoy": 0.10, "rsi_14": -0.10,
        },
    ),
    # v33: regime-dependent tilts: momentum in calm bull markets, quality/low-vol/value otherwise.
    "feat_composite_v33_regime": CompositeSpec(
        regime_weights={
            "normal_vol_bull": {**_REGIME_BASE, "mom_12_1": 0.30, "book_yield": 0.10, "vol_blend": -0.10},
            "high_vol_bull": {**_REGIME_BASE, "mom_12_1": 0.15, "book_yield": 0.15, "vol_blend": -0.20},
            "normal_vol_bear": {**_REGIME_BASE, "mom_12_1": 0.05, "book_yield": 0.25, "vol_blend": -0.20},
            "high_vol_bear": {**_REGIME_BASE, "mom_12_1": 0.00, "book_yield": 0.20, "vol_blend": -0.30},
            DEFAULT_REGIME: {**_REGIME_BASE, "mom_12_1": 0.15, "book_yield": 0.15, "vol_blend": -0.20},
        },
    ),
    # v7: equal blend of the base and the regime-aware composite.
    "feat_composite_v7": CompositeSpec(
        weights={"feat_composite_v32b": 0.50, "feat_composite_v33_regime": 0.50},
    ),
    # v8: see alpha_composite_v8's docstring.
    "alpha_composite_v8": CompositeSpec(
        weights={
            "feat_composite_v33_regime": 0.35, "feat_composite_v31_smooth": 0.30, "f_score": 0.10,
            "insider_net_mcap_90d": 0.10, "vol_blend": -0.15,
        },
    ),
}

# Sessions of composite history each table needs before its first output date.
LOOKBACK_SESSIONS: dict[str, int] = {name: spec.smooth_window for name, spec in COMPOSITES.items()}


def _check(frame: pl.DataFrame, name: str, spec: CompositeSpec) -> None:
    need = ["ticker", "date", *spec.inputs()]
    if spec.sector_neutral:
        need.append("sector")
    if spec.regime_weights is not None:
        need.append("regime")
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: input frame is missing columns {missing}")
    if spec.sector_neutral:
        bad = frame.filter(pl.col("sector").is_null())
        if bad.height:
            raise ValueError(
                f"{name}: {bad.height} rows without a sector (sector-neutral composite), "
                f"e.g. {bad.select('ticker', 'date').head(3).rows()}"
            )
    if spec.regime_weights is not None:
        unknown = set(frame["regime"].drop_nulls().unique()) - set(spec.regime_weights)
        if unknown:
            raise ValueError(f"{name}: no weight table for regimes {sorted(unknown)}")


def weighted_score(weights: Mapping[str, float], min_coverage: float, prefix: str = "_z_") -> pl.Expr:
    """Steps 1-2 of the module docstring over precomputed clipped z-score columns (`prefix + factor`):
    the coverage-renormalized weighted mean."""
    terms = [(pl.col(f"{prefix}{c}"), w) for c, w in weights.items() if w != 0]
    total = sum(abs(w) for _, w in terms)
    if not terms:
        return pl.lit(None, pl.Float64)
    num = pl.sum_horizontal([(z * w) for z, w in terms])
    den = pl.sum_horizontal([pl.when(z.is_not_null()).then(abs(w)).otherwise(0.0) for z, w in terms])
    return pl.when((den > 0) & (den >= min_coverage * total - 1e-12)).then(num / den).otherwise(None)


def _smooth(frame: pl.DataFrame, source: str, window: int, name: str) -> pl.Series:
    lo, hi = frame["date"].min(), frame["date"].max()
    sess = calendar.sessions_frame(lo, hi).with_row_index("_idx").with_columns(pl.col("_idx").cast(pl.Int64))
    f = frame.select("ticker", "date", source).with_row_index("_row").join(sess, on="date", how="left")
    bad = f.filter(pl.col("_idx").is_null())
    if bad.height:
        raise ValueError(f"{name}: rows dated on non-sessions, e.g. {bad.select('ticker', 'date').head(3).rows()}")
    out = f.sort("ticker", "_idx").with_columns(
        xs.clean(source).rolling_mean_by("_idx", window_size=f"{window}i", min_samples=1).over("ticker").alias(name)
    )
    return out.sort("_row")[name]


def compute_composite(frame: pl.DataFrame, name: str, spec: CompositeSpec | None = None) -> pl.DataFrame:
    """``frame`` with the composite column ``name`` added (see the module docstring)."""
    spec = spec if spec is not None else COMPOSITES[name]
    _check(frame, name, spec)
    if spec.smooth_source is not None:
        if spec.smooth_window < 1:
            raise ValueError(f"{name}: smooth_window must be >= 1")
        _no_dup(frame, name)
        return frame.with_columns(_smooth(frame, spec.smooth_source, spec.smooth_window, name))
    by = ["date", "sector"] if spec.sector_neutral else ["date"]
    tables = spec.tables()
    factors = [c for w in tables.values() for c, v in w.items() if v != 0]
    # every factor's clipped z-score once (one group-by pass), then each weight table combines them
    scored = xs.add_zscores_clipped(frame, factors, by, CLIP)
    if spec.regime_weights is None:
        raw = weighted_score(tables[DEFAULT_REGIME], spec.min_coverage)
    else:
        regime = pl.col("regime").fill_null(DEFAULT_REGIME)
        raw = pl.lit(None, pl.Float64)
        for reg, weights in tables.items():
            raw = pl.when(regime == reg).then(weighted_score(weights, spec.min_coverage)).otherwise(raw)
    out = scored.with_columns(raw.alias("_raw"))
    out = xs.add_zscores_clipped(out, ["_raw"], ["date"], CLIP, prefix="_final")
    order = frame.columns if name in frame.columns else [*frame.columns, name]
    return out.drop(name, strict=False).rename({"_final_raw": name}).select(order)


def _no_dup(frame: pl.DataFrame, name: str) -> None:
    dup = frame.filter(pl.struct("ticker", "date").is_duplicated())
    if dup.height:
        raise ValueError(f"{name}: duplicate (ticker, date) rows, e.g. {dup.select('ticker', 'date').head(3).rows()}")


def build_composites(frame: pl.DataFrame, names: Sequence[str] | None = None) -> pl.DataFrame:
    """Add composites in declaration order (all of COMPOSITES by default, or ``names`` and what they need)."""
    wanted = set(COMPOSITES if names is None else names)
    unknown = wanted - set(COMPOSITES)
    if unknown:
        raise KeyError(f"unknown composites {sorted(unknown)}; known: {list(COMPOSITES)}")
    # pull in composites the wanted ones depend on
    for name in reversed(list(COMPOSITES)):
        if name in wanted:
            wanted |= {c for c in COMPOSITES[name].inputs() if c in COMPOSITES}
    for name in COMPOSITES:
        if name in wanted:
            frame = compute_composite(frame, name)
    return frame


def alpha_composite_v8(frame: pl.DataFrame) -> pl.DataFrame:
    """The best rule-based alpha: (ticker, date, alpha_composite_v8).

    alpha_composite_v8 = Zc( 0.35 * Zc(feat_composite_v33_regime) + 0.30 * Zc(feat_composite_v31_smooth)
                             + 0.10 * Zc(f_score) + 0.10 * Zc(insider_net_mcap_90d) - 0.15 * Zc(vol_blend) )
    where Zc is the per-date z-score (population std) winsorized at ±3, missing terms drop out with the
    remaining weights renormalized (null below 50% weight coverage), and the outer Zc re-standardizes.
    ``frame`` must hold those five columns (build the composites first with ``build_composites``).
    """
    return compute_composite(frame, "alpha_composite_v8").select("ticker", "date", "alpha_composite_v8")
