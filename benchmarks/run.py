"""`make bench`: full-market-scale speed and memory of every issue, written to benchmarks/RESULTS.md.

    python -m benchmarks.run [--tickers 5000] [--years 10] [--only NAME ...] [--out benchmarks/RESULTS.md]

Every stage (benchmarks.stages) runs in a fresh subprocess: its peak RSS is that process's own
(`os.wait4` rusage, ru_maxrss), its wall time is timed twice — the measured operation inside the
process (`measured`, what the targets refer to) and the whole process with interpreter and import
start-up (`process`). The 1-minute load average is sampled during each stage because the machine
is shared. Stages share one scratch warehouse under benchmarks/_work/<tickers>x<years>/ (git-ignored)
so later stages read what earlier ones wrote; `--clean` deletes it at the end.

Results accumulate in benchmarks/_work/results.json (keyed by scale and stage), so stages can be run
one at a time (`--only sync`, then `--only features`, ...) and RESULTS.md always shows every stage
measured so far, with the date, the scale and the machine of each measurement. Nothing is
extrapolated: a stage that was not run is listed with the reason.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "_work"


@dataclass(frozen=True)
class Stage:
    name: str
    issue: int
    what: str
    target_s: float | None  # None: measured and reported, no target
    target_gb: float | None = None
    needs: tuple[str, ...] = ()


STAGES: tuple[Stage, ...] = (
    Stage("generate", 2, "synthetic SEP/DAILY/SF1/SF2/SF3, all tickers, whole span (SyntheticMarket.table)", None),
    Stage("sync", 2, "single-run sync backfill of tickers, sep_base, daily, sf1, sf2, sf3 (dagster run)", 120, 6),
    Stage("sync_week", 11, "the next week's sync a week later, on a copy of the full warehouse: the week's rows and "
          "every held row the feed restated since (lastupdated.gte; splits, dividends, corrections)", 15, None,
          ("sync",)),
    Stage("features", 3, "single-run backfill of Phases 1-5 (groups phase1_universe .. phase5_composites)",
          180, 12, ("sync",)),
    Stage("alpha158", 18, "the technical features' pure functions (106) beside Qlib's Alpha158 (158, `D.features`, "
          "cold, 2 workers) on the same sep_base, per stock·feature·year; K-bar features cross-checked",
          None, None, ("features",)),
    Stage("reports", 3, "single-run backfill of the reports group (factor_ic)", None, None, ("features",)),
    Stage("features_week", 3, "one incremental week (last partition) of Phases 1-5", 30, None, ("features",)),
    Stage("pandas", 3, "pandas per-ticker baseline vs polars on the same rows (benchmarks/pandas_baseline.py)",
          None),
    Stage("ml_retrain", 4, "one retrain on the full window (ml.train.train_classifier, weekly rows)", 120, None,
          ("features",)),
    Stage("ml_tune", 4, "Optuna tuning, n trials (ml.tune.tune, purged 3-fold walk-forward CV)", 1200, None,
          ("features",)),
    Stage("ml_backfill", 4, "walk-forward backfill of ml_predictions_v2, quarterly retrains (dagster run)", 1800,
          None, ("features",)),
    Stage("ml_score_week", 4, "scoring one week: last partition of ml_predictions_v2, model from the registry",
          5, None, ("features",)),
    Stage("ml_tuned_backfill", 4, "walk-forward backfill of ml_predictions_v2_tuned (yearly retune, dagster run)",
          None, None, ("features",)),
    Stage("matrix", 4, "single-run backfill of feat_matrix_v2 (phase7_matrix)", None, None,
          ("ml_backfill", "ml_tuned_backfill")),
    Stage("ic", 4, "OOS weekly rank IC, last 3 years: ML alphas, alpha_composite_v8, oracle", None, None,
          ("features",)),
    Stage("rebalance_core", 5, "risk4.build_portfolio on a 5,000-row signal frame (fresh, then with prior)", 5),
    Stage("rebalance_asset", 5, "one materialization of rebalance_picks/rebalance_trades (last partition)", 5,
          None, ("matrix",)),
    Stage("friday", 10, "the Friday schedule's runs for the last week: targets refresh + weekly_pipeline_job", 60,
          None, ("matrix",)),
    Stage("friday_retrain", 10, "the Friday schedule's runs for the latest retrain week (both models refitted)",
          None, None, ("matrix",)),
    Stage("friday_retune", 10, "the Friday schedule's runs for the latest retune week (Optuna, then both fits)",
          None, None, ("matrix",)),
    Stage("rebuild", 18, "the full rebuild in one command from an empty warehouse: `kairos backfill` of every group "
          "from sync to the matrix (both ML walk-forwards), with its progress line per asset", 1200),
    Stage("features_lake", 16, "Phases 1-5 single-run backfill (`kairos backfill`) from the same synced tables: "
          "DuckDB file + SQLite, DuckLake + PostgreSQL in 1 process, and in 2 (measured: the 2-process run)",
          None, None, ("sync",)),
    Stage("demo", 10, "`make demo` from a fresh git clone (bootstrap included; details: without it)", None),
    Stage("backtest_ml", 13, "single-run backfill of the `ml` strategy's backtest, all weeks", 60, None, ("matrix",)),
    Stage("backtest", 13, "single-run backfill of the backtest, every strategy, all weeks", 180, None, ("matrix",)),
    Stage("backtest_week", 13, "one incremental week of the backtest, every strategy", 2, None, ("backtest",)),
    Stage("strategy_stats", 13, "strategy_stats over the whole stored backtest", 5, None, ("backtest",)),
    Stage("backtest_capacity", 13, "single-run backfill of the capacity sweep (ml at $1e7 and $1e9)", None, None,
          ("backtest",)),
    Stage("backtest_vectorbt", 13, "the ml chain's weights with no costs: Kairos's engine beside vectorbt "
          "(gross curves within 1e-6; details: both times, vectorbt cold and warm)", None, None, ("backtest",)),
)
BY_NAME = {s.name: s for s in STAGES}
ISSUE_TITLES = {2: "Issue 2 — platform: synthetic market and sync", 3: "Issue 3 — feature graph, Phases 1-5",
                4: "Issue 4 — ML, Phases 6-7", 5: "Issue 5 — rebalance", 10: "Issue 10 — the first run, the Friday run",
                11: "Issue 11 — data integrity: restatements", 13: "Issue 13 — backtest and strategy statistics",
                16: "Issue 16 — scaling out: DuckLake + PostgreSQL",
                18: "Issue 18 — speed: the features' core beside Qlib"}


# ------------------------------------------------------------------------------- machine
def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "mem_gb": mem_gb, "cpu": cpu, "python": platform.python_version(),
            "host": platform.node()}


class LoadSampler:
    """Samples the 1-minute load average every few seconds while a stage runs."""

    def __init__(self, every: float = 5.0) -> None:
        self.every, self.samples = every, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        return {"load_mean": round(sum(self.samples) / len(self.samples), 2), "load_max": round(max(self.samples), 2)}


# ------------------------------------------------------------------------------- scale
def current_monday(today: dt.date | None = None) -> dt.date:
    today = today or dt.date.today()
    return today - dt.timedelta(days=today.weekday())


def start_monday(last: dt.date, years: int) -> dt.date:
    """The Monday of the week `years` years before the week of `last`."""
    try:
        back = last.replace(year=last.year - years)
    except ValueError:  # 29 February
        back = last.replace(year=last.year - years, day=28)
    return back - dt.timedelta(days=back.weekday())


def scale_key(tickers: int, years: int) -> str:
    return f"{tickers}x{years}"


# The project's pools (one DuckDB writer) with run and event storage inside the scratch DAGSTER_HOME.
DAGSTER_YAML = """storage:
  custom:
    module: kairos_dagster.instance.storage
    class: KairosSqliteStorage
    config:
      base_dir: {home}
