"""One benchmark stage per process: `python -m benchmarks.stages NAME --json OUT`.

Each stage runs a real code path (the synthetic market, `runner.run_selection` over the Dagster
executor and the DuckDB warehouse, or the pure ML / portfolio functions) and writes a JSON record:
`seconds` (the timed operation only, without interpreter and import start-up), plus counts and
details. `benchmarks.run` starts every stage in a fresh process so that its peak RSS is its own.

The scale comes from the environment that `benchmarks.run` sets: KAIROS_SYNTHETIC_TICKERS,
KAIROS_DUCKDB_PATH, KAIROS_START_DATE, DAGSTER_HOME, KAIROS_MODELS_DIR, KAIROS_OUTPUT_DIR, plus
BENCH_LAST_WEEK (the last partition key) and BENCH_TRIALS (Optuna trials of the tuning stage).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from kairos_dagster.features.targets import ML_LABEL

FEATURE_GROUPS = ("phase1_universe", "phase2_technical", "phase3_fundamental", "phase4_composites",
                  "phase5_regime", "phase5_composites")
SYNC_ASSETS = ("tickers", "sep_base", "daily", "sf1", "sf2", "sf3")
SYNC_TABLES = ("SEP", "DAILY", "SF1", "SF2", "SF3")
REBALANCE_ASSETS = ("rebalance_picks", "rebalance_trades")


# ------------------------------------------------------------------------------- helpers
def _env_date(name: str) -> dt.date:
    return dt.date.fromisoformat(os.environ[name])


def first_week() -> str:
    return os.environ["KAIROS_START_DATE"]


def last_week() -> str:
    return os.environ["BENCH_LAST_WEEK"]


def _defs() -> Any:
    from kairos_dagster.definitions import build_definitions
    from kairos_dagster.settings import load_settings

    return build_definitions(load_settings())


def _materialize(selection: Any, partition_range: tuple[str, str], run_config: dict | None = None) -> dict:
    """One run of `selection` over the partition range through the Dagster instance; time and counts."""
    from dagster import DagsterInstance

    from kairos_dagster.instance.runner import dagster_home, run_selection

    defs = _defs()
    dagster_home()
    with DagsterInstance.get() as instance:
        t0 = time.perf_counter()
        result = run_selection(defs, selection, partition_range=partition_range, instance=instance,
                               run_config=run_config)
        seconds = time.perf_counter() - t0
        timing = _step_seconds(instance, result.run_id)
    checks = [(e.asset_key.to_user_string(), e.check_name, e.passed) for e in result.get_asset_check_evaluations()]
    failed = [f"{a}.{c}" for a, c, ok in checks if not ok]
    mats = {}
    for ev in result.get_asset_materialization_events():
        m = ev.step_materialization_data.materialization
        rows = m.metadata.get("rows") or m.metadata.get("dagster/row_count")
        key = m.asset_key.to_user_string()  # a range run's events carry each week's own rows: sum them
        if rows is not None:
            mats[key] = (mats.get(key) or 0) + int(rows.value)
        else:
            mats.setdefault(key, None)
    return {"seconds": seconds, "success": result.success, "partition_range": list(partition_range),
            "assets": mats, "checks": len(checks), "failed_checks": failed, "step_seconds": timing["steps"],
            "dagster_events": timing["events"], "step_phases": timing["phases"],
            "phase_totals": timing["phase_totals"], "before_first_step_s": timing["before_first_step_s"],
            "run_log_span_s": timing["run_log_span_s"]}


PHASES = ("load", "compute", "write", "events", "checks")


def step_phases(kinds_and_times: list[tuple[str, float]]) -> dict[str, float]:
    """Split one step's wall time by its event log (DagsterEventType values and timestamps, in order).

    Dagster logs a step as STEP_START, one LOADED_INPUT per input as it is loaded, STEP_OUTPUT when the
    asset yields its output (the compute, metadata included, is done), the IO manager's write, then the
    step's ASSET_MATERIALIZATION events (one per week of a range run) and HANDLED_OUTPUT; the asset then
    computes its checks (ASSET_CHECK_EVALUATION) and the step ends (STEP_SUCCESS). `load` runs from the
    start to the last input loaded, `compute` to the output, `write` to the first materialization event,
    `events` to the output handled, `checks` to the end. A step without one of the marks (a failed one) is
    split as far as its marks go; the remainder is `other`.
    """
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for kind, t in kinds_and_times:
        first.setdefault(kind, t)
        last[kind] = t
    start = first.get("STEP_START")
    end = last.get("STEP_SUCCESS", last.get("STEP_FAILURE"))
    if start is None or end is None:
        return {}
    handled = last.get("HANDLED_OUTPUT")
    marks = [("load", last.get("LOADED_INPUT", start)), ("compute", first.get("STEP_OUTPUT")),
             ("write", first.get("ASSET_MATERIALIZATION")), ("events", handled),
             ("checks", end if handled is not None else None)]
    out: dict[str, float] = {}
    at = start
    for phase, mark in marks:
        if mark is None or mark < at:
            continue
        out[phase] = round(mark - at, 2)
        at = mark
    if end > at:
        out["other"] = round(end - at, 2)
    return out


def _step_seconds(instance: Any, run_id: str) -> dict[str, Any]:
    """Where the time of a run goes, from its event log: wall time per step and its split by phase
    (`step_phases`), and the Dagster bookkeeping events a single-run backfill writes one per partition
    per asset (planned and materialization events) with the seconds spanned by each kind's burst of writes."""
    from dagster import DagsterEventType

    per_step: dict[str, list[tuple[str, float]]] = {}
    bursts: dict[tuple[str | None, str], list[float]] = {}
    first = last = None
    for rec in instance.all_logs(run_id):
        ev = rec.dagster_event
        first = rec.timestamp if first is None else first
        last = rec.timestamp
        if ev is None:
            continue
        if ev.event_type in (DagsterEventType.ASSET_MATERIALIZATION_PLANNED, DagsterEventType.ASSET_MATERIALIZATION):
            bursts.setdefault((ev.step_key, ev.event_type.value), []).append(rec.timestamp)
        if ev.step_key:
            per_step.setdefault(ev.step_key, []).append((ev.event_type.value, rec.timestamp))
    steps: dict[str, float] = {}
    phases: dict[str, dict[str, float]] = {}
    starts = []
    for step, marks in per_step.items():
        times = dict(marks)  # the last time of each kind is enough for start and end
        begin = next((t for k, t in marks if k == "STEP_START"), None)
        end = times.get("STEP_SUCCESS", times.get("STEP_FAILURE"))
        if begin is None:
            continue
        starts.append(begin)
        if end is not None:
            steps[step] = round(end - begin, 2)
            phases[step] = step_phases(marks)
    events: dict[str, dict[str, float]] = {}
    for (_, kind), ts in bursts.items():
        e = events.setdefault(kind, {"count": 0, "seconds": 0.0})
        e["count"] += len(ts)
        e["seconds"] = round(e["seconds"] + max(ts) - min(ts), 1)
    totals = {p: round(sum(ph.get(p, 0.0) for ph in phases.values()), 1) for p in (*PHASES, "other")}
    first_step = min(starts) if starts else None
    return {"steps": dict(sorted(steps.items(), key=lambda kv: -kv[1])), "events": events,
            "phases": {k: phases[k] for k in sorted(phases, key=lambda k: -steps[k])}, "phase_totals": totals,
            "before_first_step_s": round(first_step - first, 1) if first_step and first else None,
            "run_log_span_s": round(last - first, 1) if first and last else None}


