"""Data-quality checks shared by every feature table: keys, finiteness, null rates, row counts."""

from dataclasses import dataclass

import polars as pl
from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MetadataValue, PartitionsDefinition

from kairos_dagster.defs import checks
from kairos_dagster.warehouse.ordering import in_key_order
from kairos_dagster.warehouse.summary import markdown_table, null_rates, significant

FEATURE_CHECKS = ("unique_keys", "finite_values", "null_rate_after_warmup", "rows_match_universe")


@dataclass(frozen=True)
class FeatureCheckConfig:
    null_ceiling: float = 0.25  # worst column's null share over rows past warm-up
    check_nulls: bool = True


def duplicate_keys(df: pl.DataFrame) -> int:
    """Rows beyond the first of each (ticker, date). Tables are stored sorted by (ticker, date): a
    strictly increasing key sequence proves uniqueness in one pass; otherwise count with a hash."""
    if in_key_order(df, ["ticker", "date"], strict=True):
        return 0
    return df.height - df.select("ticker", "date").unique().height


def feature_check_specs(asset: str, config: FeatureCheckConfig = FeatureCheckConfig(),
                        partitions_def: PartitionsDefinition | None = None) -> list[AssetCheckSpec]:
    names = [c for c in FEATURE_CHECKS if config.check_nulls or c != "null_rate_after_warmup"]
    return checks.specs(asset, names, partitions_def)


def feature_check_results(
    df: pl.DataFrame,
    universe_rows: int,
    past_warmup: pl.Series | None,
    config: FeatureCheckConfig = FeatureCheckConfig(),
) -> list[AssetCheckResult]:
    """Evaluate the shared checks on an asset's output for its window."""
    dup = duplicate_keys(df)
    floats = [c for c, t in df.schema.items() if t.is_float()]
    nonfinite = (
        df.select(pl.sum_horizontal([(pl.col(c).is_infinite() | pl.col(c).is_nan()).sum() for c in floats])).item()
        if floats and df.height
        else 0
    )
    results = [
        AssetCheckResult(check_name="unique_keys", passed=dup == 0, metadata={"duplicate_rows": dup}),
        AssetCheckResult(check_name="finite_values", passed=int(nonfinite) == 0,
                         metadata={"non_finite_values": int(nonfinite)}),
        AssetCheckResult(check_name="rows_match_universe", passed=df.height == universe_rows,
                         metadata={"rows": df.height, "universe_rows": universe_rows}),
    ]
    if config.check_nulls:
        scope = df if past_warmup is None else df.filter(past_warmup)
        rates = null_rates(scope)
        worst = float(rates.get_column("null_rate").max() or 0.0) if scope.height else 0.0
        results.append(
            AssetCheckResult(
                check_name="null_rate_after_warmup",
                passed=worst <= config.null_ceiling,
                severity=AssetCheckSeverity.WARN,
                metadata={
                    "rows_past_warmup": scope.height,
                    "worst_null_rate": significant(worst),
                    "ceiling": config.null_ceiling,
                    "null_rates": MetadataValue.md(markdown_table(rates.head(10))),
                },
            )
        )
    return results


def session_coverage_result(check_name: str, sessions: set, covered: set, warmup: set, *,
                            missing_label: str, duplicate_rows: int = 0,
                            extra: dict | None = None) -> AssetCheckResult:
    """Every stored session of the window has output, except the warm-up sessions at the very start of
    the stored history (exempt, and counted); the uncovered ones are listed. `duplicate_rows`: rows
    beyond one per session, for outputs that must have exactly one."""
    exempt = sessions & warmup
    missing = sorted(sessions - exempt - covered)
    return AssetCheckResult(check_name=check_name, passed=not missing and duplicate_rows == 0, metadata={
        **(extra or {}),
        "duplicate_rows": duplicate_rows,
        missing_label: MetadataValue.text(", ".join(map(str, missing)) or "none"),
        "warmup_sessions_exempt": MetadataValue.int(len(exempt)),
    })
