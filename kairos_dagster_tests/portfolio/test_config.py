import dataclasses

import pytest

from kairos_dagster.portfolio.config import ML_CONFIG, V8_CONFIG, ConfigError, Risk4Config, config_by_name


def test_named_configs_carry_the_seed_parameters():
    assert ML_CONFIG.alpha_column == "alpha_ml_v2_tuned_clf" and ML_CONFIG.target_vol == 0.25
    assert V8_CONFIG.alpha_column == "alpha_composite_v8" and V8_CONFIG.target_vol == 0.20
    c = ML_CONFIG
    assert (c.top_n, c.min_adv, c.max_position_pct, c.max_sector_mult, c.max_sector_cap) == (75, 2e6, 0.03, 2.0, 0.40)
    assert (c.lambda_tc, c.max_turnover, c.max_gross, c.portfolio_value, c.zscore_clip) == (0.5, 0.30, 1.0, 1e5, 3.0)
    assert (c.gate_min_eligible_block, c.gate_min_eligible_warn, c.gate_min_alpha_coverage) == (50, 500, 0.95)
    assert (c.gate_expected_sectors, c.gate_turnover_warn, c.gate_position_warn) == (11, 0.50, 0.05)
    assert config_by_name("ML") is ML_CONFIG and config_by_name("v8") is V8_CONFIG
    with pytest.raises(ConfigError, match="unknown Risk4 configuration 'v9'"):
        config_by_name("v9")


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ML_CONFIG.top_n = 10  # type: ignore[misc]


def test_with_overrides_validates_names_types_and_ranges():
    c = ML_CONFIG.with_overrides(top_n=50, portfolio_value=500000)
    assert c.top_n == 50 and c.portfolio_value == 500000.0 and isinstance(c.portfolio_value, float)
    assert ML_CONFIG.top_n == 75  # the original is untouched
    with pytest.raises(ConfigError, match="unknown Risk4Config parameter.*top_m"):
        ML_CONFIG.with_overrides(top_m=10)
    with pytest.raises(ConfigError, match="top_n must be a int"):
        ML_CONFIG.with_overrides(top_n=10.5)
    with pytest.raises(ConfigError, match="top_n must be a int"):
        ML_CONFIG.with_overrides(top_n=True)
    with pytest.raises(ConfigError, match="target_vol must be a finite float"):
        ML_CONFIG.with_overrides(target_vol="0.2")
    with pytest.raises(ConfigError, match="target_vol must be a finite float"):
        ML_CONFIG.with_overrides(target_vol=float("nan"))
    with pytest.raises(ConfigError, match="lambda_tc must be in"):
        ML_CONFIG.with_overrides(lambda_tc=1.0)
    with pytest.raises(ConfigError, match="max_gross must be in .0, 1. .no leverage"):
        ML_CONFIG.with_overrides(max_gross=1.5)
    with pytest.raises(ConfigError, match="max_position_pct must be in"):
        Risk4Config(max_position_pct=0.0)
    with pytest.raises(ConfigError, match="alpha_column must be a non-empty"):
        ML_CONFIG.with_overrides(alpha_column=" ")