def _groups(*names: str) -> Any:
    from dagster import AssetSelection

    sel = AssetSelection.groups(*names)
    return sel


def _assets(*names: str) -> Any:
    from dagster import AssetSelection

    return AssetSelection.assets(*names)


def _con(read_only: bool = True) -> Any:
    from kairos_dagster.settings import load_settings
    from kairos_dagster.warehouse import store

    return store.connect(load_settings().duckdb_path, read_only=read_only)


def _tables_present(names: tuple[str, ...]) -> list[str]:
    from kairos_dagster.warehouse.store import table_exists

    with _con() as con:
        return [n for n in names if not table_exists(con, n)]


def _require(names: tuple[str, ...], stage: str) -> None:
    missing = _tables_present(names)
    if missing:
        raise SystemExit(f"stage {stage}: warehouse tables {missing} are missing; run their stages first")


# ------------------------------------------------------------------------------- issue 2
def stage_generate() -> dict:
    """SyntheticMarket: SEP, DAILY, SF1, SF2, SF3 over the whole span, all tickers, in one process."""
    from kairos_dagster.sources.synthetic import SyntheticMarket

    n = int(os.environ["KAIROS_SYNTHETIC_TICKERS"])
    start, end = _env_date("KAIROS_START_DATE"), _env_date("BENCH_LAST_WEEK") + dt.timedelta(days=6)
    market = SyntheticMarket(seed=int(os.environ.get("KAIROS_SYNTHETIC_SEED", "7")), n_tickers=n)
    rows: dict[str, int] = {}
    per_table: dict[str, float] = {}
    t0 = time.perf_counter()
    for name in SYNC_TABLES:
        t1 = time.perf_counter()
        df = market.table(name, start, end)
        per_table[name] = round(time.perf_counter() - t1, 2)
        rows[name] = df.height
        del df
    return {"seconds": time.perf_counter() - t0, "rows": rows, "table_seconds": per_table}


def stage_sync() -> dict:
    return _materialize(_assets(*SYNC_ASSETS), (first_week(), last_week()))


def stage_sync_week() -> dict:
    """Issue 11: the week after the last one, synced a week later (the feed then serves a week of new
    splits, dividends and corrections of the held history), on a copy of the warehouse."""
    import shutil

    _require(("sep_base", "daily", "sf1"), "sync_week")
    src = os.environ["KAIROS_DUCKDB_PATH"]
    copy = os.path.join(os.environ["BENCH_WORK"], "sync_week.duckdb")
    shutil.copyfile(src, copy)
    nxt = dt.date.fromisoformat(last_week()) + dt.timedelta(days=7)
    os.environ.update({"KAIROS_DUCKDB_PATH": copy, "KAIROS_AS_OF": (nxt + dt.timedelta(days=5)).isoformat()})
    try:
        out = _materialize(_assets(*SYNC_ASSETS), (nxt.isoformat(), nxt.isoformat()))
        from kairos_dagster.warehouse import store

        with store.connect(copy, read_only=True) as con:
            out["restated"] = {f"{t}/{k}": [int(n), int(r)] for t, k, n, r in con.execute(
                "SELECT table_name, kind, count(DISTINCT ticker), sum(rows) FROM sync_restatements GROUP BY ALL "
                "ORDER BY ALL").fetchall()}
        return out
    finally:
        os.unlink(copy)


# ------------------------------------------------------------------------------- issue 3
def stage_features() -> dict:
    """The Phases 1-5 backfill, profiled (`step_phases`), beside the issue's reference: one plain polars pass
    of 20 rolling features over the same sep_base, written back (../shared/bench/feature_ref.py, when that
    checkout is there), compared per output column."""
    _require(("sep_base", "daily", "sf1"), "features")
    out = _materialize(_groups(*FEATURE_GROUPS), (first_week(), last_week()))
    with _con() as con:
        from kairos_dagster.warehouse.store import table_columns

        key = {"ticker", "date"}
        out["output_columns"] = sum(len(set(table_columns(con, t)) - key) for t in out["assets"])
    out["reference"] = feature_reference()
    ref = out["reference"]
    if ref.get("seconds") and out["output_columns"]:
        out["per_column_ratio"] = round((out["seconds"] / out["output_columns"]) / (ref["seconds"] / ref["features"]), 2)
    return out


