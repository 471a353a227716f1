"""The run's read cache: input windows one run's steps read again and again, kept in memory (no dagster import).

In a range run of Phases 1-5, 13 of the 27 assets read the same window of `sep_base` and 25 read `universe`.
While a run holds its warehouse open (`store.held_open`), the IO manager's loads go through a `ReadCache`:
a load whose table, window and columns an earlier load covers is served from that frame (filtered to the
window, narrowed to the columns) instead of DuckDB.

Never stale: every write through the store (`store.transaction`: window replaces, table replaces, upserts,
re-keying) calls `written` with the tables it writes, or with none when it cannot say (then every table
counts as written). An entry remembers the write generation before its read; it is served only while no
write of its table came after it. Other processes cannot write meanwhile: the held connection keeps the
file's lock, and when the store lets the instance go (`store.HELD_MEMORY_BYTES`) the cache is emptied. Frames
are immutable, so sharing one between steps is safe.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

_GENERATION = itertools.count(1)
_WRITTEN: dict[str, int] = {}  # table -> generation of its last write
_WRITTEN_ANY = [0]  # generation of the last write that named no table

# What one run may keep: Phases 1-5's repeated inputs (sep_base, daily, universe) take about 1 GB at 5,000
# tickers x 10 years; a frame over half of it is not kept.
CACHE_BYTES = 1_500_000_000
# An entry no load used for this long is let go (`prune`, from the run's waiting thread): Phases 1-5 reuse
# theirs within seconds; the ML steps, which load nothing through the IO manager, then run without them.
IDLE_S = 60.0


def generation() -> int:
    """A new generation: taken before a read, it orders the read against later writes."""
    return next(_GENERATION)


def written(tables: Sequence[str] | None = None) -> None:
    """Mark `tables` written now (None: any table); reads made before are not served again."""
    gen = next(_GENERATION)
    if tables is None:
        _WRITTEN_ANY[0] = gen
        return
    for table in tables:
        _WRITTEN[table] = gen


@dataclass
class _Entry:
    table: str
    column: str | None
    start: dt.date | None  # None: from the table's first row
    end: dt.date | None  # None: through its last
    columns: tuple[str, ...]
    frame: pl.DataFrame
    generation: int
    nbytes: int
    used_at: float

    def fresh(self) -> bool:
        return self.generation > max(_WRITTEN.get(self.table, 0), _WRITTEN_ANY[0])

    def covers(self, start: dt.date | None, end: dt.date | None, columns: Sequence[str]) -> bool:
        return ((self.start is None or (start is not None and self.start <= start))
                and (self.end is None or (end is not None and end <= self.end))
                and set(columns) <= set(self.columns))


class ReadCache:
    """Frames read in this run, least recently used first; at most `limit` bytes (polars' estimate)."""

    def __init__(self, limit: int = CACHE_BYTES) -> None:
        self.limit = limit
        self.entries: list[_Entry] = []
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()  # `prune` comes from another thread than the run's loads

    def get(self, table: str, column: str | None, start: dt.date | None, end: dt.date | None,
            columns: Sequence[str]) -> pl.DataFrame | None:
        """The rows of `table` with `column` in [start, end) and these columns, as a read now would return
        them, if a fresh entry holds them; else None."""
        with self._lock:
            self.entries = [e for e in self.entries if e.fresh()]
            e = next((e for e in self.entries if (e.table, e.column) == (table, column)
                      and e.covers(start, end, columns)), None)
            if e is None:
                self.misses += 1
                return None
            self.entries.remove(e)
            self.entries.append(e)
            e.used_at = time.monotonic()
            self.hits += 1
        out = e.frame
        if column is not None and (start, end) != (e.start, e.end):
            if start is not None:
                out = out.filter(pl.col(column) >= start)
            if end is not None:
                out = out.filter(pl.col(column) < end)
        return out if tuple(columns) == e.columns else out.select(columns)

    def put(self, table: str, column: str | None, start: dt.date | None, end: dt.date | None,
            frame: pl.DataFrame, gen: int) -> None:
        """Keep `frame` (read at generation `gen`), evicting the least recently used beyond the limit."""
        nbytes = frame.estimated_size()
        if nbytes > self.limit // 2:
            return
        with self._lock:
            self.entries.append(_Entry(table, column, start, end, tuple(frame.columns), frame, gen, nbytes,
                                       time.monotonic()))
            while sum(e.nbytes for e in self.entries) > self.limit:
                self.entries.pop(0)

    def prune(self, idle_s: float = IDLE_S) -> None:
        """Let go of the entries no load used in the last `idle_s` seconds."""
        now = time.monotonic()
        with self._lock:
            self.entries = [e for e in self.entries if now - e.used_at < idle_s]

    def clear(self) -> None:
        """Let go of every entry (the warehouse was let go: another process may have written since)."""
        with self._lock:
            self.entries = []
