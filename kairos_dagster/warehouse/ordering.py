"""Whether a frame's rows are in key order, in one vectorized pass (pure polars).

Tables are written sorted by (ticker, date) window by window and read back in storage order, so checking
the order costs a fraction of sorting (DuckDB's ORDER BY) or of hashing the keys to find duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl


def in_key_order(df: pl.DataFrame, columns: Sequence[str], *, strict: bool = False) -> bool:
    """Whether `df` is sorted ascending by `columns` (lexicographically); `strict`: no two rows share the
    key either. A key column with nulls answers False (let a sort or a hash decide)."""
    if df.height < 2:
        return True
    if any(df.get_column(c).null_count() for c in columns):
        return False
    later = pl.lit(not strict)  # past the last column: rows equal on every key are in order unless strict
    for c in reversed(columns):  # a later key decides only where the earlier ones tie
        prev = pl.col(c).shift(1)
        later = (pl.col(c) > prev) | ((pl.col(c) == prev) & later)
    return bool(df.select(later.slice(1).all()).item())


def sorted_by(df: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    """`df` sorted by `columns`; checked first, so a frame read back in storage order is not sorted again."""
    return df if in_key_order(df, columns) else df.sort(columns, maintain_order=True)
