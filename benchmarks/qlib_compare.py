"""Kairos's technical features beside Qlib's Alpha158 on the same panel (bench-only, issue 18 item 5).

Qlib runs in a virtualenv of its own (``benchmarks/_work/qlib-venv``, created with uv on first use):
pyqlib pins pyarrow and pulls Jupyter, MLflow and CVXPY, none of which the platform's environment should
carry. The warehouse's sep_base is written in Qlib's binary format (what Qlib's ``scripts/dump_bin.py``
writes: ``calendars/day.txt``, ``instruments/all.txt`` and per instrument one ``<field>.day.bin`` of
little-endian float32, the first value the instrument's first calendar index), then both sides are timed
in the same run on the same rows:

- Kairos: the pure table functions of ``features/technical.py`` (106 features) called directly on the
  panel, as the assets call them, load not timed;
- Qlib: one cold ``D.features`` of Alpha158's 158 expressions in a fresh process, 2 workers, caches off.

Both are recorded per stock·feature·year (stock-years = SEP rows / 252 sessions). The 9 K-bar features
both compute (Kairos's feat_price_shape took them from Alpha158) are compared on a sample of tickers:
Qlib computes in float32, so they must agree within 1e-5 of the open (see ``kbar_difference``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

QLIB_REQUIREMENT = "pyqlib>=0.9.7,<0.10"  # 0.9.7: the first with cp311 wheels that run on pandas 3
QLIB_FIELDS = ("open", "high", "low", "close", "volume", "vwap")
KBAR_PAIRS = {"KMID": "kmid", "KLEN": "klen", "KMID2": "kmid2", "KUP": "kup", "KUP2": "kup2",
              "KLOW": "klow", "KLOW2": "klow2", "KSFT": "ksft", "KSFT2": "ksft2"}
SESSIONS_PER_YEAR = 252
SAMPLE_TICKERS = 50


def qlib_python(venv: Path) -> Path:
    """The Qlib virtualenv's interpreter, created (uv venv + uv pip install) when missing."""
    python = venv / "bin" / "python"
    if python.exists():
        return python
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    subprocess.run([uv, "venv", "-q", "-p", f"{sys.version_info.major}.{sys.version_info.minor}", str(venv)],
                   check=True)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(python), QLIB_REQUIREMENT, "pyarrow"], check=True)
    return python


def write_qlib_data(sep: pl.DataFrame, root: Path) -> dict:
    """sep_base (ticker, date, open, high, low, close, volume) in Qlib's binary day format under `root`.

    SEP has no VWAP: Alpha158's VWAP0 gets the typical price (high + low + close) / 3. A ticker's series
    runs from its first to its last session on the common calendar, NaN where it has no row."""
    if root.exists():
        shutil.rmtree(root)
    (root / "calendars").mkdir(parents=True)
    (root / "instruments").mkdir()
    calendar = sep.select(pl.col("date").unique().sort())["date"]
    (root / "calendars" / "day.txt").write_text("\n".join(str(d) for d in calendar) + "\n")
    pos = pl.DataFrame({"date": calendar, "_pos": np.arange(calendar.len(), dtype=np.int64)})
    panel = (sep.join(pos, on="date").sort("ticker", "date")
             .with_columns(((pl.col("high") + pl.col("low") + pl.col("close")) / 3).alias("vwap")))
    spans = panel.group_by("ticker", maintain_order=True).agg(
        pl.col("_pos").min().alias("first"), pl.col("_pos").max().alias("last"), pl.len().alias("n"),
        pl.col("date").min().alias("start"), pl.col("date").max().alias("end"))
    (root / "instruments" / "all.txt").write_text("".join(
        f"{t}\t{s}\t{e}\n" for t, s, e in spans.select("ticker", "start", "end").iter_rows()))
    values = {f: panel[f].cast(pl.Float32).to_numpy() for f in QLIB_FIELDS}
    positions = panel["_pos"].to_numpy()
    row = 0
    # one file per ticker and field is Qlib's format: this loop is the converter, not a feature path
    for ticker, first, last, n in spans.select("ticker", "first", "last", "n").iter_rows():
        folder = root / "features" / ticker.lower()
        folder.mkdir(parents=True)
        at = positions[row:row + n] - first
        for f in QLIB_FIELDS:
            series = np.full(last - first + 1, np.nan, dtype="<f4")
            series[at] = values[f][row:row + n]
            np.concatenate([np.array([first], dtype="<f4"), series]).tofile(folder / f"{f}.day.bin")
        row += n
    return {"instruments": spans.height, "sessions": calendar.len(), "rows": panel.height}


