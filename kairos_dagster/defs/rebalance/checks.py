"""Pre-rebalance gates (seed 000 §6.2 checklist, §6.4 alert table) as asset checks on `rebalance_picks`.

The decisions and the gate list are `portfolio.gates`; this module declares the checks (blocking ones with
`blocking=True`) and renders the per-week verdicts as AssetCheckResults and text. A run over several
weeks yields one result per gate: it passes when every week passed; its metadata lists the weeks.
"""

from collections.abc import Sequence

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MetadataValue

from kairos_dagster.portfolio.gates import GATES, verdict
from kairos_dagster.portfolio.rebalance_weeks import WeekRebalance
from kairos_dagster.warehouse.summary import significant

ASSET = "rebalance_picks"


def rebalance_gate_specs(asset: str = ASSET) -> list[AssetCheckSpec]:
    return [AssetCheckSpec(name, asset=asset, blocking=blocking, description=desc) for name, blocking, desc in GATES]


def gate_check_results(weeks: Sequence[WeekRebalance], asset: str = ASSET) -> list[AssetCheckResult]:
    """One AssetCheckResult per gate over all weeks of the run (failed block gates at ERROR severity)."""
    out = []
    for name, blocking, _ in GATES:
        per_week = [(w, g) for w in weeks for g in w.gates if g.name == name]
        failed = [(w, g) for w, g in per_week if not g.passed]
        skipped = [(w, g) for w, g in per_week if g.skipped]
        blocks = any(g.severity == "block" for _, g in failed)
        # A warn gate skipped in every week says why (it passes: nothing was there to warn about).
        shown = failed or (skipped if skipped and len(skipped) == len(per_week) else per_week[-1:])
        md = {
            "weeks": MetadataValue.int(len(per_week)),
            "failed_weeks": MetadataValue.int(len(failed)),
            "skipped_weeks": MetadataValue.int(len(skipped)),
            "detail": MetadataValue.md("\n".join(
                f"- {w.plan.rebalance_date} (signal {w.plan.signal_date}): **{verdict(g)}** {g.message}"
                for w, g in shown[:20]) or "_no weeks in the run_"),
        }
        if per_week:
            last = per_week[-1][1].value
            if isinstance(last, bool) or last is None:
                pass
            elif isinstance(last, int):
                md["value"] = MetadataValue.int(last)
            elif isinstance(last, float):
                md["value"] = MetadataValue.float(significant(last))
            else:
                md["value"] = MetadataValue.text(str(last))
        out.append(AssetCheckResult(
            asset_key=asset, check_name=name, passed=not failed,
            severity=AssetCheckSeverity.ERROR if blocks or blocking else AssetCheckSeverity.WARN,
            description=shown[0][1].message if shown else None, metadata=md,
        ))
    return out
