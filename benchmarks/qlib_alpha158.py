"""Qlib's Alpha158 over a Qlib data folder, timed (bench-only; runs in Qlib's own virtualenv, see
benchmarks/qlib_compare.py, so it imports nothing of Kairos).

usage: qlib_alpha158.py PROVIDER_URI START END SAMPLE_OUT JSON_OUT

Times one cold `D.features(D.instruments("all"), <Alpha158's 158 expressions>, START, END)` in a fresh
process with Qlib's expression and dataset caches off and 2 worker processes (this machine's cores), then
writes the 9 K-bar features of the instruments listed in SAMPLE_OUT's sibling `sample.txt` to SAMPLE_OUT
(parquet) for the cross-check against Kairos's feat_price_shape.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import qlib
from qlib.constant import REG_US
from qlib.contrib.data.loader import Alpha158DL
from qlib.data import D

KBAR = ["KMID", "KLEN", "KMID2", "KUP", "KUP2", "KLOW", "KLOW2", "KSFT", "KSFT2"]


def main(provider_uri: str, start: str, end: str, sample_out: str, json_out: str) -> None:
    qlib.init(provider_uri=provider_uri, region=REG_US, kernels=2, expression_cache=None, dataset_cache=None)
    fields, names = Alpha158DL.get_feature_config()
    t0 = time.perf_counter()
    df = D.features(D.instruments("all"), fields, start_time=start, end_time=end, freq="day")
    seconds = time.perf_counter() - t0
    df.columns = names
    sample = Path(sample_out).with_name("sample.txt").read_text().split()
    kbar = df.loc[df.index.get_level_values("instrument").isin(sample), KBAR].reset_index()
    kbar.to_parquet(sample_out)
    Path(json_out).write_text(json.dumps({
        "seconds": seconds, "rows": int(len(df)), "features": len(names),
        "instruments": int(df.index.get_level_values("instrument").nunique()),
        "null_share": float(df.isna().to_numpy().mean()), "qlib_version": qlib.__version__,
    }))


if __name__ == "__main__":
    main(*sys.argv[1:6])
