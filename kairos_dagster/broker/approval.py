"""Picks content hash and approval validation (pure).

An approval is bound to the exact picks it approved: the hash is over the content (rows sorted,
columns sorted, numbers normalized), so rewriting the same picks keeps the approval valid while any
changed row, weight or share count invalidates it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

# Numbers are rounded to this many decimals before hashing so 125, 125.0 and 125.0000000000001
# (a float round-trip through CSV) hash the same.
HASH_DECIMALS = 9


class ApprovalError(ValueError):
    """An approval record that cannot be read (names the field)."""


def _canonical(picks: pl.DataFrame) -> bytes:
    if "ticker" not in picks.columns:
        raise ApprovalError(f"picks have no 'ticker' column; got {picks.columns}")
    if picks.height == 0:
        raise ApprovalError("picks are empty: nothing to approve")
    cols = sorted(picks.columns)
    exprs = []
    for c in cols:
        dtype = picks.schema[c]
        if dtype.is_numeric():
            # Float64 then fixed decimals: ints and floats of equal value give equal text.
            e = pl.col(c).cast(pl.Float64).round(HASH_DECIMALS)
            e = pl.when(e == 0).then(0.0).otherwise(e)  # -0.0 == 0.0
            exprs.append(e.cast(pl.String).alias(c))
        else:
            exprs.append(pl.col(c).cast(pl.String).str.strip_chars().alias(c))
    canon = picks.select(exprs).fill_null("").sort(cols)
    return canon.write_csv(include_header=True, line_terminator="\n").encode()


def picks_content_hash(picks: pl.DataFrame | str | Path) -> str:
    """SHA-256 hex digest of the picks content (a frame, or a picks.csv path)."""
    if not isinstance(picks, pl.DataFrame):
        path = Path(picks)
        if not path.exists():
            raise FileNotFoundError(f"picks file not found: {path}")
        picks = pl.read_csv(path, infer_schema_length=None)
    return hashlib.sha256(_canonical(picks)).hexdigest()


@dataclass(frozen=True)
class ApprovalRecord:
    picks_hash: str
    approved_by: str
    approved_at: dt.datetime
    rebalance_date: dt.date | None = None
    note: str | None = None
    status: str = "approved"  # "approved" | "rejected"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["approved_at"] = self.approved_at.isoformat()
        d["rebalance_date"] = self.rebalance_date.isoformat() if self.rebalance_date else None
        return d


def make_approval(picks_hash: str, approved_by: str, *, approved_at: dt.datetime,
                  rebalance_date: dt.date | None = None, note: str | None = None) -> ApprovalRecord:
    if not approved_by.strip():
        raise ApprovalError("approved_by must name the person approving")
    return ApprovalRecord(picks_hash=picks_hash, approved_by=approved_by.strip(), approved_at=approved_at,
                          rebalance_date=rebalance_date, note=note)


def _coerce(record: ApprovalRecord | Mapping[str, Any]) -> ApprovalRecord:
    if isinstance(record, ApprovalRecord):
        return record
    missing = [k for k in ("picks_hash", "approved_by", "approved_at") if not record.get(k)]
    if missing:
        raise ApprovalError(f"approval record is missing field(s) {missing}")
    at = record["approved_at"]
    rd = record.get("rebalance_date")
    try:
        at = at if isinstance(at, dt.datetime) else dt.datetime.fromisoformat(str(at))
        rd = rd if (rd is None or isinstance(rd, dt.date)) else dt.date.fromisoformat(str(rd))
    except ValueError as e:
        raise ApprovalError(f"approval record has an unreadable date: {e}") from None
    return ApprovalRecord(picks_hash=str(record["picks_hash"]), approved_by=str(record["approved_by"]),
                          approved_at=at, rebalance_date=rd, note=record.get("note"),
                          status=str(record.get("status") or "approved"))


@dataclass(frozen=True)
class ApprovalDecision:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    note: str | None = None  # the approval note (turnover above the limit needs an override record, not a note)

    def raise_if_refused(self) -> None:
        if not self.ok:
            from kairos_dagster.broker.orders import ExecutionRefusedError
            raise ExecutionRefusedError("execution refused: " + "; ".join(self.reasons))


def validate_approval(approval_record: ApprovalRecord | Mapping[str, Any] | None, picks_hash: str, *,
                      live: bool, auto_paper: bool, rebalance_date: dt.date | None = None) -> ApprovalDecision:
    """Decide whether orders for these picks may be sent.

    Live needs an approval whose hash matches the current picks. Paper may run without one only
    with auto_paper on. An approval that exists but does not match (picks changed after approval),
    was rejected, or is for another rebalance date refuses both live and paper, even with auto_paper:
    a stale approval means someone reviewed different picks.
    """
    mode = "live" if live else "paper"
    if approval_record is None:
        if live:
            return ApprovalDecision(False, ["live trading needs an approval of these picks (none found); "
                                            "approve the picks first"])
        if auto_paper:
            return ApprovalDecision(True, ["paper without approval: auto_paper is on"])
        return ApprovalDecision(False, ["paper execution needs an approval of these picks or "
                                        "KAIROS_AUTO_PAPER=1 (none found)"])
    try:
        rec = _coerce(approval_record)
    except ApprovalError as e:
        return ApprovalDecision(False, [f"{mode}: {e}"])
    reasons = []
    if rec.status != "approved":
        reasons.append(f"approval status is {rec.status!r}, not 'approved'")
    if rec.picks_hash != picks_hash:
        reasons.append(f"picks changed after approval (approved hash {rec.picks_hash[:12]}…, current "
                       f"{picks_hash[:12]}…); review and approve the new picks")
    if rebalance_date is not None and rec.rebalance_date is not None and rec.rebalance_date != rebalance_date:
        reasons.append(f"approval is for rebalance {rec.rebalance_date}, not {rebalance_date}")
    if reasons:
        return ApprovalDecision(False, [f"{mode}: {r}" for r in reasons])
    return ApprovalDecision(True, [f"approved by {rec.approved_by} at {rec.approved_at.isoformat()}"], rec.note)