concurrency:
  pools:
    default_limit: 1
    granularity: op
telemetry:
  enabled: false
"""


def stage_env(tickers: int, years: int, trials: int, last: dt.date) -> tuple[dict[str, str], Path]:
    work = WORK / scale_key(tickers, years)
    home = work / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(DAGSTER_YAML.format(home=home))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAIROS_", "BENCH_"))}
    env.pop("NASDAQ_DATA_LINK_API_KEY", None)  # always the synthetic market
    env.update({
        "KAIROS_DATA_SOURCE": "synthetic",
        "KAIROS_SYNTHETIC_TICKERS": str(tickers),
        "KAIROS_START_DATE": start_monday(last, years).isoformat(),
        "KAIROS_DUCKDB_PATH": str(work / "bench.duckdb"),
        "KAIROS_MODELS_DIR": str(work / "models"),
        "KAIROS_OUTPUT_DIR": str(work / "outputs"),
        "KAIROS_LOG_LEVEL": "WARNING",
        "DAGSTER_HOME": str(work / "dagster_home"),
        "BENCH_LAST_WEEK": last.isoformat(),
        # The feed as served on the morning after the last week (data through its Friday): the same
        # figures whatever the day the bench runs.
        "KAIROS_AS_OF": (last + dt.timedelta(days=5)).isoformat(),
        "BENCH_TRIALS": str(trials),
        "BENCH_WORK": str(work),
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    })
    for k in ("KAIROS_XGB_DEVICE", "KAIROS_ML_TRIALS", "KAIROS_ML_RETRAIN_WEEKS", "KAIROS_ML_RETUNE_WEEKS"):
        if k in os.environ:
            env[k] = os.environ[k]
    return env, work


# ------------------------------------------------------------------------------- running
def run_stage(stage: Stage, env: dict[str, str], work: Path, timeout: float | None) -> dict[str, Any]:
    """The stage in a fresh process; its own peak RSS from wait4, wall time, load during it."""
    out = work / f"{stage.name}.json"
    out.unlink(missing_ok=True)
    commit = git_head()
    log = work / f"{stage.name}.log"
    cmd = [sys.executable, "-m", "benchmarks.stages", stage.name, "--json", str(out)]
    t0 = time.perf_counter()
    with LoadSampler() as load, open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
        deadline = None if timeout is None else time.monotonic() + timeout
        status, rusage, timed_out = 0, None, False
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.monotonic() > deadline:
                proc.kill()
                _, status, rusage = os.wait4(proc.pid, 0)
                timed_out = True
                break
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    rec: dict[str, Any] = {"stage": stage.name, "process_seconds": round(wall, 2),
                           "peak_rss_gb": round(rusage.ru_maxrss / 1024**2, 3), "returncode": proc.returncode,
                           # CPU time (user + system) of the stage process: less sensitive to a shared machine.
                           "cpu_seconds": round(rusage.ru_utime + rusage.ru_stime, 1),
                           "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit,
                           **load.summary()}
    if timed_out:
        rec["error"] = f"killed after the bench timeout of {timeout:.0f} s"
    elif proc.returncode != 0 or not out.exists():
        # The exception lines, not the traceback frames.
        lines = [ln for ln in log.read_text().strip().splitlines() if ln and not ln.startswith(" ")]
        rec["error"] = f"exit {proc.returncode}: " + " | ".join(lines[-3:])[-1500:]
    else:
        rec["result"] = json.loads(out.read_text())
    return rec


def record_path(scale: str, stage: str) -> Path:
    return WORK / "records" / scale / f"{stage}.json"


def save_record(scale: str, stage: str, rec: dict[str, Any]) -> None:
    """One file per (scale, stage): concurrent bench runs at different scales never overwrite each other."""
    path = record_path(scale, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1, default=str))
    tmp.replace(path)


def git_head() -> str | None:
    """The commit the stage ran at (the checkout is shared and moves: figures belong to a commit)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "kairos_dagster"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+local changes" if dirty else "")


