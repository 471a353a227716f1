"""Asset check specs and per-week check events.

Every check has a description (the UI shows it beside the verdict): `specs` takes it from
CHECK_DESCRIPTIONS unless the caller gives one. A check of a weekly asset is partitioned like its asset,
so an evaluation in a one-week run names its week; `week_check_events` names each week in a run over a
range of weeks, for checks that are decided week by week.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    Output,
    PartitionsDefinition,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluation
from dagster._utils.warnings import disable_dagster_warnings

CHECK_DESCRIPTIONS: dict[str, str] = {
    # the shared feature checks (defs/features/checks.py)
    "unique_keys": "One row per key (ticker, date; per table for the sync tables): no duplicates stored.",
    "finite_values": "No infinite or NaN value in any float column (a blank is null, never NaN).",
    "null_rate_after_warmup": "WARN when a column's null share over the rows past its warm-up exceeds the ceiling.",
    "rows_match_universe": "Exactly one row per universe (ticker, date) of the week(s): nobody dropped or added.",
    "every_session_covered": "Every stored session of the window has a universe, except the first sessions of "
                             "the history (no 20-session ADV yet; counted).",
    "one_row_per_session": "One market return per session, except the warm-up at the start of the history.",
    "one_known_regime_per_session": "One regime per session, every one of bull/bear x normal_vol/high_vol, past "
                                    "the regime's warm-up.",
    "composite_ic_positive_to_date": "WARN when a composite's mean rank IC against ret_5d_f to date is not above 0.",
    # sync
    "valid_rows": "Every row the feed served passed validation (rejected rows are in sync_rejects, by reason).",
    "tickers_known": "Every stored row's ticker is in TICKERS for its table.",
    "dates_are_sessions": "Every stored date is an NYSE session.",
    "prices_valid": "Every stored price (open, high, low, close, closeadj) is positive, low <= open, close <= high, "
                    "and volume is not negative.",
    # ML
    "scorable_rows_scored": "Every universe row with a trained model before its date has an alpha (rows before the "
                            "first training window are blank by design and counted).",
    "oos_ic_positive": "WARN when the model's trailing out-of-sample rank IC over the last K weeks is not above 0 "
                       "or is below alpha_composite_v8's over the same weeks (K: KAIROS_LIVE_SHARPE_WEEKS).",
    # feat_matrix_v2
    "ml_coverage": "Every row of a week that the ML assets score has both alphas.",
    "freshness": "The matrix holds the week's last session (the rebalance's signal date).",
    "no_target_columns": "No forward-looking (target) column is in the matrix.",
    "features_past_warmup": "No feature is null on a rebalance date once its documented warm-up (counted per "
                            "ticker) is over; rows still inside a warm-up are counted, not failed.",
    # backtest
    "equity_positive": "Every strategy's equity stays above zero.",
    "zero_cost_when_no_trade": "A strategy pays no cost on a session without a trade.",
}


def specs(asset: str, names: Iterable[str], partitions_def: PartitionsDefinition | None = None,
          *, descriptions: Mapping[str, str] | None = None, blocking: Iterable[str] = ()) -> list[AssetCheckSpec]:
    """One spec per name, described (the caller's description, else CHECK_DESCRIPTIONS) and partitioned
    like the asset. A name with no description is a programming error, raised at import."""
    blocking = set(blocking)
    out = []
    for name in names:
        text = (descriptions or {}).get(name) or CHECK_DESCRIPTIONS.get(name)
        if not text:
            raise KeyError(f"asset check {asset}.{name} has no description (defs/checks.CHECK_DESCRIPTIONS)")
        out.append(spec(name, asset, text, partitions_def, blocking=name in blocking))
    return out


def spec(name: str, asset: str, description: str, partitions_def: PartitionsDefinition | None = None,
         *, blocking: bool = False) -> AssetCheckSpec:
    # Partitioned checks are a Dagster preview feature; the warning says only that, at every import.
    with disable_dagster_warnings():
        return AssetCheckSpec(name, asset=asset, description=description, blocking=blocking,
                              partitions_def=partitions_def)


def week_check_events(context: AssetExecutionContext, asset: str, check_name: str,
                      per_week: Sequence[tuple[str, AssetCheckResult]]) -> Iterator:
    """A check decided week by week: in a one-week run the week's AssetCheckResult (Dagster names its
    partition); over a range, the check's output once and one evaluation per week, each naming its week."""
    if context.has_partition_key or not per_week:
        if per_week:
            yield per_week[-1][1]
        return
    key = AssetCheckKey(AssetKey(asset), check_name)
    yield Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(key))
    blocking = context.assets_def.get_spec_for_check_key(key).blocking
    for week, result in per_week:
        yield AssetCheckEvaluation(
            asset_key=key.asset_key, check_name=check_name, passed=result.passed, metadata=result.metadata,
            severity=result.severity or AssetCheckSeverity.ERROR, description=result.description,
            blocking=blocking, partition=week)
