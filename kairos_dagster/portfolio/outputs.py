"""The rebalance's output files (seed 001 §8.4): picks.csv, trades.csv, portfolio_summary.json,
schedule.json; and `read_picks_csv`, the validating reader used for --prior-holdings and by execution.

Writers are pure apart from the files they write and take every value they print as an argument
(generated_at included), so the same inputs give byte-identical files. The folder is written as a
whole: files go to a temporary folder beside the target, which is then renamed into place, so a
failure leaves either the old folder or the complete new one, never half a rebalance.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from kairos_dagster import calendar as cal
from kairos_dagster.portfolio.risk4 import PortfolioResult
from kairos_dagster.portfolio.trades import TRADES_COLUMNS, TRADES_SCHEMA

PICKS_CSV_COLUMNS = ("rank", "ticker", "weight", "sector", "alpha_z", "vol_blend", "adv_20", "price",
                     "target_value", "shares")
PICKS_CSV_SCHEMA = {"rank": pl.Int64, "ticker": pl.String, "weight": pl.Float64, "sector": pl.String,
                    "alpha_z": pl.Float64, "vol_blend": pl.Float64, "adv_20": pl.Float64, "price": pl.Float64,
                    "target_value": pl.Float64, "shares": pl.Int64}
# Columns that may be empty: prior-only names have no rank/alpha_z today, and may lack vol/ADV.
_NULLABLE = {"rank", "alpha_z", "vol_blend", "adv_20"}
PICKS_FILE, TRADES_FILE, SUMMARY_FILE, SCHEDULE_FILE = ("picks.csv", "trades.csv", "portfolio_summary.json",
                                                         "schedule.json")
N_SCHEDULE = 10


class OutputFileError(ValueError):
    """An output file that is missing, malformed or holds a bad value."""


# ------------------------------------------------------------------------------------------ render
def picks_csv_frame(picks: pl.DataFrame) -> pl.DataFrame:
    missing = [c for c in PICKS_CSV_COLUMNS if c not in picks.columns]
    if missing:
        raise OutputFileError(f"picks frame lacks column(s) {', '.join(missing)}")
    return picks.select(PICKS_CSV_COLUMNS).cast(PICKS_CSV_SCHEMA)


def trades_csv_frame(trades: pl.DataFrame) -> pl.DataFrame:
    missing = [c for c in TRADES_COLUMNS if c not in trades.columns]
    if missing:
        raise OutputFileError(f"trades frame lacks column(s) {', '.join(missing)}")
    return trades.select(TRADES_COLUMNS).cast(TRADES_SCHEMA)


def summary_dict(result: PortfolioResult, rebalance_date: dt.date, generated_at: dt.datetime,
                 regime: Mapping[str, Any] | None = None,
                 data_freshness: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """portfolio_summary.json. `regime`: date, regime, vol_regime, trend_regime (from
    regime_history_academic, or None when unknown); `data_freshness`: whatever the caller measured
    (e.g. max date per table)."""
    cfg = result.config
    picks = result.picks
    top5 = picks.sort(["weight", "ticker"], descending=[True, False]).head(5).get_column("weight").sum()
    avg_adv = picks.get_column("adv_20").mean() if picks.height else None
    reg = {"date": None, "regime": None, "vol_regime": None, "trend_regime": None}
    if regime:
        unknown = sorted(set(regime) - set(reg))
        if unknown:
            raise OutputFileError(f"regime has unexpected key(s) {unknown}; expected {sorted(reg)}")
        reg.update({k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in regime.items()})
    return {
        "generated_at": generated_at.isoformat(timespec="seconds"),
        "rebalance_date": rebalance_date.isoformat(),
        "signal_date": result.signal_date.isoformat() if result.signal_date else None,
        "is_rebalance_day": cal.is_rebalance_day(rebalance_date),
        "next_rebalance": cal.next_rebalance_after(rebalance_date).isoformat(),
        "regime": reg,
        "portfolio": {
            "n_positions": picks.height,
            "top_n_target": cfg.top_n,
            "total_weight": _num(result.total_weight),
            "cash_weight": _num(result.cash_weight),
            "top_5_weight": _num(top5),
            "estimated_vol": _num(result.est_vol_final),
            "estimated_vol_pre_target": _num(result.est_vol),
            "vol_scale": _num(result.vol_scale),
            "caps_feasible": result.caps_feasible,
            "sector_weights": {k: _num(v) for k, v in result.sector_weights.items()},
            # each sector's cap that week: min(max_sector_mult x its share of the eligible names, the hard cap)
            "sector_caps": {r["sector"]: _num(r["cap"]) for r in result.universe_sector_weights.iter_rows(named=True)},
        },
        "parameters": {**cfg.to_dict(), "rebalance_rule": cal.REBALANCE_RULE},
        "metrics": {
            "turnover_vs_prior": _num(result.turnover_final),
            "turnover_pre_vol": _num(result.turnover),
            "fresh_start": result.fresh_start,
            "avg_adv": _num(avg_adv),
            "n_input": result.n_input,
            "n_dropped_missing": result.n_dropped_missing,
            "n_below_adv": result.n_below_adv,
            "n_missing_alpha": result.n_missing_alpha,
            "alpha_coverage": _num(result.alpha_coverage),
            "n_eligible": result.n_eligible,
            "n_vol_fallback": result.n_vol_fallback,
            "forced_exits": result.forced_exits.get_column("ticker").to_list(),
            "notes": list(result.notes),
        },
        "data_freshness": {k: (v.isoformat() if isinstance(v, dt.date) else v)
                           for k, v in (data_freshness or {}).items()},
    }


def schedule_dict(generated_at: dt.datetime, after: dt.date, count: int = N_SCHEDULE) -> dict[str, Any]:
    """schedule.json: the next `count` rebalance dates strictly after `after`."""
    dates = cal.next_rebalance_dates(count, after + dt.timedelta(days=1))
    return {"generated_at": generated_at.isoformat(timespec="seconds"), "rule": cal.REBALANCE_RULE,
            "next_rebalances": [d.isoformat() for d in dates]}


def _num(x: Any) -> float | None:
    # JSON has no NaN: a missing number is null; values are rounded for readability, not computation.
    if x is None:
        return None
    x = float(x)
    return round(x, 10) if math.isfinite(x) else None


# ------------------------------------------------------------------------------------------ write
def write_rebalance_outputs(output_dir: str | os.PathLike[str], result: PortfolioResult, trades: pl.DataFrame,
                            rebalance_date: dt.date, generated_at: dt.datetime,
                            regime: Mapping[str, Any] | None = None,
                            data_freshness: Mapping[str, Any] | None = None,
                            overwrite: bool = False) -> Path:
    """Write the four files into `output_dir` atomically (temp folder in the same parent, then rename)."""
    files = {
        PICKS_FILE: picks_csv_frame(result.picks).write_csv(),
        TRADES_FILE: trades_csv_frame(trades).write_csv(),
        SUMMARY_FILE: _json(summary_dict(result, rebalance_date, generated_at, regime, data_freshness)),
        SCHEDULE_FILE: _json(schedule_dict(generated_at, rebalance_date)),
    }
    return write_folder_atomic(output_dir, files, overwrite=overwrite)


def write_folder_atomic(output_dir: str | os.PathLike[str], files: Mapping[str, str], overwrite: bool = False) -> Path:
    """Create `output_dir` holding exactly `files` (name -> text), all or nothing."""
    target = Path(output_dir)
    if target.exists() and not overwrite:
        raise FileExistsError(f"output folder {target} already exists (pass overwrite=True to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    old: Path | None = None
    try:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        tmp.chmod(0o755)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "prev")
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "prev").exists() and not target.exists():
            os.replace(old / "prev", target)  # put the previous folder back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return target


def write_file_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """One file via a temp file in the same folder and os.replace."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.tmp-", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def write_picks_csv(path: str | os.PathLike[str], picks: pl.DataFrame) -> Path:
    return write_file_atomic(path, picks_csv_frame(picks).write_csv())


