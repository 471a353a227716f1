"""Pre-rebalance gates (seed 000 §6.2 checklist, §6.4 alert table) as asset checks on `rebalance_picks`.

The decisions are `portfolio.gates.evaluate_gates`; this module declares the checks (blocking ones with
`blocking=True`) and renders the per-week verdicts as AssetCheckResults and text. A run over several
weeks yields one result per gate: it passes when every week passed; its metadata lists the weeks.
"""

from collections.abc import Sequence

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MetadataValue

from kairos_dagster.portfolio.gates import GateResult
from kairos_dagster.portfolio.rebalance_weeks import WeekRebalance

ASSET = "rebalance_picks"
# (name, blocking, description) in evaluate_gates' order.
GATES: tuple[tuple[str, bool, str], ...] = (
    ("feat_matrix_has_signal_date", True, "feat_matrix_v2 holds the signal date (otherwise the data is stale: block)"),
    ("ml_alpha_coverage", True, "the alpha column is present for >= 95% of ADV-eligible rows (block)"),
    ("min_eligible_block", True, "at least 50 eligible stocks (block)"),
    ("min_eligible_warn", False, "at least 500 eligible stocks (warn)"),
    ("sector_coverage", False, "all 11 sectors in the eligible universe (warn)"),
    ("turnover", False, "one-way turnover vs prior <= 50% (warn)"),
    ("max_position", False, "no position above 5% (warn)"),
)
GATE_NAMES = tuple(g[0] for g in GATES)


def rebalance_gate_specs(asset: str = ASSET) -> list[AssetCheckSpec]:
    return [AssetCheckSpec(name, asset=asset, blocking=blocking, description=desc) for name, blocking, desc in GATES]


def _verdict(g: GateResult) -> str:
    return "PASS" if g.passed else ("BLOCK" if g.severity == "block" else "WARN")


def gate_check_results(weeks: Sequence[WeekRebalance], asset: str = ASSET) -> list[AssetCheckResult]:
    """One AssetCheckResult per gate over all weeks of the run (failed block gates at ERROR severity)."""
    out = []
    for name, blocking, _ in GATES:
        per_week = [(w, g) for w in weeks for g in w.gates if g.name == name]
        failed = [(w, g) for w, g in per_week if not g.passed]
        blocks = any(g.severity == "block" for _, g in failed)
        shown = failed or per_week[-1:]
        md = {
            "weeks": MetadataValue.int(len(per_week)),
            "failed_weeks": MetadataValue.int(len(failed)),
            "detail": MetadataValue.md("\n".join(
                f"- {w.plan.rebalance_date} (signal {w.plan.signal_date}): **{_verdict(g)}** {g.message}"
                for w, g in shown[:20]) or "_no weeks in the run_"),
        }
        if per_week:
            last = per_week[-1][1].value
            if isinstance(last, bool) or last is None:
                pass
            elif isinstance(last, int):
                md["value"] = MetadataValue.int(last)
            elif isinstance(last, float):
                md["value"] = MetadataValue.float(last)
            else:
                md["value"] = MetadataValue.text(str(last))
        out.append(AssetCheckResult(
            asset_key=asset, check_name=name, passed=not failed,
            severity=AssetCheckSeverity.ERROR if blocks or blocking else AssetCheckSeverity.WARN,
            description=shown[0][1].message if shown else None, metadata=md,
        ))
    return out


def format_gates(week: WeekRebalance) -> str:
    """The gate verdicts of one week as text lines (CLI)."""
    lines = [f"Gates for rebalance {week.plan.rebalance_date} (signal date {week.plan.signal_date}):"]
    lines += [f"  [{_verdict(g):5}] {g.name}: {g.message}" for g in week.gates]
    return "\n".join(lines)
