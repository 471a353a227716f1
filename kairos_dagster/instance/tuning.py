"""SQLite tuning for the local Dagster instance's run and event storage.

A single-run backfill of N weeks writes one materialization event per asset and week; the SQLite
event log commits each one with a full fsync, which on a VM disk costs ~15-30 ms: a 10-year backfill
of the feature graph (30+ assets x 520 weeks) spent most of its time there (see benchmarks/RESULTS.md).
With `PRAGMA synchronous=OFF` on the instance's own SQLite files the same events cost ~4x less.

The trade-off: an operating-system crash or power loss during a write can corrupt the *run history*
(the UI's record of runs and events). The warehouse (DuckDB, with its own transactions), the model
registry and the broker's order records are not affected. Set KAIROS_DAGSTER_SQLITE_SYNCHRONOUS=FULL
to keep SQLite's default; deployments on Postgres instance storage are not touched by this at all.
"""

from __future__ import annotations

import os
from pathlib import Path

_INSTALLED = False
# One ASSET_MATERIALIZATION_PLANNED event per asset for a partition range, instead of one per week
# (Dagster's own switch). Dagster's partition status reads only per-week planned events; the Kairos event
# log expands the range's (instance/storage.py), so a failed range run's weeks still show as failed.
PLANNED_EVENTS_FLAG = "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"
MODES = {"OFF", "NORMAL", "FULL", "EXTRA"}


def sqlite_synchronous_mode() -> str:
    mode = os.environ.get("KAIROS_DAGSTER_SQLITE_SYNCHRONOUS", "OFF").strip().upper() or "OFF"
    if mode not in MODES:
        raise ValueError(f"KAIROS_DAGSTER_SQLITE_SYNCHRONOUS must be one of {sorted(MODES)}, got {mode!r}")
    return mode


def _inside_dagster_home(dbapi_con) -> bool:
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return False
    rows = dbapi_con.execute("PRAGMA database_list").fetchall()
    root = Path(home).resolve()
    return any(r[2] and Path(r[2]).resolve().is_relative_to(root) for r in rows)


def install_sqlite_tuning() -> None:
    """Apply the synchronous mode to every SQLite connection SQLAlchemy opens inside DAGSTER_HOME,
    and ask for one planned event per asset in single-run backfills (unless the operator chose)."""
    global _INSTALLED
    os.environ.setdefault(PLANNED_EVENTS_FLAG, "true")
    mode = sqlite_synchronous_mode()
    if _INSTALLED or mode == "FULL":
        return
    import sqlalchemy
    from sqlalchemy import event

    @event.listens_for(sqlalchemy.engine.Engine, "connect")
    def _tune(dbapi_con, _record) -> None:  # pragma: no cover - exercised through dagster's storage
        if type(dbapi_con).__module__.startswith("sqlite3") and _inside_dagster_home(dbapi_con):
            dbapi_con.execute(f"PRAGMA synchronous={mode}")

    _INSTALLED = True