def write_trades_csv(path: str | os.PathLike[str], trades: pl.DataFrame) -> Path:
    return write_file_atomic(path, trades_csv_frame(trades).write_csv())


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, allow_nan=False) + "\n"


# ------------------------------------------------------------------------------------------ read
def read_picks_csv(path: str | os.PathLike[str]) -> pl.DataFrame:
    """Read and validate a picks.csv; errors name the file, column, row and ticker that are wrong."""
    p = Path(path)
    if not p.is_file():
        raise OutputFileError(f"picks file {p} does not exist")
    try:
        raw = pl.read_csv(p, infer_schema=False)  # all strings: we report bad values ourselves
    except pl.exceptions.PolarsError as e:
        raise OutputFileError(f"{p}: not a readable CSV ({e})") from None
    missing = [c for c in PICKS_CSV_COLUMNS if c not in raw.columns]
    if missing:
        raise OutputFileError(f"{p}: missing column(s) {', '.join(missing)}; expected {','.join(PICKS_CSV_COLUMNS)}")
    raw = raw.select(PICKS_CSV_COLUMNS).with_columns(pl.all().str.strip_chars()).with_columns(
        pl.when(pl.all() == "").then(None).otherwise(pl.all()).name.keep())
    for col, dtype in PICKS_CSV_SCHEMA.items():
        if dtype == pl.String:
            continue
        parsed = raw.get_column(col).cast(dtype, strict=False)
        bad = raw.with_row_index("_row").filter(raw.get_column(col).is_not_null() & parsed.is_null())
        if bad.height:
            r, t, v = bad.select("_row", "ticker", col).row(0)
            raise OutputFileError(f"{p}: column {col} row {r + 2} (ticker {t}): {v!r} is not a valid {dtype}")
    df = raw.cast(PICKS_CSV_SCHEMA, strict=False)  # every value parsed above
    for col in PICKS_CSV_COLUMNS:
        nulls = df.with_row_index("_row").filter(pl.col(col).is_null())
        if col not in _NULLABLE and nulls.height:
            r, t = nulls.select("_row", "ticker").row(0)
            raise OutputFileError(f"{p}: column {col} row {r + 2} (ticker {t}) is empty")
    checks = [
        ("weight", ~pl.col("weight").is_finite() | (pl.col("weight") < 0) | (pl.col("weight") > 1), "in [0, 1]"),
        ("price", ~pl.col("price").is_finite() | (pl.col("price") <= 0), "> 0"),
        ("shares", pl.col("shares") < 0, ">= 0"),
        ("target_value", ~pl.col("target_value").is_finite() | (pl.col("target_value") < 0), ">= 0"),
        ("rank", pl.col("rank") < 1, ">= 1"),
    ]
    for col, cond, what in checks:
        bad = df.with_row_index("_row").filter(cond)
        if bad.height:
            r, t, v = bad.select("_row", "ticker", col).row(0)
            raise OutputFileError(f"{p}: column {col} row {r + 2} (ticker {t}): {v} must be {what}")
    dup = df.group_by("ticker").len().filter(pl.col("len") > 1).get_column("ticker").sort()
    if dup.len():
        raise OutputFileError(f"{p}: duplicate ticker(s) {dup.head(10).to_list()}")
    total = df.get_column("weight").sum()
    if total > 1 + 1e-6:
        raise OutputFileError(f"{p}: weights sum to {total:.6f} > 1")
    return df
