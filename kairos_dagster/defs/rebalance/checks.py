"""Pre-rebalance gates (seed 000 §6.2 checklist, §6.4 alert table) as asset checks on `rebalance_picks`.

The decisions and the gate list are `portfolio.gates`; this module declares the checks (blocking ones with
`blocking=True`, partitioned like the picks) and renders each week's verdicts as check results: one per
gate and week, naming the week, in a run of one week or of many (defs/checks.week_check_events).
"""

from collections.abc import Iterator, Sequence

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MetadataValue,
    PartitionsDefinition,
)

from kairos_dagster.defs.checks import spec, week_check_events
from kairos_dagster.defs.partitions import week_key
from kairos_dagster.portfolio.gates import GATES, GateResult, verdict
from kairos_dagster.portfolio.rebalance_weeks import WeekRebalance
from kairos_dagster.warehouse.summary import significant

ASSET = "rebalance_picks"


def rebalance_gate_specs(partitions_def: PartitionsDefinition | None = None, asset: str = ASSET) -> list[AssetCheckSpec]:
    return [spec(name, asset, desc, partitions_def, blocking=blocking) for name, blocking, desc in GATES]


def _value(value: object) -> MetadataValue | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return MetadataValue.int(value)
    if isinstance(value, float):
        return MetadataValue.float(significant(value))
    return MetadataValue.text(str(value))


def gate_week_result(week: WeekRebalance, g: GateResult, asset: str = ASSET) -> AssetCheckResult:
    """One gate's verdict for one week: a failed blocking gate (or one that could not be evaluated) at ERROR,
    a warn gate at WARN; a warn gate with nothing to judge passes, saying it was skipped and why."""
    md = {"rebalance_date": MetadataValue.text(str(week.plan.rebalance_date)),
          "signal_date": MetadataValue.text(str(week.plan.signal_date)),
          "verdict": MetadataValue.text(verdict(g))}
    value = _value(g.value)
    if value is not None:
        md["value"] = value
    return AssetCheckResult(asset_key=asset, check_name=g.name, passed=g.passed,
                            severity=AssetCheckSeverity.ERROR if g.severity == "block" else AssetCheckSeverity.WARN,
                            description=g.message if g.skipped else f"{verdict(g)}: {g.message}", metadata=md)


def gate_check_results(weeks: Sequence[WeekRebalance], asset: str = ASSET) -> dict[str, list[tuple[str, AssetCheckResult]]]:
    """Per gate, the (week, result) of every week of the run, oldest first."""
    return {name: [(week_key(w.plan.rebalance_date), gate_week_result(w, g, asset))
                   for w in weeks for g in w.gates if g.name == name]
            for name, _, _ in GATES}


def gate_check_events(context: AssetExecutionContext, weeks: Sequence[WeekRebalance], asset: str = ASSET) -> Iterator:
    """The gates' check events of the run; a run with no rebalance week says so on every gate."""
    for name, per_week in gate_check_results(weeks, asset).items():
        if per_week:
            yield from week_check_events(context, asset, name, per_week)
        else:
            yield AssetCheckResult(asset_key=asset, check_name=name, passed=True,
                                   description="no rebalance date in the run's weeks: nothing to gate",
                                   metadata={"weeks": MetadataValue.int(0)})
