"""Risk4/ML rebalance parameters: one frozen, typed dataclass and the two named configurations.

Values follow the original system (seeds 000 §7.1, 001 §8.2). A bad value fails at construction with a
message naming the parameter, so a typo in an override never silently runs a different strategy.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A Risk4 parameter that is unknown or has an unusable value."""


@dataclass(frozen=True, slots=True)
class Risk4Config:
    name: str = "ml"
    # Input columns of feat_matrix_v2 (joined with the tickers' sector and the signal-date price).
    alpha_column: str = "alpha_ml_v2_tuned_clf"
    vol_column: str = "vol_blend"  # annualized volatility estimate
    adv_column: str = "adv_20"  # 20-day average dollar volume
    sector_column: str = "sector"
    price_column: str = "price"
    # Selection and weights.
    top_n: int = 75
    zscore_clip: float = 3.0
    min_adv: float = 2_000_000.0
    max_position_pct: float = 0.03
    max_sector_mult: float = 2.0  # sector cap = min(mult x universe sector weight, max_sector_cap)
    max_sector_cap: float = 0.40
    # Turnover smoothing: w = lambda*w_prior + (1-lambda)*w_target, one-way turnover capped.
    lambda_tc: float = 0.5
    max_turnover: float = 0.30
    # Volatility targeting: k = min(target_vol / est_vol, max_gross); the rest is cash.
    target_vol: float = 0.25
    max_gross: float = 1.0
    cov_window: int = 63  # trailing sessions of daily returns (about one quarter)
    cov_min_obs: int = 20  # fewer observations than this: the name falls back to vol_blend
    cov_shrinkage: float = 0.5  # intensity toward the constant-correlation target
    cov_fallback_corr: float = 0.25  # average correlation used when fewer than 2 names have history
    annualization: int = 252
    portfolio_value: float = 100_000.0
    # Pre-rebalance gates (seed 000 §6.2 and §6.4).
    gate_min_eligible_block: int = 50
    gate_min_eligible_warn: int = 500
    gate_min_alpha_coverage: float = 0.95
    gate_expected_sectors: int = 11
    gate_turnover_warn: float = 0.50
    gate_position_warn: float = 0.05

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        for col in ("alpha_column", "vol_column", "adv_column", "sector_column", "price_column"):
            if not getattr(self, col).strip():
                raise ConfigError(f"Risk4Config.{col} must be a non-empty column name")
        _require(self.top_n >= 1, "top_n", self.top_n, "at least 1")
        _require(self.zscore_clip > 0, "zscore_clip", self.zscore_clip, "> 0")
        _require(self.min_adv >= 0, "min_adv", self.min_adv, ">= 0")
        _require(0 < self.max_position_pct <= 1, "max_position_pct", self.max_position_pct, "in (0, 1]")
        _require(self.max_sector_mult > 0, "max_sector_mult", self.max_sector_mult, "> 0")
        _require(0 < self.max_sector_cap <= 1, "max_sector_cap", self.max_sector_cap, "in (0, 1]")
        _require(0 <= self.lambda_tc < 1, "lambda_tc", self.lambda_tc, "in [0, 1)")
        _require(0 <= self.max_turnover <= 1, "max_turnover", self.max_turnover, "in [0, 1]")
        _require(self.target_vol > 0, "target_vol", self.target_vol, "> 0")
        # Long-only cash account: vol targeting may only scale down (weights and picks sum to <= 1).
        _require(0 < self.max_gross <= 1, "max_gross", self.max_gross, "in (0, 1] (no leverage)")
        _require(self.cov_window >= 2, "cov_window", self.cov_window, "at least 2")
        _require(2 <= self.cov_min_obs <= self.cov_window, "cov_min_obs", self.cov_min_obs,
                 "between 2 and cov_window")
        _require(0 <= self.cov_shrinkage <= 1, "cov_shrinkage", self.cov_shrinkage, "in [0, 1]")
        _require(0 <= self.cov_fallback_corr < 1, "cov_fallback_corr", self.cov_fallback_corr, "in [0, 1)")
        _require(self.annualization >= 1, "annualization", self.annualization, "at least 1")
        _require(self.portfolio_value > 0, "portfolio_value", self.portfolio_value, "> 0")
        _require(self.gate_min_eligible_block >= 0, "gate_min_eligible_block", self.gate_min_eligible_block, ">= 0")
        _require(self.gate_min_eligible_warn >= self.gate_min_eligible_block, "gate_min_eligible_warn",
                 self.gate_min_eligible_warn, ">= gate_min_eligible_block")
        _require(0 <= self.gate_min_alpha_coverage <= 1, "gate_min_alpha_coverage",
                 self.gate_min_alpha_coverage, "in [0, 1]")
        _require(self.gate_expected_sectors >= 1, "gate_expected_sectors", self.gate_expected_sectors, "at least 1")
        _require(self.gate_turnover_warn >= 0, "gate_turnover_warn", self.gate_turnover_warn, ">= 0")
        _require(self.gate_position_warn > 0, "gate_position_warn", self.gate_position_warn, "> 0")

    def with_overrides(self, **overrides: Any) -> Risk4Config:
        """A copy with some parameters replaced; unknown names and wrong types fail with a clear error."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown Risk4Config parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        # Accept an int where a float is declared (e.g. portfolio_value=500000); __post_init__ checks the rest.
        fixed = {k: (float(v) if _FLOAT_FIELDS.get(k) and _is_int(v) else v) for k, v in overrides.items()}
        return dataclasses.replace(self, **fixed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_type(name: str, value: Any, declared: Any) -> None:
    kind = declared if isinstance(declared, str) else getattr(declared, "__name__", str(declared))
    if kind == "str":
        ok = isinstance(value, str)
    elif kind == "int":
        ok = _is_int(value)
    elif kind == "float":
        ok = isinstance(value, float) and math.isfinite(value)
    else:  # pragma: no cover - every field is str, int or float
        ok = True
    if not ok:
        raise ConfigError(f"Risk4Config.{name} must be a {'finite ' if kind == 'float' else ''}{kind}, "
                          f"got {value!r} ({type(value).__name__})")


def _require(ok: bool, name: str, value: Any, what: str) -> None:
    if not ok:
        raise ConfigError(f"Risk4Config.{name} must be {what}, got {value!r}")


_FLOAT_FIELDS = {f.name: f.type in ("float", float) for f in dataclasses.fields(Risk4Config)}

ML_CONFIG = Risk4Config(name="ml", alpha_column="alpha_ml_v2_tuned_clf", target_vol=0.25)
V8_CONFIG = Risk4Config(name="v8", alpha_column="alpha_composite_v8", target_vol=0.20)
CONFIGS: dict[str, Risk4Config] = {"ml": ML_CONFIG, "v8": V8_CONFIG}


def config_by_name(name: str) -> Risk4Config:
    """ML_CONFIG for "ml", V8_CONFIG for "v8" (case-insensitive)."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in CONFIGS:
        raise ConfigError(f"unknown Risk4 configuration {name!r}; known: {', '.join(CONFIGS)}")
    return CONFIGS[key]