def feature_reference() -> dict:
    """Run the reference pass on this warehouse in its own process: its seconds and feature count."""
    import subprocess
    from pathlib import Path

    from kairos_dagster.settings import PROJECT_ROOT, load_settings

    script = Path(os.environ.get("BENCH_FEATURE_REF", PROJECT_ROOT.parent / "shared" / "bench" / "feature_ref.py"))
    if not script.exists():
        return {"error": f"{script} not found (set BENCH_FEATURE_REF)"}
    done = subprocess.run([sys.executable, str(script), str(load_settings().duckdb_path)], capture_output=True,
                          text=True, timeout=1800)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    seconds, features = done.stdout.split()[-2:]
    return {"seconds": float(seconds), "features": int(features), "script": str(script)}


def stage_alpha158() -> dict:
    """Kairos's technical features' core beside Qlib's Alpha158 on this warehouse's sep_base
    (benchmarks/qlib_compare.py)."""
    from pathlib import Path

    from benchmarks.qlib_compare import compare
    from kairos_dagster.settings import load_settings

    _require(("sep_base", "daily", "market_returns"), "alpha158")
    with _con() as con:
        sep = con.execute("SELECT * FROM sep_base ORDER BY ticker, date").pl()
        daily = con.execute("SELECT ticker, date, marketcap FROM daily ORDER BY ticker, date").pl()
        mkt_ret = con.execute("SELECT date, mkt_ret FROM market_returns ORDER BY date").pl()
    return compare(sep, daily, mkt_ret, Path(load_settings().duckdb_path).parent)


def stage_reports() -> dict:
    _require(("alpha_composite_v8", "feat_targets"), "reports")
    return _materialize(_groups("reports"), (first_week(), last_week()))


def stage_features_week() -> dict:
    _require(("alpha_composite_v8",), "features_week")
    return _materialize(_groups(*FEATURE_GROUPS), (last_week(), last_week()))


def stage_pandas() -> dict:
    """benchmarks.pandas_baseline.compare on as many rows as the synthetic market's SEP at this scale."""
    from benchmarks import pandas_baseline
    from kairos_dagster.calendar import sessions_between

    n = int(os.environ["KAIROS_SYNTHETIC_TICKERS"])
    start, end = _env_date("KAIROS_START_DATE"), _env_date("BENCH_LAST_WEEK") + dt.timedelta(days=6)
    n_sessions = len(sessions_between(start, end))
    t0 = time.perf_counter()
    res = pandas_baseline.compare(n, n_sessions)
    return {"seconds": time.perf_counter() - t0, "tickers": n, "sessions": n_sessions,
            **{k: float(v) for k, v in res.items()}}


# ------------------------------------------------------------------------------- issue 4
def _ml_history() -> tuple[pl.DataFrame, pl.DataFrame, list[dt.date], dict]:
    """Training rows of one model on the full window: universe on rebalance dates, labels known by the end."""
    from kairos_dagster.calendar import rebalance_dates_between
    from kairos_dagster.ml import tables
    from kairos_dagster.ml.walk_forward import default_anchor
    from kairos_dagster.settings import load_settings

    # From the walk-forward anchor, as the assets do: before it the universe is still warming up.
    start, end = default_anchor(load_settings()), _env_date("BENCH_LAST_WEEK")
    dates = rebalance_dates_between(start, end - dt.timedelta(days=1))
    t0 = time.perf_counter()
    with _con() as con:
        feats = tables.load_matrix(con, tables.ml_features(), start, end, dates=dates)
        labels = tables.load_labels(con, start, start, dates)
    return feats, labels, dates, {"load_seconds": round(time.perf_counter() - t0, 2)}


def _train_frame() -> tuple[pl.DataFrame, list[str], dict]:
    from kairos_dagster.ml import tables
    from kairos_dagster.ml.dataset import training_rows

    feats, labels, dates, info = _ml_history()
    # A label of date d is known 5 sessions later: keep the rows whose horizon ended before the last week.
    label_end = _env_date("BENCH_LAST_WEEK") - dt.timedelta(days=1)
    usable = [d for d in dates if d <= label_end - dt.timedelta(days=10)]
    frame, stats = training_rows(feats, labels, tables.ml_features(), ML_LABEL,
                                 start=usable[0], end=usable[-1], label_end=label_end)
    return frame, tables.ml_features(), {**info, "train_rows": frame.height, "features": len(tables.ml_features()),
                                         "train_dates": len(usable), **{k: int(v) for k, v in stats.items()}}


def stage_ml_retrain() -> dict:
    _require(("alpha_composite_v8", "feat_targets"), "ml_retrain")
    from kairos_dagster.ml.train import DEFAULT_PARAMS, train_classifier

    frame, features, info = _train_frame()
    t0 = time.perf_counter()
    model = train_classifier(frame, features, ML_LABEL, DEFAULT_PARAMS, seed=42,
                             device=os.environ.get("KAIROS_XGB_DEVICE", "cpu"), n_threads=os.cpu_count() or 2)
    return {"seconds": time.perf_counter() - t0, **info, "best_iteration": model.best_iteration,
            "valid_metrics": model.valid_metrics}


