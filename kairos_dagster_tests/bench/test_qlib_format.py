"""The bench's writer of Qlib's binary day format (benchmarks.qlib_compare.write_qlib_data), read back as
Qlib's file storage reads it: a float32 file whose first value is the instrument's first calendar index."""

import datetime as dt

import numpy as np
import polars as pl

from benchmarks.qlib_compare import QLIB_FIELDS, kbar_difference, write_qlib_data

D = [dt.date(2024, 1, d) for d in (2, 3, 4, 5, 8)]


def _sep() -> pl.DataFrame:
    # BBB starts a day later and has no row on Jan 5: its series must hold NaN there, not shift
    rows = [("AAA", d, 10.0 + i) for i, d in enumerate(D)] + [("BBB", d, 20.0 + i) for i, d in enumerate(D)
                                                               if d not in (D[0], D[3])]
    t, d, c = zip(*rows, strict=True)
    return pl.DataFrame({"ticker": t, "date": d, "open": [x - 1 for x in c], "high": [x + 1 for x in c],
                         "low": [x - 2 for x in c], "close": c, "volume": [1000.0] * len(c)})


def test_qlib_binary_layout(tmp_path):
    root = tmp_path / "qlib"
    out = write_qlib_data(_sep(), root)
    assert out == {"instruments": 2, "sessions": 5, "rows": 8}
    assert (root / "calendars" / "day.txt").read_text().split() == [str(d) for d in D]
    assert (root / "instruments" / "all.txt").read_text().splitlines() == [
        "AAA\t2024-01-02\t2024-01-08", "BBB\t2024-01-03\t2024-01-08"]
    assert sorted(p.name for p in (root / "features" / "bbb").iterdir()) == sorted(f"{f}.day.bin" for f in QLIB_FIELDS)
    a = np.fromfile(root / "features" / "aaa" / "close.day.bin", dtype="<f4")
    assert a.tolist() == [0.0, 10.0, 11.0, 12.0, 13.0, 14.0]
    b = np.fromfile(root / "features" / "bbb" / "close.day.bin", dtype="<f4")
    assert b[0] == 1.0 and b[1:3].tolist() == [21.0, 22.0] and np.isnan(b[3]) and b[4] == 24.0
    vwap = np.fromfile(root / "features" / "bbb" / "vwap.day.bin", dtype="<f4")
    assert vwap[1] == np.float32((22.0 + 19.0 + 21.0) / 3)


def test_kbar_difference_holds_the_range_variants_to_the_open():
    """A *2 feature's difference is scaled by range / open (narrow days amplify float32 rounding); the
    open-relative features are compared as they are."""
    keys = {"ticker": ["AAA", "AAA"], "date": D[:2]}
    ours = pl.DataFrame({**keys, **{k: [0.1, 0.2] for k in ("kmid", "klen", "kmid2", "kup", "kup2", "klow",
                                                                 "klow2", "ksft", "ksft2")}})
    theirs = pl.DataFrame({"instrument": keys["ticker"], "datetime": [dt.datetime(2024, 1, 2), dt.datetime(2024, 1, 3)],
                           **{k: [0.1, 0.2] for k in ("KMID", "KLEN", "KMID2", "KUP", "KUP2", "KLOW", "KLOW2")},
                           "KSFT": [0.1, 0.23], "KSFT2": [0.1, 0.25]})
    # day 2: range 0.5 on an open of 100, so KSFT2's 0.05 is 0.05 * 0.005 of the open
    ohlc = pl.DataFrame({**keys, "open": [100.0, 100.0], "high": [101.0, 100.3], "low": [99.0, 99.8]})
    got = kbar_difference(theirs, ours, ohlc)
    assert got["rows"] == 2
    assert got["max_abs_diff"]["kmid"] == 0.0
    assert abs(got["max_abs_diff"]["ksft"] - 0.03) < 1e-12
    assert abs(got["max_abs_diff"]["ksft2"] - 0.05 * 0.005) < 1e-12
    assert abs(got["max_abs_diff_unscaled"]["ksft2"] - 0.05) < 1e-12