def load_db() -> dict[str, Any]:
    """Every recorded scale: its partitions, machine, notes and stage records."""
    db: dict[str, Any] = {}
    root = WORK / "records"
    for scale_dir in sorted(root.glob("*x*")) if root.exists() else []:
        meta_file = scale_dir / "_scale.json"
        if not meta_file.exists():
            continue
        entry = json.loads(meta_file.read_text())
        entry["stages"] = {f.stem: json.loads(f.read_text()) for f in scale_dir.glob("*.json")
                           if not f.name.startswith("_")}
        db[scale_dir.name] = entry
    return db


# ------------------------------------------------------------------------------- report
def _fmt_s(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.2f} s" if x < 10 else (f"{x:.1f} s" if x < 600 else f"{x / 60:.1f} min")


TARGET_SCALE = "5000x10"  # the scale the issues' targets are stated for


def verdict(stage: Stage, rec: dict[str, Any], scale: str = TARGET_SCALE) -> str:
    if "error" in rec:
        return "**failed**"
    if stage.target_s is None and stage.target_gb is None:
        return "measured"
    if scale != TARGET_SCALE:
        return "measured (targets are for 5,000 × 10)"
    res = rec["result"]
    ok = True
    if stage.target_s is not None:
        ok &= res["seconds"] <= stage.target_s
    if stage.target_gb is not None:
        ok &= rec["peak_rss_gb"] <= stage.target_gb
    if res.get("success") is False:
        return "**failed run**"
    if stage.name == "ml_tune" and res.get("n_trials") != 20:
        return f"measured ({res.get('n_trials')} trials; the target is for 20)"
    return "pass" if ok else "**miss**"


