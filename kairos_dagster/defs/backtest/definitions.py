"""The backtest domain: the weekly strategy replayed over history and strategy_stats."""

from __future__ import annotations

from dagster import Definitions, PartitionsDefinition

from kairos_dagster.defs.backtest.assets import build_backtest_assets


def build_defs(weekly: PartitionsDefinition) -> Definitions:
    return Definitions(assets=build_backtest_assets(weekly))
