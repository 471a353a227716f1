import datetime as dt
import math

import polars as pl
import pytest

from kairos_dagster.sources.schemas import SEP, SF1, conform
from kairos_dagster.sources.validate import validate_rows

D = dt.date
START, END = D(2026, 1, 5), D(2026, 1, 12)


def _sep(rows):
    base = {"open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5, "volume": 1000.0, "closeadj": 10.5,
            "closeunadj": 10.5, "lastupdated": D(2026, 1, 9)}
    return pl.DataFrame([{**base, **r} for r in rows])


def _run(df, known=("AAA", "BBB")):
    return validate_rows(SEP, df, start=START, end=END, date_col="date", known_tickers=pl.Series(list(known)))


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"close": -1.0}, "price_nonpositive_or_nan"),
        ({"open": math.nan}, "price_nonpositive_or_nan"),
        ({"closeadj": 0.0}, "price_nonpositive_or_nan"),
        ({"low": 10.8}, "ohlc_inconsistent"),  # low above open
        ({"high": 10.2}, "ohlc_inconsistent"),  # high below close
        ({"volume": -5.0}, "volume_negative_or_nan"),
        ({"date": D(2026, 1, 10)}, "not_a_session"),  # Saturday
        ({"date": D(2026, 1, 12)}, "date_outside_window"),
        ({"ticker": "ZZZ"}, "unknown_ticker"),
    ],
)
def test_each_bad_row_class_is_rejected_with_its_reason(row, reason):
    good = {"ticker": "AAA", "date": D(2026, 1, 6)}
    df = _sep([{"ticker": "BBB", "date": D(2026, 1, 6)}, {**good, **row}])
    r = _run(df)
    assert r.counts == {reason: 1}
    assert r.clean.height == 1 and r.clean.get_column("ticker").to_list() == ["BBB"]
    assert r.rejects.get_column("reason").to_list() == [reason]
    assert r.reject_rate == 0.5


def test_duplicates_exact_keep_one_conflicting_reject_all():
    rows = [{"ticker": "AAA", "date": D(2026, 1, 6)}] * 2 + [
        {"ticker": "BBB", "date": D(2026, 1, 6), "close": 10.5},
        {"ticker": "BBB", "date": D(2026, 1, 6), "close": 10.6},
    ]
    r = _run(_sep(rows))
    assert r.counts == {"duplicate_row": 1, "duplicate_key": 2}
    assert r.clean.get_column("ticker").to_list() == ["AAA"]


def test_conform_names_missing_columns_and_bad_types():
    df = _sep([{"ticker": "AAA", "date": D(2026, 1, 6)}]).drop("closeadj")
    with pytest.raises(ValueError, match=r"SEP is missing columns \['closeadj'\]"):
        conform(df, SEP, source="test")
    bad = pl.DataFrame({c: ["x"] for c in SF1.columns})
    with pytest.raises(ValueError, match="wrong type"):
        conform(bad, SF1, source="test")
