"""KillSwitches: the thresholds of the execution kill switches (broker/kill_switches.py), from the settings."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from kairos_dagster.broker.kill_switches import KillSwitchConfig
from kairos_dagster.settings import Settings


class KillSwitches(ConfigurableResource):
    """The seed's `ops.kill_switch` section. A tripped blocking switch refuses `--execute` until an override."""

    enabled: bool = Field(default=True, description="KAIROS_KILL_SWITCHES: 0 disables every switch")
    max_daily_loss_pct: float = Field(default=0.03, description="KAIROS_MAX_DAILY_LOSS_PCT: blocks beyond this "
                                                               "loss over the last session")
    min_live_sharpe: float = Field(default=0.5, description="KAIROS_MIN_LIVE_SHARPE: blocks below this trailing "
                                                            "live Sharpe")
    live_sharpe_weeks: int = Field(default=26, description="KAIROS_LIVE_SHARPE_WEEKS: tracked rebalances the live "
                                                           "Sharpe needs (armed from then on)")
    max_backtest_gap: float = Field(default=0.05, description="KAIROS_MAX_BACKTEST_GAP: warns beyond this gap "
                                                              "between live and backtest returns")

    @classmethod
    def from_settings(cls, settings: Settings) -> KillSwitches:
        return cls(enabled=settings.kill_switches, max_daily_loss_pct=settings.max_daily_loss_pct,
                   min_live_sharpe=settings.min_live_sharpe, live_sharpe_weeks=settings.live_sharpe_weeks,
                   max_backtest_gap=settings.max_backtest_gap)

    def config(self) -> KillSwitchConfig:
        """Raises ValueError naming a threshold out of range."""
        return KillSwitchConfig(enabled=self.enabled, max_daily_loss_pct=self.max_daily_loss_pct,
                                min_live_sharpe=self.min_live_sharpe, live_sharpe_weeks=self.live_sharpe_weeks,
                                max_backtest_gap=self.max_backtest_gap)
