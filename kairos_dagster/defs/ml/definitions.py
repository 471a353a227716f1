"""The ML domain: the walk-forward predictions (Phase 6) and feat_matrix_v2 (Phase 7)."""

from __future__ import annotations

from dagster import Definitions, PartitionsDefinition

from kairos_dagster.defs.ml.assets import build_ml_assets
from kairos_dagster.defs.ml.matrix import build_matrix_assets
from kairos_dagster.defs.side_tables import side_table_specs


def build_defs(weekly: PartitionsDefinition) -> Definitions:
    return Definitions(assets=[*build_ml_assets(weekly), *build_matrix_assets(weekly), *side_table_specs("ml")])
