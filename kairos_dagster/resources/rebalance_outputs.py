"""Where the rebalance writes its week folders by default."""

from __future__ import annotations

from dagster import ConfigurableResource

from kairos_dagster.settings import Settings


class RebalanceOutputs(ConfigurableResource):
    """Where the rebalance folders go by default: $KAIROS_OUTPUT_DIR/rebalance (run config may override)."""

    path: str

    @classmethod
    def from_settings(cls, settings: Settings) -> RebalanceOutputs:
        return cls(path=str(settings.output_dir / "rebalance"))