def target_text(stage: Stage) -> str:
    if stage.name == "pandas":
        return "≥ 10× faster"
    parts = []
    if stage.target_s is not None:
        t = stage.target_s
        parts.append(f"{t / 60:g} min" if t >= 60 and t % 60 == 0 else f"{t:g} s")
    if stage.target_gb is not None:
        parts.append(f"{stage.target_gb:g} GB")
    return ", ".join(parts) or "—"


def details(stage: Stage, rec: dict[str, Any]) -> str:
    if "error" in rec:
        return rec["error"].replace("|", "\\|")[:600]
    r = rec["result"]
    n = stage.name
    if n == "generate":
        return "rows " + ", ".join(f"{k} {v:,}" for k, v in r["rows"].items()) + "; s: " + \
            ", ".join(f"{k} {v}" for k, v in r["table_seconds"].items())
    if n == "pandas":
        ok = "pass" if r["speedup"] >= 10 else "**miss**"
        return (f"{int(r['rows']):,} rows ({r['tickers']} × {r['sessions']} sessions): polars subset "
                f"{r['polars_s']:.2f} s, polars 4 full tables {r['polars_full_tables_s']:.2f} s, pandas "
                f"{r['pandas_s']:.1f} s → **{r['speedup']:.1f}×** wall ({ok})"
                + (f", {r['cpu_speedup']:.1f}× in CPU time" if "cpu_speedup" in r else "")
                + "; rows: the baseline's own random-walk panel with tickers × sessions of this scale")
    if n in ("ml_retrain", "ml_tune"):
        s = (f"{r['train_rows']:,} rows × {r['features']} features on {r['train_dates']} rebalance dates "
             f"(load {r['load_seconds']} s)")
        if n == "ml_tune":
            sm = r.get("summary", {})
            s += (f"; {r['n_trials']} trials ({sm.get('n_complete')} complete, {sm.get('n_pruned')} pruned), best "
                  f"objective {sm.get('best_value')}")
        else:
            s += f"; best_iteration {r['best_iteration']}"
        return s
    if n == "ic":
        parts = []
        for col, st in r["ic"].items():
            ratio = f", {st['ratio_to_oracle']:.2f}× oracle" if st.get("ratio_to_oracle") is not None else ""
            parts.append(f"{col}: IC {st['rank_ic']:.4f}, t {st['rank_ic_t']:.2f} over {int(st['n_dates'])} "
                         f"dates{ratio}")
        return f"{r['rebalance_dates']} rebalance dates {r['window'][0]}..{r['window'][1]}: " + "; ".join(parts)
    if n == "rebalance_core":
        return (f"{r['signal_rows']:,} rows, {r['eligible']:,} eligible, {r['positions']} positions; fresh "
                f"{r['fresh_seconds']} s, with prior {r['with_prior_seconds']} s")
    if n == "features_lake":
        v = r["variants"]
        return (f"file + SQLite {v['file']['seconds']} s; DuckLake + PostgreSQL, 1 process {v['lake_1']['seconds']} s "
                f"(**{r['ratio_lake_1']}×** the file), 2 processes {v['lake_2']['seconds']} s (**{r['ratio_lake_2']}×**); "
                f"{r['tables']} tables, {r['rows']:,} rows, row counts equal: {r['row_counts_equal']}; copying the "
                f"{len(r['copied_tables'])} synced tables in: {v['file']['copy_seconds']} s / "
                f"{v['lake_1']['copy_seconds']} s")
    if n == "alpha158":
        q, k, c = r["qlib"], r["kairos"], r["kbar_check"]
        worst = max(v for v in c["max_abs_diff"].values() if v is not None)
        return (f"{r['stock_years']:,} stock-years; Kairos {k['features']} features in {k['seconds']} s "
                f"(**{k['us_per_stock_feature_year']} µs** per stock·feature·year), Qlib {q.get('qlib_version')} "
                f"Alpha158 {q['features']} features in {q['seconds']:.1f} s (**{q['us_per_stock_feature_year']} µs**), "
                f"{q['us_per_stock_feature_year'] / k['us_per_stock_feature_year']:.1f}× Kairos's; writing Qlib's "
                f"binary format {r['qlib_convert_s']} s (not timed in either); K-bar features on "
                f"{c['rows']:,} sampled rows agree within {worst:.1e} of the open (float32)")
    if n == "backtest_vectorbt":
        return (f"the `ml` chain's weights, {r['rebalances']} rebalances over {r['sessions']:,} sessions and "
                f"{r['tickers']:,} tickers, no costs: Kairos {r['kairos_s']} s, vectorbt {r['vectorbt_s']} s cold "
                f"(numba's compilation included) / {r['vectorbt_warm_s']} s warm; gross curves within "
                f"{r['max_rel_diff']:.1e} (relative; final equity {r['final_kairos']:,.2f} vs "
                f"{r['final_vectorbt']:,.2f}), sessions on one side only: {r['sessions_only_one_side']}")
    if n == "demo":
        return (f"fresh clone: {r['with_bootstrap_s']} s with the .venv bootstrap, {r['without_bootstrap_s']} s "
                f"without (fresh data, outputs and Dagster home)" + (f"; failed: {r['tail']}" if r.get("tail") else ""))
    if n.startswith("friday"):
        runs = "; ".join(f"{x['run_key']} {_fmt_s(x['seconds'])}" for x in r["runs"])
        steps = sorted(r["step_seconds"].items(), key=lambda kv: -kv[1])[:4]
        return (f"week {r['week']} ({r['week_kind']}): {runs}; slowest steps: "
                + ", ".join(f"{k} {v} s" for k, v in steps))
    if "step_seconds" in r:
        steps = list(r["step_seconds"].items())[:4]
        rows = sum(v or 0 for v in r["assets"].values())
        s = f"{len(r['assets'])} assets, {rows:,} rows; slowest steps: " + ", ".join(f"{k} {v} s" for k, v in steps)
        ev = r.get("dagster_events") or {}
        if ev:
            s += "; Dagster event log: " + ", ".join(
                f"{v['count']:,} {k.lower()} events over {v['seconds']} s" for k, v in ev.items())
            if r.get("before_first_step_s") is not None:
                s += f" ({r['before_first_step_s']} s before the first step starts)"
        if r.get("reference", {}).get("seconds"):
            ref = r["reference"]
            s += (f"; {r['output_columns']} output columns beside the reference pass (../shared/bench/feature_ref.py: "
                  f"{ref['features']} rolling features in {ref['seconds']} s): **{r['per_column_ratio']}×** its time "
                  f"per column")
        if r.get("phase_totals"):
            tot = r["phase_totals"]
            s += "; step time by phase: " + ", ".join(f"{k} {v} s" for k, v in tot.items() if v)
        if r.get("first_run"):
            s += (f"; the model was not in the registry: a first run of the week trained it in "
                  f"{_fmt_s(r['first_run']['seconds'])} (steps {r['first_run']['step_seconds']})")
        if r["failed_checks"]:
            s += f"; failed checks: {', '.join(r['failed_checks'][:6])}"
        return s
    return ""


