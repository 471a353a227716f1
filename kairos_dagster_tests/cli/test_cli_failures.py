"""Failures an operator can live with, probed through the real `kairos` CLI (subprocesses):
a SIGKILLed run never wedges the next command, Ctrl-C cancels a run after its current step, bad settings,
arguments and dates end in one clear line with exit 2, and nothing is written when a command refuses."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from dagster import DagsterInstance, DagsterRunStatus

from kairos_dagster.settings import INSTANCE_YAML
from kairos_dagster_tests.fixtures.helpers import cli_env

KAIROS = str(Path(sys.executable).parent / "kairos")
START = "2023-01-02"
RANGE = ("2023-01-02", "2024-12-31")


def make_env(root: Path, **extra: str) -> dict[str, str]:
    return cli_env(root, INSTANCE_YAML, **({"KAIROS_SYNTHETIC_TICKERS": "150", "KAIROS_START_DATE": START} | extra))


def kairos(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([KAIROS, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=Path(env["DAGSTER_HOME"]).parent)


def wait_for_step(env: dict[str, str], proc: subprocess.Popen, step: str, timeout: float = 120) -> str:
    """Poll the instance until the newest run has started `step`; return the run id."""
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    deadline = time.monotonic() + timeout
    with DagsterInstance.get() as inst:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before the step started"
            runs = inst.get_runs(limit=1)
            if runs:
                for rec in inst.all_logs(runs[0].run_id):
                    ev = rec.dagster_event
                    if ev is not None and ev.event_type_value == "STEP_START" and ev.step_key == step:
                        return runs[0].run_id
            time.sleep(0.2)
    raise AssertionError(f"step {step} did not start within {timeout} s")


def run_status(env: dict[str, str], run_id: str) -> DagsterRunStatus:
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    with DagsterInstance.get() as inst:
        return inst.get_run_by_id(run_id).status


def table_rows(db: Path, sql: str):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


SEP_DIGEST = "SELECT count(*), sum(hash(ticker || date::VARCHAR || close::VARCHAR)) FROM sep_base"


@pytest.fixture(scope="module")
def clean_sync(tmp_path_factory):
    """A clean single-run sync of the range: what every recovered run must equal."""
    root = tmp_path_factory.mktemp("clean")
    env = make_env(root)
    out = kairos(env, "backfill", *RANGE, "--select", "sync")
    assert out.returncode == 0, out.stderr[-3000:]
    return table_rows(root / "kairos.duckdb", SEP_DIGEST)


@pytest.mark.slow
def test_sigkill_mid_step_never_wedges_the_next_command(tmp_path, clean_sync):
    env = make_env(tmp_path)
    proc = subprocess.Popen([KAIROS, "backfill", *RANGE, "--select", "sync"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=tmp_path)
    killed = wait_for_step(env, proc, "sep_base")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert run_status(env, killed) == DagsterRunStatus.STARTED  # nobody noticed yet
    out = kairos(env, "backfill", *RANGE, "--select", "sync", timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"run {killed}" in out.stderr and "marked failed" in out.stderr
    assert run_status(env, killed) == DagsterRunStatus.FAILURE
    assert table_rows(tmp_path / "kairos.duckdb", SEP_DIGEST) == clean_sync
    # the preview and the status still answer at once
    assert kairos(env, "status", timeout=60).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_cancels_the_run_after_its_current_step(tmp_path, clean_sync, sig):
    env = make_env(tmp_path)
    proc = subprocess.Popen([KAIROS, "backfill", *RANGE, "--select", "sync"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    run_id = wait_for_step(env, proc, "daily")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert f"stopped run {run_id}; it is marked canceled" in err and "no further step started" in err
    assert "Traceback" not in err
    assert run_status(env, run_id) == DagsterRunStatus.CANCELED
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    with DagsterInstance.get() as inst:
        started = [r.dagster_event.step_key for r in inst.all_logs(run_id)
                   if r.dagster_event and r.dagster_event.event_type_value == "STEP_START"]
    assert started[-1] == "daily" or started.index("daily") >= len(started) - 2  # nothing after the next boundary
    assert len(started) < 6
    # the next run completes and the table equals a clean run (the interrupted write rolled back)
    out = kairos(env, "backfill", *RANGE, "--select", "sync", timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert table_rows(tmp_path / "kairos.duckdb", SEP_DIGEST) == clean_sync


BAD_SETTINGS = [({"KAIROS_START_DATE": "2023-01-03"}, "KAIROS_START_DATE"),
                ({"KAIROS_SYNTHETIC_TICKERS": "abc"}, "KAIROS_SYNTHETIC_TICKERS"),
                ({"KAIROS_DATA_SOURCE": "bogus"}, "KAIROS_DATA_SOURCE"),
                ({"KAIROS_DATA_SOURCE": "nasdaq"}, "NASDAQ_DATA_LINK_API_KEY"),
                ({"KAIROS_PROCESSES": "2"}, "KAIROS_PROCESSES")]
COMMANDS = [("backfill", "2023-01-02", "2023-02-01"), ("sync", "--check-only"), ("status",),
            ("rebalance", "--date", "2023-06-30"), ("approve", "--date", "2023-06-30", "--by", "me"),
            ("execute", "--picks", "outputs/rebalance/2023-06-30/picks.csv")]


def test_a_bad_setting_is_one_line_with_exit_2_for_every_command(tmp_path):
    (tmp_path / "kairos.duckdb").touch()  # commands that need a warehouse get past that check
    for i, cmd in enumerate(COMMANDS):  # every command, every bad setting at least once
        setting, name = BAD_SETTINGS[i % len(BAD_SETTINGS)]
        out = kairos(make_env(tmp_path, **setting), *cmd, timeout=120)
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        assert out.returncode == 2, (cmd, out.stdout, out.stderr)
        assert 1 <= len(lines) <= 2 and name in lines[0] and "Traceback" not in out.stderr, (cmd, out.stderr)


def test_dates_outside_the_partitions_are_refused_before_anything_runs(tmp_path):
    env = make_env(tmp_path)
    for args, what in [(("backfill", "2022-06-01", "2023-01-20"), "before the first partition 2023-01-02"),
                       (("backfill", "2030-06-01", "2030-07-01"), "after the last partition"),
                       (("rebalance", "--date", "2022-06-24"), "before the first partition")]:
        (tmp_path / "kairos.duckdb").unlink(missing_ok=True)
        if args[0] == "rebalance":
            (tmp_path / "kairos.duckdb").touch()
        out = kairos(env, *args, timeout=120)
        assert out.returncode == 2 and what in out.stderr and "valid weeks are 2023-01-02 .." in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
        if args[0] == "backfill":  # nothing written, `tickers` included
            assert not (tmp_path / "kairos.duckdb").exists()


def test_unknown_or_empty_selections_are_refused(tmp_path):
    env = make_env(tmp_path)
    for sel, what in [("bogusgroup", "unknown group or asset 'bogusgroup'"), (" , ", "--select is empty"),
                      ("execution", "selects no asset")]:
        out = kairos(env, "backfill", "2023-01-02", "2023-01-09", "--select", sel, timeout=120)
        assert out.returncode == 2 and what in out.stderr and "phase1_universe" in out.stderr + what, out.stderr
    assert not (tmp_path / "kairos.duckdb").exists()


def test_selection_trims_spaces_and_takes_asset_keys():
    from kairos_dagster.cli.common import selection as _selection
    from kairos_dagster.definitions import build_definitions

    defs = build_definitions()

    graph = defs.resolve_asset_graph()
    picked = {k.to_user_string() for k in _selection(defs, "sync, phase1_universe").resolve(graph)}
    assert {"sep_base", "tickers", "universe", "sep_base_academic"} <= picked and "feat_beta" not in picked
    assert {k.to_user_string() for k in _selection(defs, " sep_base ,feat_beta").resolve(graph)} == {"sep_base",
                                                                                                     "feat_beta"}



def test_a_table_written_beside_an_asset_is_refused_naming_its_writer(capsys):
    import typer

    from kairos_dagster.cli.common import selection as _selection
    from kairos_dagster.definitions import build_definitions

    with pytest.raises(typer.Exit) as exc:
        _selection(build_definitions(), "ml_metrics")
    assert exc.value.exit_code == 2
    assert "ml_metrics: written by the runs of ml_predictions_v2, ml_predictions_v2_tuned" in capsys.readouterr().err


def test_missing_warehouse_is_refused_not_created(tmp_path):
    env = make_env(tmp_path)
    for cmd in [("execute", "--picks", "outputs/rebalance/2023-06-30/picks.csv"),
                ("approve", "--date", "2023-06-30", "--by", "me"), ("emergency", "cancel-all")]:
        out = kairos(env, *cmd, timeout=120)
        assert out.returncode == 2 and "does not exist" in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert not (tmp_path / "kairos.duckdb").exists()


def test_an_unexpected_error_is_one_line_naming_the_cause_and_debug_shows_the_traceback(tmp_path):
    env = make_env(tmp_path)
    duckdb.connect(str(tmp_path / "kairos.duckdb")).close()  # an empty warehouse: no sep_base for the broker
    out = kairos(env, "emergency", "cancel-all", timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "error: BrokerError: simulated broker needs table sep_base" in out.stderr
    debug = kairos(env, "--debug", "emergency", "cancel-all", timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_a_live_holder_of_the_warehouse_slot_is_waited_for_then_reaped_when_its_process_dies(tmp_path):
    """A run of this host holding the `duckdb` slot: the next command says who holds it and gives up after
    KAIROS_POOL_WAIT_S; once that run's process is gone, the next command reaps it and runs."""
    from dagster._core.storage.dagster_run import DagsterRun

    from kairos_dagster.instance import run_guard

    env = make_env(tmp_path, KAIROS_POOL_WAIT_S="3")
    holder = subprocess.Popen(["sleep", "600"])
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    try:
        with DagsterInstance.get() as inst:
            tags = {run_guard.HOST_TAG: __import__("socket").gethostname(), run_guard.PID_TAG: str(holder.pid),
                    run_guard.PID_START_TAG: run_guard.process_start(holder.pid)}
            run = inst.add_run(DagsterRun(job_name="weekly_pipeline_job", run_id="a" * 36,
                                          status=DagsterRunStatus.STARTED, tags=tags))
            inst.event_log_storage.initialize_concurrency_limit_to_default(run_guard.POOL)  # as the executor does
            inst.event_log_storage.claim_concurrency_slot(run_guard.POOL, run.run_id, "sep_base")
        out = kairos(env, "backfill", "2023-01-02", "2023-01-09", "--select", "tickers", timeout=120)
        assert out.returncode == 1, out.stderr
        assert f"waiting for the warehouse slot held by run {run.run_id} (weekly_pipeline_job)" in out.stderr
        assert f"by PID {holder.pid}" in out.stderr and "still held" in out.stderr
        assert not (tmp_path / "kairos.duckdb").exists()
    finally:
        holder.kill()
        holder.wait()
    out = kairos(env, "backfill", "2023-01-02", "2023-01-09", "--select", "tickers", timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"run {run.run_id} (PID {holder.pid}): marked failed" in out.stderr
    assert run_status(env, run.run_id) == DagsterRunStatus.FAILURE


def test_the_instance_frees_slots_of_ended_runs_where_the_daemon_runs():
    import yaml

    cfg = yaml.safe_load((INSTANCE_YAML).read_text())
    assert cfg["run_monitoring"]["enabled"] is True
    assert 0 < cfg["run_monitoring"]["free_slots_after_run_end_seconds"] <= 300


def test_a_failed_step_is_one_line_naming_the_asset_the_week_and_the_cause(tmp_path):
    """`approve` of a header-only picks file used to end in Dagster's wrapper error with the cause buried."""
    from kairos_dagster_tests.fixtures.execution_setup import build_sep, write_picks

    env = make_env(tmp_path, KAIROS_START_DATE="2025-12-01")
    build_sep(tmp_path / "kairos.duckdb")
    picks = write_picks(tmp_path / "outputs", db=tmp_path / "kairos.duckdb")
    picks.write_text(picks.read_text().splitlines()[0] + "\n")  # the header only
    out = kairos(env, "approve", "--date", "2026-01-16", "--by", "me", timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr and "DagsterExecutionStepExecutionError" not in out.stderr
    assert "rebalance_approval (week 2026-01-12): kairos_dagster.broker.approval.ApprovalError: picks are empty" \
        in out.stderr, out.stderr