def kairos_core(sep: pl.DataFrame, daily: pl.DataFrame, mkt_ret: pl.DataFrame) -> tuple[dict, pl.DataFrame]:
    """The technical table functions on the whole panel, each timed; the feat_price_shape frame comes back
    for the cross-check."""
    from kairos_dagster.features.technical import TECHNICAL_TABLES

    args = {"sep_base": sep, "daily": daily, "mkt_ret": mkt_ret}
    seconds: dict[str, float] = {}
    shape = pl.DataFrame()
    for name, spec in TECHNICAL_TABLES.items():
        if name == "feat_targets":  # labels, not features
            continue
        t0 = time.perf_counter()
        out = spec.fn(*(args[i] for i in spec.inputs))
        seconds[name] = round(time.perf_counter() - t0, 3)
        if name == "feat_price_shape":
            shape = out.select("ticker", "date", *KBAR_PAIRS.values())
        del out
    features = sum(len(s.columns) for n, s in TECHNICAL_TABLES.items() if n != "feat_targets")
    return {"seconds": round(sum(seconds.values()), 2), "features": features, "table_seconds": seconds}, shape


def kbar_difference(qlib_sample: pl.DataFrame, kairos_shape: pl.DataFrame, ohlc: pl.DataFrame) -> dict:
    """Each K-bar feature's largest difference over the sampled tickers' common rows, in units of the open.

    KMID, KLEN, KUP, KLOW and KSFT are already relative to the open. The *2 variants divide by the day's
    range, which amplifies Qlib's float32 rounding of the prices (about 6e-8 of the open) by open / range on
    narrow days; their difference is scaled back by range / open, so every feature is held to the same
    1e-5 of the open. The unscaled maxima are kept beside."""
    q = qlib_sample.rename({"instrument": "ticker", "datetime": "date"}).with_columns(pl.col("date").cast(pl.Date))
    both = q.join(kairos_shape, on=["ticker", "date"], how="inner").join(ohlc, on=["ticker", "date"], how="inner")
    range_over_open = (pl.col("high") - pl.col("low")) / pl.col("open")
    raw = {b: (pl.col(a).cast(pl.Float64) - pl.col(b)).abs() for a, b in KBAR_PAIRS.items()}
    scaled = both.select([(e * range_over_open if b.endswith("2") else e).max().alias(b) for b, e in raw.items()])
    unscaled = both.select([e.max().alias(b) for b, e in raw.items()])

    def as_dict(frame: pl.DataFrame) -> dict:
        return {k: float(v) if v is not None else None for k, v in frame.row(0, named=True).items()}

    return {"rows": both.height, "max_abs_diff": as_dict(scaled), "max_abs_diff_unscaled": as_dict(unscaled)}


def compare(sep: pl.DataFrame, daily: pl.DataFrame, mkt_ret: pl.DataFrame, work: Path) -> dict:
    """Both sides timed on the same panel, per stock·feature·year, and the K-bar cross-check."""
    python = qlib_python(work.parent / "qlib-venv")
    data = work / "qlib_data"
    t0 = time.perf_counter()
    written = write_qlib_data(sep.select("ticker", "date", "open", "high", "low", "close", "volume"), data)
    convert_s = time.perf_counter() - t0
    sample = sep.select(pl.col("ticker").unique().sort()).sample(min(SAMPLE_TICKERS, written["instruments"]),
                                                                    seed=3)["ticker"].to_list()
    (work / "sample.txt").write_text("\n".join(sample) + "\n")
    start, end = str(sep["date"].min()), str(sep["date"].max())
    out_json, out_sample = work / "qlib_alpha158.json", work / "qlib_kbar.parquet"
    script = Path(__file__).with_name("qlib_alpha158.py")
    done = subprocess.run([str(python), str(script), str(data), start, end, str(out_sample), str(out_json)],
                          capture_output=True, text=True, timeout=3600, env={**os.environ, "PYTHONPATH": ""})
    if done.returncode:
        raise RuntimeError(f"qlib_alpha158.py failed: {done.stderr.strip()[-2000:]}")
    qlib_rec = json.loads(out_json.read_text())
    kairos_rec, shape = kairos_core(sep, daily, mkt_ret)
    stock_years = sep.height / SESSIONS_PER_YEAR
    in_sample = pl.col("ticker").is_in(sample)
    check = kbar_difference(pl.read_parquet(out_sample), shape.filter(in_sample),
                            sep.filter(in_sample).select("ticker", "date", "open", "high", "low"))

    def per_unit(rec: dict) -> float:
        return round(rec["seconds"] / (rec["features"] * stock_years) * 1e6, 2)

    worst = max(v for v in check["max_abs_diff"].values() if v is not None)
    return {
        "seconds": round(convert_s + qlib_rec["seconds"] + kairos_rec["seconds"], 1),
        "stock_years": round(stock_years), "panel": written, "qlib_convert_s": round(convert_s, 1),
        "qlib": {**qlib_rec, "us_per_stock_feature_year": per_unit(qlib_rec)},
        "kairos": {**kairos_rec, "us_per_stock_feature_year": per_unit(kairos_rec)},
        "kbar_check": check, "success": check["rows"] > 0 and worst <= 1e-5,
    }