def phase_table(r: dict[str, Any], limit: int = 40) -> str:
    """Where a Dagster stage's time went, per step (benchmarks.stages.step_phases): seconds and share."""
    from benchmarks.stages import PHASES

    cols = [*PHASES, "other"]
    lines = [f"  {'step':34} {'total':>8} " + " ".join(f"{c:>8}" for c in cols)]
    rows = list(r["step_phases"].items())[:limit]
    for step, ph in rows:
        total = sum(ph.values())
        lines.append(f"  {step:34} {total:8.2f} " + " ".join(f"{ph.get(c, 0.0):8.2f}" for c in cols))
    tot = r.get("phase_totals", {})
    grand = sum(tot.values()) or 1.0
    lines.append(f"  {'all steps':34} {grand:8.1f} " + " ".join(f"{tot.get(c, 0.0):8.1f}" for c in cols))
    lines.append(f"  {'share':34} {'':8} " + " ".join(f"{100 * tot.get(c, 0.0) / grand:7.0f}%" for c in cols))
    return "\n".join(lines)


def render(db: dict[str, Any], notes: dict[str, str]) -> str:
    lines = ["# Benchmark results (`make bench`)", "",
             "Written by `python -m benchmarks.run`; every figure below was measured by it, on the machine "
             "and at the date shown on its row. **measured** is the timed operation inside the stage's "
             "process (what the targets refer to); **process** adds interpreter and import start-up. Peak "
             "RSS is the stage process's own maximum resident set (each stage runs in a fresh process). "
             "Load is the 1-minute load average during the stage (mean / max): the 2-core machine is "
             "shared with other engineers' test runs, so wall times are pessimistic when it exceeds 2. **when** is "
             "the stage's end and the commit it ran at. Pass/miss is judged only at 5,000 × 10, the scale the "
             "issues state their targets for.", ""]
    machines = {json.dumps(v["machine"], sort_keys=True): v["machine"] for v in db.values()}
    for m in machines.values():
        lines.append(f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_gb']} GB memory, Python {m['python']}, "
                     f"host `{m['host']}`.")
    lines.append("")
    for scale in sorted(db, key=lambda k: -int(k.split("x")[0]) * int(k.split("x")[1])):
        entry = db[scale]
        t, y = scale.split("x")
        lines += [f"## Scale {int(t):,} tickers × {y} years "
                  f"(partitions {entry['first_week']} … {entry['last_week']})", ""]
        for issue, title in ISSUE_TITLES.items():
            lines += [f"### {title}", "",
                      "| stage | what | target | measured | process | peak RSS | load | result | when | details |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for st in (s for s in STAGES if s.issue == issue):
                rec = entry["stages"].get(st.name)
                if rec is None:
                    why = notes.get(st.name) or entry.get("not_run", {}).get(st.name) or "not run at this scale"
                    lines.append(f"| {st.name} | {st.what} | {target_text(st)} | — | — | — | — | not run | — | {why} |")
                    continue
                meas = _fmt_s(rec["result"]["seconds"]) if "result" in rec else "—"
                cpu = f" (CPU {_fmt_s(rec['cpu_seconds'])})" if rec.get("cpu_seconds") is not None else ""
                lines.append(
                    f"| {st.name} | {st.what} | {target_text(st)} | {meas} | {_fmt_s(rec['process_seconds'])}{cpu} | "
                    f"{rec['peak_rss_gb']:.2f} GB | {rec['load_mean']} / {rec['load_max']} | {verdict(st, rec, scale)} | "
                    f"{rec['when']}{' @ ' + rec['commit'] if rec.get('commit') else ''} | {details(st, rec)} |")
            lines.append("")
        if entry.get("notes"):
            lines += ["Notes:", "", *[f"- {n}" for n in entry["notes"]], ""]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Kairos scale benchmarks; results in benchmarks/RESULTS.md")
    p.add_argument("--tickers", type=int, default=5000)
    p.add_argument("--years", type=int, default=10)
    p.add_argument("--only", nargs="+", choices=[s.name for s in STAGES], metavar="NAME",
                   help=f"stages to run (default: all, in order): {', '.join(s.name for s in STAGES)}")
    p.add_argument("--trials", type=int, default=20, help="Optuna trials of the ml_tune stage (target: 20)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    p.add_argument("--timeout", type=float, default=None, help="kill a stage after this many seconds")
    p.add_argument("--last-week", type=dt.date.fromisoformat, default=None,
                   help="last partition (a Monday; default the current week)")
    p.add_argument("--note", action="append", default=[], help="a note to record under this scale's tables")
    p.add_argument("--render-only", action="store_true", help="run no stage: record --note and rewrite --out")
    p.add_argument("--fresh", action="store_true", help="delete this scale's scratch warehouse first")
    p.add_argument("--clean", action="store_true", help="delete this scale's scratch warehouse at the end")
    a = p.parse_args(argv)
    if a.tickers < 20 or a.years < 1:
        p.error("--tickers must be >= 20 and --years >= 1")
    last = a.last_week or current_monday()
    if last.weekday() != 0:
        p.error(f"--last-week must be a Monday, got {last}")
    env, work = stage_env(a.tickers, a.years, a.trials, last)
    if a.fresh:
        shutil.rmtree(work, ignore_errors=True)
        env, work = stage_env(a.tickers, a.years, a.trials, last)
    key = scale_key(a.tickers, a.years)
    meta_file = record_path(key, "_scale")
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {"notes": []}
    meta.update({"first_week": env["KAIROS_START_DATE"], "last_week": last.isoformat(), "machine": machine()})
    meta["notes"] += [n for n in a.note if n not in meta["notes"]]
    save_record(key, "_scale", meta)
    selected = [] if a.render_only else [BY_NAME[n] for n in a.only] if a.only else list(STAGES)
    for st in selected:
        print(f"[bench {key}] {st.name}: {st.what} ...", flush=True)
        rec = run_stage(st, env, work, a.timeout)
        rec["machine"] = meta["machine"]
        if st.name == "ml_tune":
            rec["trials"] = a.trials
        save_record(key, st.name, rec)
        a.out.write_text(render(load_db(), {}))
        res = rec.get("result", {})
        print(f"[bench {key}] {st.name}: measured {_fmt_s(res.get('seconds'))}, process "
              f"{_fmt_s(rec['process_seconds'])}, peak {rec['peak_rss_gb']:.2f} GB, load {rec['load_mean']}, "
              f"{verdict(st, rec, key)}" + (f"\n  {rec['error']}" if "error" in rec else ""), flush=True)
        if res.get("step_phases"):
            print(phase_table(res), flush=True)
    db = load_db()
    a.out.write_text(render(db, {}))
    if a.clean:  # the large scratch files; the records stay
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