def stage_ml_tune() -> dict:
    _require(("alpha_composite_v8", "feat_targets"), "ml_tune")
    import tempfile

    from kairos_dagster.ml.tune import tune

    n_trials = int(os.environ.get("BENCH_TRIALS", "20"))
    frame, features, info = _train_frame()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_WORK")) as tmp:
        t0 = time.perf_counter()
        res = tune(frame, features, ML_LABEL, n_trials=n_trials, seed=42,
                   storage=os.path.join(tmp, "bench.journal"), study_name="bench",
                   n_threads=os.cpu_count() or 2, device=os.environ.get("KAIROS_XGB_DEVICE", "cpu"))
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, **info, "n_trials": n_trials, "summary": _jsonable(res.summary),
            "best_params": _jsonable(res.best_params)}


def stage_ml_backfill() -> dict:
    _require(("alpha_composite_v8", "feat_targets"), "ml_backfill")
    return _materialize(_assets("ml_predictions_v2"), (first_week(), last_week()))


def stage_ml_score_week() -> dict:
    """The last week of ml_predictions_v2 with its model already in the registry: scoring only.
    Without a prior backfill the first run of the week trains that model (one retrain on the full
    expanding window, through the asset) and is reported as `first_run`; the second run is timed."""
    _require(("alpha_composite_v8", "feat_targets"), "ml_score_week")
    week = (last_week(), last_week())
    first = None
    if _tables_present(("ml_predictions_v2",)) or not _has_week("ml_predictions_v2", last_week()):
        first = _materialize(_assets("ml_predictions_v2"), week)
    second = _materialize(_assets("ml_predictions_v2"), week)
    if first is not None:
        second["first_run"] = {k: first[k] for k in ("seconds", "step_seconds", "success")}
    return second


def _has_week(table: str, monday: str) -> bool:
    start = dt.date.fromisoformat(monday)
    with _con() as con:
        n = con.execute(f"SELECT count(*) FROM {table} WHERE date >= ? AND date < ?",
                        [start, start + dt.timedelta(days=7)]).fetchone()[0]
    return n > 0


def stage_ml_tuned_backfill() -> dict:
    _require(("alpha_composite_v8", "feat_targets"), "ml_tuned_backfill")
    return _materialize(_assets("ml_predictions_v2_tuned"), (first_week(), last_week()))


def stage_matrix() -> dict:
    _require(("ml_predictions_v2", "ml_predictions_v2_tuned"), "matrix")
    return _materialize(_groups("phase7_matrix"), (first_week(), last_week()))


def stage_ic() -> dict:
    """Out-of-sample weekly rank IC over the last three years against ret_5d_f (universe rows on
    rebalance dates): the ML alphas, alpha_composite_v8 and the synthetic market's oracle."""
    _require(("universe", "feat_targets", "alpha_composite_v8"), "ic")
    from kairos_dagster.calendar import rebalance_dates_between
    from kairos_dagster.ml.metrics import ic_stats, rank_ic_by_date
    from kairos_dagster.sources.synthetic import SyntheticMarket
    from kairos_dagster.warehouse.store import table_exists

    t0 = time.perf_counter()
    end = _env_date("BENCH_LAST_WEEK") + dt.timedelta(days=7)
    start = max(end - dt.timedelta(days=3 * 365), _env_date("KAIROS_START_DATE"))
    dates = rebalance_dates_between(start, end - dt.timedelta(days=1))
    signals = {"alpha_composite_v8": ("alpha_composite_v8", "alpha_composite_v8"),
               "alpha_ml_v2_clf": ("ml_predictions_v2", "alpha_ml_v2_clf"),
               "alpha_ml_v2_tuned_clf": ("ml_predictions_v2_tuned", "alpha_ml_v2_tuned_clf")}
    with _con() as con:
        base = con.execute(
            "SELECT u.ticker, u.date, t.ret_5d_f FROM universe u JOIN feat_targets t USING (ticker, date) "
            "WHERE list_contains($dates::DATE[], u.date)", {"dates": dates}).pl()
        for col, (table, src) in signals.items():
            if table_exists(con, table):
                s = con.execute(f"SELECT ticker, date, {src} AS {col} FROM {table} "
                                "WHERE list_contains($dates::DATE[], date)", {"dates": dates}).pl()
                base = base.join(s, on=["ticker", "date"], how="left")
    market = SyntheticMarket(seed=int(os.environ.get("KAIROS_SYNTHETIC_SEED", "7")),
                             n_tickers=int(os.environ["KAIROS_SYNTHETIC_TICKERS"]))
    with _con() as con:
        held = con.execute('SELECT permaticker, ticker FROM tickers WHERE "table" = \'SEP\'').pl()
    oracle = market.oracle(start, end).drop("ticker").join(held, on="permaticker").select(  # by company
        "ticker", "date", pl.col("expected_ret_5d").alias("oracle"))
    base = base.join(oracle, on=["ticker", "date"], how="left")
    out: dict[str, Any] = {}
    for col in ["oracle", *(c for c in signals if c in base.columns)]:
        stats = ic_stats(rank_ic_by_date(base, col, "ret_5d_f")["rank_ic"])
        out[col] = {k: round(float(v), 4) for k, v in stats.items()}
    ref = out["oracle"]["rank_ic"]
    for col, st in out.items():
        st["ratio_to_oracle"] = round(st["rank_ic"] / ref, 3) if ref and col != "oracle" else None
    return {"seconds": time.perf_counter() - t0, "window": [str(start), str(end - dt.timedelta(days=1))],
            "rebalance_dates": len(dates), "rows": base.height, "ic": out}


