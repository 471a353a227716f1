"""Where the backtest writes its HTML report."""

from __future__ import annotations

from dagster import ConfigurableResource

from kairos_dagster.settings import Settings


class BacktestOutputs(ConfigurableResource):
    """The backtest report's folder: $KAIROS_OUTPUT_DIR/backtest (run config may override)."""

    path: str

    @classmethod
    def from_settings(cls, settings: Settings) -> BacktestOutputs:
        return cls(path=str(settings.output_dir / "backtest"))
