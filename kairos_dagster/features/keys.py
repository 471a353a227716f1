"""Exact one-column integer keys for lookups on (ticker, date) or (ticker, session index) over millions of
rows: a hash join on a string and a date costs several times more than one on an Int64, and a binary search
in a sorted key column less again.

The key packs the ticker's code among the sorted tickers of every frame involved (a polars Enum) into the
high 32 bits and the date (days since 1970) or session index into the low 32; two rows share a key exactly
when they share both parts, and frames sorted by (ticker, date) have increasing keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from kairos_dagster.warehouse.ordering import in_key_order

KEY_COLUMN = "_kairos_key"


def ticker_enum(frames: Sequence[pl.DataFrame]) -> pl.Enum:
    """The sorted tickers of all `frames` as an Enum (codes follow the tickers' sort order)."""
    return pl.Enum(pl.concat([f.get_column("ticker") for f in frames]).unique().drop_nulls().sort())


def packed(tickers: pl.Enum, second: str) -> pl.Expr:
    """The Int64 key of (ticker, `second`); `second` a Date or an integer in [0, 2**31). Null when either is."""
    low = pl.col(second).cast(pl.Int32) if second == "date" else pl.col(second)
    return (pl.col("ticker").cast(tickers).to_physical().cast(pl.Int64) * (1 << 32)
            + low.cast(pl.Int64)).alias(KEY_COLUMN)


def positions(sorted_keys: pl.Series, wanted: pl.Series) -> pl.Series:
    """The row of each `wanted` key in `sorted_keys` (strictly increasing), null where it is absent."""
    n = len(sorted_keys)
    if n == 0:
        return pl.Series("pos", [None] * len(wanted), dtype=pl.UInt32)
    at = sorted_keys.search_sorted(wanted.fill_null(sorted_keys[0] - 1), side="left").clip(0, n - 1)
    found = sorted_keys.gather(at) == wanted  # null where wanted is null
    return pl.select(pl.when(found).then(at).otherwise(None).alias("pos")).to_series()


def left_join(left: pl.DataFrame, right: pl.DataFrame, second: str, value_cols: Sequence[str]) -> pl.DataFrame:
    """`left` with `right`'s `value_cols` matched on (ticker, `second`), in `left`'s order, null where absent,
    as polars' left join on the two columns gives it (every match of a repeated right-hand key)."""
    tickers = ticker_enum([left, right])
    right_keyed = right.select(packed(tickers, second))
    right_key, left_key = right_keyed.to_series(), left.select(packed(tickers, second)).to_series()
    if in_key_order(right_keyed, [KEY_COLUMN], strict=True) and not set(value_cols) & set(left.columns):
        pos = positions(right_key, left_key)  # unique sorted keys: a binary search, no hash table
        return left.hstack(right.select(pl.col(c).gather(pos) for c in value_cols))
    keyed = right.select(right_key, *value_cols)
    return (left.with_columns(left_key).join(keyed, on=KEY_COLUMN, how="left", maintain_order="left")
            .drop(KEY_COLUMN))
