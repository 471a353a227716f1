"""The gates travel with the picks: each rebalance's gate verdicts, stored in the warehouse.

`rebalance` records every gate of every week it evaluated (`rebalance_gate_results`: status, severity,
reason, and the content hash of the picks they were evaluated on; a blocked week has no picks and no
hash), in the same transaction for all its weeks. `execution` enforces them from the warehouse, never
from the Dagster home, so a copied warehouse with a fresh home cannot bypass a failed gate:

- no evaluation for the rebalance date (hand-made picks): `gates_not_evaluated`;
- an evaluation on other picks (the file changed, or another rebalance): `gates_evaluated_on_other_picks`;
- a failed blocking gate: that gate.

Each can be overridden only by a typed record in `gate_overrides` (who: the given name, the OS user and
the host; when; which gate; the picks hash; the note), bound to that picks hash.
"""

from __future__ import annotations

import datetime as dt
import getpass
import socket
from collections.abc import Sequence

import duckdb
import polars as pl

from kairos_dagster.warehouse import store

GATE_RESULTS_TABLE = "rebalance_gate_results"
OVERRIDES_TABLE = "gate_overrides"
NOT_EVALUATED = "gates_not_evaluated"
OTHER_PICKS = "gates_evaluated_on_other_picks"
GATE_RESULTS_SCHEMA = {
    "rebalance_date": pl.Date, "signal_date": pl.Date, "gate": pl.String, "passed": pl.Boolean,
    "blocking": pl.Boolean, "severity": pl.String, "message": pl.String, "picks_hash": pl.String,
    "evaluated_at": pl.Datetime("us", "UTC"), "run_id": pl.String,
}
OVERRIDE_SCHEMA = {
    "rebalance_date": pl.Date, "gate": pl.String, "picks_hash": pl.String, "overridden_by": pl.String, "os_user": pl.String,
    "host": pl.String, "overridden_at": pl.Datetime("us", "UTC"), "note": pl.String,
}


class GateOverrideError(ValueError):
    """An override the operator cannot record (no note, no name, unknown gate)."""


def gate_rows(rebalance_date: dt.date, signal_date: dt.date, gates: Sequence, picks_hash: str | None, *,
              blocking: set[str], run_id: str, now: dt.datetime) -> pl.DataFrame:
    """One row per gate of one week (`gates`: portfolio.gates.GateResult)."""
    return pl.DataFrame([{
        "rebalance_date": rebalance_date, "signal_date": signal_date, "gate": g.name, "passed": bool(g.passed),
        "blocking": g.name in blocking, "severity": g.severity, "message": g.message, "picks_hash": picks_hash,
        "evaluated_at": now, "run_id": run_id} for g in gates], schema=GATE_RESULTS_SCHEMA)


def weeks_gate_rows(weeks: Sequence, picks_hashes: Sequence[str | None], *, blocking: set[str], run_id: str,
                    now: dt.datetime) -> pl.DataFrame:
    """The rows of every week a rebalance evaluated (`weeks`: rebalance_weeks.WeekRebalance, blocked ones
    included), each with the hash of the picks its gates were evaluated on (None for a blocked week)."""
    return pl.concat([gate_rows(w.plan.rebalance_date, w.plan.signal_date, w.gates, h, blocking=blocking,
                                run_id=run_id, now=now) for w, h in zip(weeks, picks_hashes, strict=True)])


def record_gate_results(con: duckdb.DuckDBPyConnection, rows: pl.DataFrame) -> None:
    """Replace the stored verdicts of the rows' rebalance dates, in one transaction."""
    if rows.height:
        store.upsert_rows(con, GATE_RESULTS_TABLE, rows, ["rebalance_date"])


def record_override(con: duckdb.DuckDBPyConnection, rebalance_date: dt.date, gate: str, picks_hash: str, *,
                    by: str, note: str, now: dt.datetime | None = None) -> pl.DataFrame:
    """A typed override of one gate for these picks: who (name, OS user, host), when, and why."""
    if not by.strip():
        raise GateOverrideError("an override needs the operator's name (--by)")
    if not note.strip():
        raise GateOverrideError("an override needs a note saying why (--note)")
    if not gate.strip():
        raise GateOverrideError("an override names the gate it overrides (--gate)")
    row = pl.DataFrame([{
        "rebalance_date": rebalance_date, "gate": gate.strip(), "picks_hash": picks_hash, "overridden_by": by.strip(),
        "os_user": getpass.getuser(), "host": socket.gethostname(), "overridden_at": now or dt.datetime.now(dt.UTC),
        "note": note.strip()}], schema=OVERRIDE_SCHEMA)
    store.upsert_rows(con, OVERRIDES_TABLE, row, ["rebalance_date", "gate", "picks_hash"])
    return row


def stored_gates(con: duckdb.DuckDBPyConnection, rebalance_date: dt.date) -> pl.DataFrame:
    if not store.table_exists(con, GATE_RESULTS_TABLE):
        return pl.DataFrame(schema=GATE_RESULTS_SCHEMA)
    return con.execute(f"SELECT * FROM {GATE_RESULTS_TABLE} WHERE rebalance_date = ? ORDER BY gate",
                       [rebalance_date]).pl()


def overrides(con: duckdb.DuckDBPyConnection, rebalance_date: dt.date, picks_hash: str) -> pl.DataFrame:
    if not store.table_exists(con, OVERRIDES_TABLE):
        return pl.DataFrame(schema=OVERRIDE_SCHEMA)
    return con.execute(f"SELECT * FROM {OVERRIDES_TABLE} WHERE rebalance_date = ? AND picks_hash = ? ORDER BY overridden_at",
                       [rebalance_date, picks_hash]).pl()


def enforced_failures(con: duckdb.DuckDBPyConnection, rebalance_date: dt.date,
                      picks_hash: str) -> tuple[list[str], str]:
    """(gate failures that block execution of these picks, where the verdicts came from)."""
    gates = stored_gates(con, rebalance_date)
    excused = dict(overrides(con, rebalance_date, picks_hash).select("gate", "overridden_by").iter_rows())
    failures: list[str] = []
    if gates.height == 0:
        source = f"no gate evaluation of rebalance {rebalance_date} in the warehouse"
        failures.append(f"{NOT_EVALUATED}: the picks of {rebalance_date} were never evaluated by the rebalance's "
                        "gates (hand-made picks?); run `kairos rebalance`, or record an override")
    else:
        run, when = gates["run_id"][0], gates["evaluated_at"].max()
        source = f"rebalance run {run} at {when:%Y-%m-%d %H:%M} UTC (warehouse table {GATE_RESULTS_TABLE})"
        evaluated_on = gates["picks_hash"].drop_nulls().unique().to_list()
        if evaluated_on and picks_hash not in evaluated_on:
            failures.append(f"{OTHER_PICKS}: the gates passed on picks {evaluated_on[0][:12]}, not on these "
                            f"({picks_hash[:12]}): the picks file changed after the rebalance")
        for r in gates.filter(pl.col("blocking") & ~pl.col("passed")).iter_rows(named=True):
            failures.append(f"{r['gate']}: {r['message']}")
    kept = [f for f in failures if f.split(":")[0] not in excused]
    overridden = [f"{f.split(':')[0]} (overridden by {excused[f.split(':')[0]]})" for f in failures
                  if f.split(":")[0] in excused]
    if overridden:
        source += "; " + ", ".join(overridden)
    return kept, source
