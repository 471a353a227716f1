"""Pre-rebalance gates (seed 000 §6.2 checklist and §6.4 alert table).

Each gate is a GateResult; a failed 'block' gate stops the rebalance, a failed 'warn' gate asks for a
review. The asset checks and the CLI render these; this module only decides.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from kairos_dagster.portfolio.config import Risk4Config
from kairos_dagster.portfolio.risk4 import PortfolioResult

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

Severity = Literal["block", "warn"]


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    severity: Severity
    message: str
    value: float | int | str | None = None
    evaluated: bool = True  # False: its input (the portfolio) does not exist; a warn gate is then skipped

    @property
    def blocks(self) -> bool:
        return not self.passed and self.severity == "block"

    @property
    def skipped(self) -> bool:
        return not self.evaluated and self.severity == "warn"


def evaluate_gates(signal_date: dt.date, feat_matrix_dates: Iterable[dt.date], result: PortfolioResult | None,
                   config: Risk4Config) -> list[GateResult]:
    """All gates in a fixed order. `feat_matrix_dates`: the dates feat_matrix_v2 holds (or just its max).

    `result` is None when the portfolio could not be built (e.g. the signal date is missing). The blocking
    gates that need it then block, recorded as 'not evaluated' with the reason, rather than pass by default;
    the warn-level ones are skipped with the reason (they neither pass nor warn: nothing was there to judge).
    """
    dates = sorted(set(feat_matrix_dates))
    latest = dates[-1] if dates else None
    has_date = signal_date in set(dates)
    gates = [GateResult(
        "feat_matrix_has_signal_date", has_date, "block",
        f"feat_matrix_v2 has signal date {signal_date}" if has_date
        else f"CRITICAL: feat_matrix_v2 has no rows at signal date {signal_date} (latest {latest}); data is stale",
        str(latest) if latest else None)]
    if result is None:
        why = "no portfolio was built" + ("" if has_date else f" (no feat_matrix_v2 rows at {signal_date})")
        for name, blocking, _ in GATES[1:]:
            gates.append(GateResult(name, False, "block", f"not evaluated: {why}", None, evaluated=False) if blocking
                         else GateResult(name, True, "warn", f"skipped: {why}", None, evaluated=False))
        return gates

    cov = result.alpha_coverage
    gates.append(GateResult(
        "ml_alpha_coverage", cov >= config.gate_min_alpha_coverage, "block",
        f"{config.alpha_column} present for {cov:.1%} of ADV-eligible rows "
        f"({result.n_missing_alpha} missing; need >= {config.gate_min_alpha_coverage:.0%})", cov))
    n = result.n_eligible
    gates.append(GateResult(
        "min_eligible_block", n >= config.gate_min_eligible_block, "block",
        f"{n} eligible stocks (block below {config.gate_min_eligible_block})", n))
    gates.append(GateResult(
        "min_eligible_warn", n >= config.gate_min_eligible_warn, "warn",
        f"{n} eligible stocks (warn below {config.gate_min_eligible_warn})", n))
    n_sec = result.universe_sector_weights.height
    gates.append(GateResult(
        "sector_coverage", n_sec >= config.gate_expected_sectors, "warn",
        f"{n_sec} of {config.gate_expected_sectors} sectors in the eligible universe", n_sec))
    to = result.turnover_final
    if result.fresh_start:
        gates.append(GateResult("turnover", True, "warn", f"fresh start (no prior holdings); initial build {to:.1%}", to))
    else:
        gates.append(GateResult(
            "turnover", to <= config.gate_turnover_warn, "warn",
            f"one-way turnover vs prior {to:.1%} (warn above {config.gate_turnover_warn:.0%})", to))
    top = result.picks.sort(["weight", "ticker"], descending=[True, False]).head(1)
    w_max = float(top.get_column("weight")[0]) if top.height else 0.0
    who = f" ({top.get_column('ticker')[0]})" if top.height else ""
    gates.append(GateResult(
        "max_position", w_max <= config.gate_position_warn, "warn",
        f"largest position {w_max:.2%}{who} (warn above {config.gate_position_warn:.0%})", w_max))
    return gates


def blocking_failures(gates: Iterable[GateResult]) -> list[GateResult]:
    """The failed 'block' gates; the rebalance may proceed only when this is empty."""
    return [g for g in gates if g.blocks]


def verdict(g: GateResult) -> str:
    """PASS, BLOCK (a failed blocking gate), WARN, or SKIP (a warn gate with nothing to judge)."""
    if g.skipped:
        return "SKIP"
    return "PASS" if g.passed else ("BLOCK" if g.severity == "block" else "WARN")


def format_gates(week) -> str:
    """The gate verdicts of one week (a rebalance_weeks.WeekRebalance) as text lines (CLI)."""
    lines = [f"Gates for rebalance {week.plan.rebalance_date} (signal date {week.plan.signal_date}):"]
    lines += [f"  [{verdict(g):5}] {g.name}: {g.message}" for g in week.gates]
    return "\n".join(lines)
