"""The joins that put feature columns on the universe rows of a window."""

import datetime as dt

import numpy as np
import polars as pl
from polars.testing import assert_frame_equal

from kairos_dagster.features import assemble

KEY = ["ticker", "date"]


def _panel(rng: np.random.Generator, n: int, tickers: list[str]) -> pl.DataFrame:
    day0 = dt.date(2020, 1, 1)
    return pl.DataFrame({
        "ticker": rng.choice(tickers, n),
        "date": [day0 + dt.timedelta(days=int(d)) for d in rng.integers(0, 400, n)],
    }).unique(KEY).sort(KEY)


def test_restrict_to_rows_equals_a_plain_left_join_whatever_the_rows():
    """The integer-key join gives what polars' join on (ticker, date) gives: the rows' order, nulls where the
    right side lacks a row, tickers on one side only, the left's own columns, dates far apart."""
    rng = np.random.default_rng(3)
    right = _panel(rng, 3000, [f"T{i}" for i in range(40)])
    right = right.with_columns(x=pl.Series(rng.normal(size=right.height)), flag=pl.int_range(pl.len()) % 3 == 0)
    rows = pl.concat([
        right.select(KEY).sample(1500, seed=1),
        _panel(rng, 300, ["T1", "T2", "ONLY_LEFT"]),
        pl.DataFrame({"ticker": ["T5"], "date": [dt.date(1990, 1, 1)]}),
    ]).unique(KEY, keep="first").sample(fraction=1.0, shuffle=True, seed=2).with_columns(own=pl.int_range(pl.len()))
    got = assemble.restrict_to_rows(rows, right)
    want = rows.select(KEY).join(right, on=KEY, how="left", maintain_order="left")
    assert_frame_equal(got, want)
    assert got.get_column("x").null_count() > 0  # some rows had no right-hand row
    joined = assemble._left_join(rows, right, KEY)
    assert_frame_equal(joined, rows.join(right, on=KEY, how="left", maintain_order="left"))


def test_restrict_to_rows_keeps_every_match_of_a_repeated_key():
    right = pl.DataFrame({"ticker": ["A", "A", "B"], "date": [dt.date(2024, 1, 2)] * 3, "v": [1.0, 2.0, 3.0]})
    rows = pl.DataFrame({"ticker": ["B", "A"], "date": [dt.date(2024, 1, 2)] * 2})
    got = assemble.restrict_to_rows(rows, right)
    assert got.rows() == [("B", dt.date(2024, 1, 2), 3.0), ("A", dt.date(2024, 1, 2), 1.0),
                          ("A", dt.date(2024, 1, 2), 2.0)]


def test_stacked_columns_when_the_keys_are_the_same_rows():
    right = pl.DataFrame({"ticker": ["A", "B"], "date": [dt.date(2024, 1, 2)] * 2, "v": [1.0, 2.0]})
    assert_frame_equal(assemble.restrict_to_rows(right.select(KEY), right), right)