# ------------------------------------------------------------------------------- issue 5
def signal_frame(n: int, seed: int = 11) -> tuple[pl.DataFrame, pl.DataFrame, dt.date]:
    """A 5,000-row feat_matrix_v2 slice at a signal date and 63 sessions of one-factor returns."""
    from kairos_dagster import calendar as cal
    from kairos_dagster.sources.schemas import SECTORS

    signal_date = cal.previous_session(cal.rebalance_date_for_week(_env_date("BENCH_LAST_WEEK")))
    rng = np.random.default_rng(seed)
    tickers = [f"T{i:05d}" for i in range(n)]
    frame = pl.DataFrame({
        "date": [signal_date] * n, "ticker": tickers, "sector": [SECTORS[i % len(SECTORS)] for i in range(n)],
        "alpha_ml_v2_tuned_clf": rng.normal(0.5, 0.1, n), "alpha_composite_v8": rng.normal(0.0, 1.0, n),
        "vol_blend": rng.uniform(0.15, 0.6, n), "adv_20": rng.lognormal(16.0, 1.0, n),
        "price": rng.uniform(5.0, 300.0, n),
    })
    days = cal.sessions_array(cal.sessions_offset(signal_date, -62), signal_date)
    m = rng.normal(0, 1, (len(days), 1))
    r = 0.02 * (np.sqrt(0.3) * m + np.sqrt(0.7) * rng.normal(0, 1, (len(days), n)))
    rets = pl.DataFrame({"ticker": np.repeat(np.array(tickers), len(days)), "date": np.tile(days, n),
                         "ret": r.T.reshape(-1)}).with_columns(pl.col("date").cast(pl.Date))
    return frame, rets, signal_date


def stage_rebalance_core() -> dict:
    """risk4.build_portfolio on a 5,000-row signal frame, fresh and then against the first run as prior."""
    from kairos_dagster.portfolio.config import ML_CONFIG
    from kairos_dagster.portfolio.risk4 import build_portfolio

    n = int(os.environ.get("BENCH_SIGNAL_ROWS", "5000"))
    frame, rets, signal_date = signal_frame(n)
    t0 = time.perf_counter()
    first = build_portfolio(frame, None, rets, ML_CONFIG, signal_date)
    fresh = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = build_portfolio(frame.with_columns(pl.col("alpha_ml_v2_tuned_clf").reverse()),
                          first.picks.select("ticker", "weight", "sector"), rets, ML_CONFIG, signal_date)
    with_prior = time.perf_counter() - t1
    return {"seconds": max(fresh, with_prior), "fresh_seconds": round(fresh, 3),
            "with_prior_seconds": round(with_prior, 3), "signal_rows": n, "eligible": res.n_eligible,
            "positions": res.picks.height}


def stage_rebalance_asset() -> dict:
    _require(("feat_matrix_v2",), "rebalance_asset")
    out = os.path.join(os.environ["KAIROS_OUTPUT_DIR"], "rebalance")
    cfg = {"ops": {"rebalance": {"config": {"no_prior": True, "output_dir": out}}}}
    return _materialize(_assets(*REBALANCE_ASSETS), (last_week(), last_week()), run_config=cfg)


# ------------------------------------------------------------------------------- issue 10
def stage_friday() -> dict:
    """The Friday 21:00 schedule's two runs as it launches them for the last week: the forward-target
    refresh of the previous weeks, then weekly_pipeline_job (sync + feature graph + ML + matrix).
    Reports whether the week is a retrain or retune point (those weeks fit models; the 60 s target is
    for a week that only scores)."""
    return _friday(_env_date("BENCH_LAST_WEEK"))


def _latest_model_week(kind: str) -> dt.date:
    """The latest week on or before the last one that is a retune point ("retune") or a retrain point
    that is not one ("retrain")."""
    from kairos_dagster.ml.schedule import model_schedule
    from kairos_dagster.ml.walk_forward import default_anchor
    from kairos_dagster.settings import load_settings

    settings = load_settings()
    week = _env_date("BENCH_LAST_WEEK")
    for _ in range(2 * settings.ml_retune_weeks + 1):
        plan = model_schedule(week, anchor=default_anchor(settings), retrain_weeks=settings.ml_retrain_weeks,
                              retune_weeks=settings.ml_retune_weeks)
        if (plan.tune_week == week) if kind == "retune" else (plan.retrain_week == week != plan.tune_week):
            return week
        week -= dt.timedelta(weeks=1)
    raise RuntimeError(f"no {kind} week in the two years before {_env_date('BENCH_LAST_WEEK')}")


def _without_stored_models(kind: str, *, keep_tuning: bool) -> None:
    """Point this stage's process at empty model and Optuna folders (kept in the bench's work folder, as
    the registry rows the run writes name them): the run fits what a retrain or retune week fits, where
    the stored models of the ML backfills would otherwise be reused. `keep_tuning` copies the stored
    tune results (a retrain week reuses its tune point's parameters)."""
    from kairos_dagster.settings import load_settings

    stored = load_settings().models_dir
    work = os.path.dirname(os.environ["KAIROS_DUCKDB_PATH"])
    for var, name in (("KAIROS_MODELS_DIR", "models"), ("KAIROS_OPTUNA_STORAGE", "optuna")):
        folder = os.path.join(work, f"friday_{kind}_{name}")
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        os.environ[var] = folder
    if keep_tuning:
        for tuning in stored.glob("*/tuning"):
            shutil.copytree(tuning, os.path.join(os.environ["KAIROS_MODELS_DIR"], tuning.parent.name, "tuning"))


def stage_friday_retrain() -> dict:
    """The Friday runs of the latest retrain week (two models fitted on the full window, then scored)."""
    _without_stored_models("retrain", keep_tuning=True)
    return _friday(_latest_model_week("retrain"))


def stage_friday_retune() -> dict:
    """The Friday runs of the latest retune week (Optuna tuning, then both models fitted and scored)."""
    _without_stored_models("retune", keep_tuning=False)
    return _friday(_latest_model_week("retune"))


def _friday(monday: dt.date) -> dict:
    from dagster import build_schedule_context

    from kairos_dagster.definitions import build_definitions
    from kairos_dagster.defs.features.automation import PIPELINE_SELECTION
    from kairos_dagster.ml.schedule import model_schedule
    from kairos_dagster.settings import load_settings

    _require(("feat_matrix_v2", "ml_predictions_v2", "ml_predictions_v2_tuned"), "friday")
    friday = dt.datetime.combine(monday + dt.timedelta(days=4), dt.time(21, 0), tzinfo=dt.UTC)
    from kairos_dagster.sources.synthetic import panel as sp

    cache = load_settings().synthetic_cache_dir
    current = f"panel-*-{sp._generator_version()}-through*"  # a panel of this generator, before the runs
    panel_cache = "warm" if cache is not None and any(cache.glob(current)) else "cold"
    friday_weekly_schedule = build_definitions().get_schedule_def("friday_weekly_schedule")
    requests = friday_weekly_schedule(build_schedule_context(scheduled_execution_time=friday))
    runs, total = [], 0.0
    for req in requests:
        tags = req.tags
        if req.asset_selection:  # the targets refresh over the previous weeks
            rng = (tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"])
            r = _materialize(_assets(*(k.to_user_string() for k in req.asset_selection)), rng)
        else:
            r = _materialize(PIPELINE_SELECTION, (req.partition_key, req.partition_key))
        runs.append({"run_key": req.run_key, **r})
        total += r["seconds"]
    from kairos_dagster.ml.walk_forward import default_anchor

    settings = load_settings()
    plan = model_schedule(monday, anchor=default_anchor(settings), retrain_weeks=settings.ml_retrain_weeks,
                          retune_weeks=settings.ml_retune_weeks)
    kind = ("retune" if plan.tune_week == monday else "retrain" if plan.retrain_week == monday else "score only")
    return {"seconds": total, "success": all(r["success"] for r in runs), "week": monday.isoformat(),
            "week_kind": kind, "synthetic_panel_cache": panel_cache, "runs": runs,
            "assets": {k: v for r in runs for k, v in r["assets"].items()},
            "step_seconds": {k: v for r in runs for k, v in r["step_seconds"].items()}}


# ------------------------------------------------------------------------------- issue 16
def _sync_tables() -> list[str]:
    """The bench warehouse's tables a feature backfill starts from: every table but those of assets
    outside the sync group (the feature, ML, rebalance, backtest tables and their side tables)."""
    graph = _defs().resolve_asset_graph()
    built = {k.path[-1] for k in graph.get_all_asset_keys() if graph.get(k).group_name != "sync"}
    from kairos_dagster.warehouse import store

    with _con() as con:
        return sorted(set(store.table_names(con)) - built)


def _copy_tables(target: Any, tables: list[str]) -> float:
    """The bench warehouse's `tables` copied into `target` (a new DuckDB file or a lake); seconds."""
    from kairos_dagster.warehouse import store

    t0 = time.perf_counter()
    source = os.environ["KAIROS_DUCKDB_PATH"]
    with store.connect(target) as con:
        con.execute(f"ATTACH '{source}' AS bench_src (READ_ONLY)")
        try:
            for t in tables:
                con.execute(f'CREATE TABLE "{t}" AS SELECT * FROM bench_src.main."{t}"')
        finally:
            con.execute("DETACH bench_src")
    return time.perf_counter() - t0


def _cli_backfill(env: dict[str, str], log: Any) -> float:
    import subprocess

    cmd = [os.path.join(os.path.dirname(sys.executable), "kairos"), "backfill", first_week(), last_week(),
           "--select", ",".join(FEATURE_GROUPS)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         cwd=env["BENCH_VARIANT_DIR"])
    seconds = time.perf_counter() - t0
    log.write(out.stdout)
    if out.returncode != 0:
        raise RuntimeError(f"kairos backfill failed ({env.get('KAIROS_WAREHOUSE', 'file')}, "
                           f"KAIROS_PROCESSES={env.get('KAIROS_PROCESSES', '1')}): {out.stdout[-1500:]}")
    return seconds


def _table_counts(target: Any) -> dict[str, int]:
    from kairos_dagster.warehouse import store

    with store.connect(target, read_only=True) as con:
        return {t: con.execute(f"SELECT count(*) FROM {store.ident(t)}").fetchone()[0] for t in store.table_names(con)}


def stage_features_lake() -> dict:
    """Issue 16: the Phases 1-5 single-run backfill through `kairos backfill` three times from the same
    synced tables: the embedded DuckDB file with SQLite run history, then DuckLake + PostgreSQL storage
    in one process, then with KAIROS_PROCESSES=2. A PostgreSQL server is started for the stage
    (Debian's package, as in the tests). `seconds` is the two-process lake run; ratios to the file."""
    import shutil
    from pathlib import Path

    from kairos_dagster.settings import PROJECT_ROOT
    from kairos_dagster.warehouse import store
    from kairos_dagster_tests.fixtures.postgres import postgres_server

    _require(("sep_base", "daily", "sf1"), "features_lake")
    work = Path(os.environ["BENCH_WORK"]) / "features_lake"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tables = _sync_tables()
    base = {k: v for k, v in os.environ.items() if k not in {"KAIROS_WAREHOUSE", "KAIROS_LAKE_DATA_PATH"}}
    results: dict[str, Any] = {}
    counts = {}
    with postgres_server(work / "pg") as pg, open(work / "backfills.log", "w") as log:
        for name, processes in (("file", 1), ("lake_1", 1), ("lake_2", 2)):
            root = work / name
            (root / "home").mkdir(parents=True)
            env = base | {"BENCH_VARIANT_DIR": str(root), "DAGSTER_HOME": str(root / "home"),
                          "KAIROS_PROCESSES": str(processes), "KAIROS_DUCKDB_PATH": str(root / "kairos.duckdb"),
                          "KAIROS_OUTPUT_DIR": str(root / "outputs"), "KAIROS_MODELS_DIR": str(root / "models")}
            if name == "file":
                target = root / "kairos.duckdb"
                home_yaml = (Path(os.environ["DAGSTER_HOME"]) / "dagster.yaml").read_text()
                (root / "home" / "dagster.yaml").write_text(home_yaml.replace(os.environ["DAGSTER_HOME"],
                                                                              str(root / "home")))
            else:
                pg.create_database(f"{name}_dagster")
                pg.create_database(f"{name}_lake")
                env |= pg.dagster_env(f"{name}_dagster") | {
                    "KAIROS_WAREHOUSE": f"ducklake:postgres:{pg.libpq(name + '_lake')}",
                    "KAIROS_LAKE_DATA_PATH": str(root / "lake_files")}
                shutil.copy(PROJECT_ROOT / "deploy" / "postgres" / "dagster.yaml", root / "home" / "dagster.yaml")
                target = store.target(env["KAIROS_WAREHOUSE"], env["KAIROS_LAKE_DATA_PATH"])
            copy_s = _copy_tables(target, tables)
            log.write(f"== {name} (KAIROS_PROCESSES={processes})\n")
            results[name] = {"seconds": round(_cli_backfill(env, log), 2), "copy_seconds": round(copy_s, 2),
                             "processes": processes}
            counts[name] = _table_counts(target)
    same = counts["file"] == counts["lake_1"] == counts["lake_2"]
    file_s = results["file"]["seconds"]
    return {"seconds": results["lake_2"]["seconds"], "success": same, "variants": results,
            "ratio_lake_1": round(results["lake_1"]["seconds"] / file_s, 2),
            "ratio_lake_2": round(results["lake_2"]["seconds"] / file_s, 2),
            "tables": len(counts["file"]), "rows": sum(counts["file"].values()),
            "row_counts_equal": same, "copied_tables": tables}


REBUILD_GROUPS = ("sync", *FEATURE_GROUPS, "phase6_ml", "phase7_matrix")


def stage_rebuild() -> dict:
    """Issue 18 item 4: the full rebuild as an operator runs it, one `kairos backfill` of every group from
    the sync to the matrix (both ML walk-forwards included) over the whole span, from an empty warehouse
    and model registry. It builds the bench warehouse the later stages use; the CLI's progress lines are
    kept, and the run's per-step split is read from its event log."""
    import subprocess
    from pathlib import Path

    from dagster import DagsterEventType, DagsterInstance, RunsFilter

    warehouse, models = Path(os.environ["KAIROS_DUCKDB_PATH"]), Path(os.environ["KAIROS_MODELS_DIR"])
    if warehouse.exists() or (models.exists() and any(models.iterdir())):
        raise SystemExit(f"stage rebuild starts from nothing: remove {warehouse} (and its .wal) and {models} first")
    cmd = [os.path.join(os.path.dirname(sys.executable), "kairos"), "backfill", first_week(), last_week(),
           "--select", ",".join(REBUILD_GROUPS)]
    t0 = time.perf_counter()
    env = os.environ | {"KAIROS_LOG_LEVEL": "INFO"}  # as an operator runs it: the progress lines shown
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - t0
    (Path(os.environ["BENCH_WORK"]) / "rebuild.cli.log").write_text(out.stdout)
    if out.returncode != 0:
        raise RuntimeError(f"kairos backfill failed (exit {out.returncode}): {out.stdout[-1500:]}")
    with DagsterInstance.get() as instance:
        run = instance.get_run_records(RunsFilter(tags={"kairos/trigger": "cli_backfill"}), limit=1)[0].dagster_run
        timing = _step_seconds(instance, run.run_id)
        failed = sorted({f"{e.asset_key.to_user_string()}.{e.check_name}" for e in
                         (r.dagster_event.event_specific_data for r in instance.all_logs(
                             run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)) if not e.passed})
    from kairos_dagster.warehouse import store

    with _con() as con:
        counts = {t: con.execute(f"SELECT count(*) FROM {store.ident(t)}").fetchone()[0]
                  for t in store.table_names(con)}
    progress = [line for line in out.stdout.splitlines() if "elapsed" in line]
    return {"seconds": seconds, "success": True, "groups": list(REBUILD_GROUPS), "tables": len(counts),
            "rows": sum(counts.values()), "assets": counts, "step_seconds": timing["steps"],
            "dagster_events": timing["events"], "step_phases": timing["phases"],
            "phase_totals": timing["phase_totals"], "before_first_step_s": timing["before_first_step_s"],
            "failed_checks": failed, "progress_lines": progress}


def stage_demo() -> dict:
    """`make demo` from a fresh `git clone` of this checkout's HEAD, environment bootstrap included,
    then a second `make demo` timing without the bootstrap (fresh data, the .venv kept)."""
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    tmp = Path(tempfile.mkdtemp(prefix="kairos-demo-bench-"))
    try:
        subprocess.run(["git", "clone", "-q", str(root), str(tmp / "k")], check=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAIROS_", "DAGSTER_", "BENCH_"))}
        t0 = time.perf_counter()
        first = subprocess.run(["make", "demo"], cwd=tmp / "k", env=env, capture_output=True, text=True)
        with_bootstrap = time.perf_counter() - t0
        for p in ("data", "outputs", ".dagster_home"):
            shutil.rmtree(tmp / "k" / p, ignore_errors=True)
        t0 = time.perf_counter()
        second = subprocess.run(["make", "demo"], cwd=tmp / "k", env=env, capture_output=True, text=True)
        without = time.perf_counter() - t0
        return {"seconds": with_bootstrap, "success": first.returncode == 0 and second.returncode == 0,
                "without_bootstrap_s": round(without, 1), "with_bootstrap_s": round(with_bootstrap, 1),
                "tail": (first.stdout + first.stderr)[-600:] if first.returncode else ""}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------- issue 13
BACKTEST_ASSETS = ("backtest_daily", "backtest_trades", "backtest_positions", "backtest_book")


def stage_backtest_ml() -> dict:
    """The 10-year single-run backfill of the `ml` strategy alone (its own config_id)."""
    _require(("feat_matrix_v2", "market_returns"), "backtest_ml")
    cfg = {"ops": {"backtest": {"config": {"strategies": ["ml"], "config_id": "bench-ml"}}}}
    return _materialize(_assets(*BACKTEST_ASSETS), (first_week(), last_week()), run_config=cfg)


def stage_backtest() -> dict:
    """The 10-year single-run backfill of every strategy (the default chain), then strategy_stats."""
    _require(("feat_matrix_v2", "market_returns"), "backtest")
    return _materialize(_assets(*BACKTEST_ASSETS), (first_week(), last_week()))


def stage_backtest_week() -> dict:
    """One incremental week of every strategy (the last partition, continuing the stored books)."""
    _require(("backtest_book",), "backtest_week")
    return _materialize(_assets(*BACKTEST_ASSETS), (last_week(), last_week()))


def stage_backtest_capacity() -> dict:
    """The capacity sweep's single-run backfill (ml at $1e7 and $1e9; $1e5 is the default chain) and its rows."""
    _require(("backtest_daily",), "backtest_capacity")
    out = _materialize(_assets("backtest_capacity"), (first_week(), last_week()))
    with _con() as con:
        rows = con.execute("SELECT portfolio_value, sharpe, sharpe_gross, annual_cost_drag, unfilled_share, "
                           "sharpe_vs_smallest FROM backtest_capacity ORDER BY portfolio_value").fetchall()
    out["sweep"] = [dict(zip(("value", "sharpe", "sharpe_gross", "cost_drag", "unfilled_share", "vs_smallest"),
                             (round(x, 4) for x in r), strict=True)) for r in rows]
    return out


def stage_strategy_stats() -> dict:
    """strategy_stats of the whole stored default chain (the last partition recomputes all of it, and the
    report); the full-period Sharpe of each strategy and its ratio to the oracle's."""
    _require(("backtest_daily",), "strategy_stats")
    out = _materialize(_assets("strategy_stats"), (last_week(), last_week()))
    with _con() as con:
        rows = dict(con.execute("SELECT strategy, sharpe FROM strategy_stats WHERE config_id = 'default' AND "
                                "period = 'full'").fetchall())
    oracle = rows.get("oracle")
    out["sharpe"] = {k: round(v, 3) for k, v in rows.items() if v is not None}
    if oracle:
        out["sharpe_vs_oracle"] = {k: round(v / oracle, 3) for k, v in rows.items() if v is not None}
    return out


def stage_backtest_vectorbt() -> dict:
    """The `ml` chain's weights replayed with no costs by Kairos's engine and by vectorbt: both timed, the
    gross curves compared (must agree within 1e-6)."""
    from benchmarks.vectorbt_compare import compare

    _require(("backtest_positions",), "backtest_vectorbt")
    with _con() as con:
        weights = con.execute("SELECT date, ticker, weight FROM backtest_positions WHERE strategy = 'ml' AND "
                              "config_id = 'default' ORDER BY date, ticker").pl()
        lo = weights["date"].min()
        sep = con.execute("SELECT ticker, date, open, close, closeadj, closeunadj FROM sep_base WHERE date >= ? "
                          "ORDER BY date, ticker", [lo]).pl()
    t0 = time.perf_counter()
    out = compare(sep, weights)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["success"] = out["max_rel_diff"] <= 1e-6 and out["sessions_only_one_side"] == 0
    return out


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


STAGES: dict[str, Callable[[], dict]] = {
    "generate": stage_generate,
    "sync": stage_sync,
    "features": stage_features,
    "alpha158": stage_alpha158,
    "reports": stage_reports,
    "features_week": stage_features_week,
    "pandas": stage_pandas,
    "ml_retrain": stage_ml_retrain,
    "ml_tune": stage_ml_tune,
    "ml_backfill": stage_ml_backfill,
    "ml_score_week": stage_ml_score_week,
    "ml_tuned_backfill": stage_ml_tuned_backfill,
    "matrix": stage_matrix,
    "ic": stage_ic,
    "rebalance_core": stage_rebalance_core,
    "rebalance_asset": stage_rebalance_asset,
    "friday": stage_friday,
    "friday_retrain": stage_friday_retrain,
    "friday_retune": stage_friday_retune,
    "sync_week": stage_sync_week,
    "demo": stage_demo,
    "features_lake": stage_features_lake,
    "rebuild": stage_rebuild,
    "backtest_ml": stage_backtest_ml,
    "backtest": stage_backtest,
    "backtest_week": stage_backtest_week,
    "strategy_stats": stage_strategy_stats,
    "backtest_capacity": stage_backtest_capacity,
    "backtest_vectorbt": stage_backtest_vectorbt,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("stage", choices=sorted(STAGES))
    p.add_argument("--json", required=True, help="where to write the stage's JSON record")
    a = p.parse_args(argv)
    record = STAGES[a.stage]()
    with open(a.json, "w") as fh:
        json.dump(_jsonable(record), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
