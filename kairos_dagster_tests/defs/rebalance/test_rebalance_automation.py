"""daily_update_schedule and rebalance_day_sensor across holiday weeks (build_schedule_context /
build_sensor_context), with the sensor reading a real DuckDB file read-only."""

import datetime as dt
import subprocess
import sys
from zoneinfo import ZoneInfo

import polars as pl
from dagster import build_schedule_context, build_sensor_context

from kairos_dagster.definitions import build_definitions
from kairos_dagster.defs.features.automation import daily_update_schedule
from kairos_dagster.defs.rebalance import automation
from kairos_dagster.defs.rebalance.automation import rebalance_day_sensor, rebalance_due
from kairos_dagster.resources.warehouse import DuckDBWarehouse
from kairos_dagster.warehouse import store

defs = build_definitions()

NY = ZoneInfo("America/New_York")


def _warehouse(tmp_path, dates):
    path = tmp_path / "k.duckdb"
    with store.connect(path) as con:
        store.replace_table(con, "feat_matrix_v2", pl.DataFrame({"ticker": ["A"] * len(dates), "date": dates}))
    return path


def _sensor(instance, path, when, monkeypatch, cursor=None):
    monkeypatch.setattr(automation, "_now", lambda: when)
    ctx = build_sensor_context(instance=instance, cursor=cursor, repository_def=defs.get_repository_def(),
                               resources={"warehouse": DuckDBWarehouse(path=str(path))})
    return rebalance_day_sensor.evaluate_tick(ctx)


def test_rebalance_due_follows_the_xnys_week():
    # Good Friday 2026-04-03: Thursday is the week's last session.
    assert rebalance_due(dt.datetime(2026, 4, 2, 7, 0, tzinfo=NY)) == (dt.date(2026, 4, 2), "")
    day, why = rebalance_due(dt.datetime(2026, 4, 2, 6, 59, tzinfo=NY))
    assert day is None and "waiting until 07:00" in why
    day, why = rebalance_due(dt.datetime(2026, 4, 3, 9, 0, tzinfo=NY))
    assert day is None and "not a rebalance day" in why and "2026-04-10" in why
    day, why = rebalance_due(dt.datetime(2026, 3, 31, 9, 0, tzinfo=NY))
    assert day is None and "next rebalance 2026-04-02" in why
    # Thanksgiving week 2025: Thursday 11-27 closed, Friday 11-28 (half day) is the rebalance.
    assert rebalance_due(dt.datetime(2025, 11, 27, 9, 0, tzinfo=NY))[0] is None
    assert rebalance_due(dt.datetime(2025, 11, 28, 12, 0, tzinfo=dt.UTC)) == (dt.date(2025, 11, 28), "")  # 07:00 NY
    # 11:00 UTC is 06:00 New York: too early.
    assert rebalance_due(dt.datetime(2025, 11, 28, 11, 0, tzinfo=dt.UTC))[0] is None


def test_sensor_requests_each_week_once_when_the_signal_date_is_present(tmp_path, instance, monkeypatch):
    path = _warehouse(tmp_path, [dt.date(2026, 3, 31), dt.date(2026, 4, 1), dt.date(2025, 11, 26)])
    data = _sensor(instance, path, dt.datetime(2026, 4, 2, 7, 30, tzinfo=NY), monkeypatch)
    assert len(data.run_requests) == 1
    req = data.run_requests[0]
    assert (req.partition_key, req.run_key) == ("2026-03-30", "rebalance-2026-03-30")
    assert req.tags["kairos/trigger"] == "rebalance_day_sensor" and data.cursor == "2026-03-30"
    again = _sensor(instance, path, dt.datetime(2026, 4, 2, 7, 35, tzinfo=NY), monkeypatch, cursor=data.cursor)
    assert not again.run_requests and "already requested" in again.skip_message

    # Thanksgiving week: Friday's signal date is Wednesday (Thursday was closed).
    thanksgiving = _sensor(instance, path, dt.datetime(2025, 11, 28, 7, 5, tzinfo=NY), monkeypatch, cursor="2026-03-30")
    assert [r.partition_key for r in thanksgiving.run_requests] == ["2025-11-24"]

    holiday = _sensor(instance, path, dt.datetime(2026, 4, 3, 8, 0, tzinfo=NY), monkeypatch)
    assert not holiday.run_requests and "not a rebalance day" in holiday.skip_message


def test_sensor_waits_for_the_signal_date_and_skips_an_unavailable_warehouse(tmp_path, instance, monkeypatch):
    path = _warehouse(tmp_path, [dt.date(2026, 3, 31)])
    when = dt.datetime(2026, 4, 2, 8, 0, tzinfo=NY)
    data = _sensor(instance, path, when, monkeypatch)
    assert not data.run_requests
    assert "waiting for signal date 2026-04-01" in data.skip_message and "latest 2026-03-31" in data.skip_message

    missing = _sensor(instance, tmp_path / "none.duckdb", when, monkeypatch)
    assert not missing.run_requests and "unavailable" in missing.skip_message

    # Another process holds the write lock (a run in progress): skip with a reason, do not wait.
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('locked', flush=True); time.sleep(60)", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        locked = _sensor(instance, path, when, monkeypatch)
        assert not locked.run_requests and "unavailable" in locked.skip_message
    finally:
        holder.kill()
        holder.wait()


def _schedule(instance, when):
    ctx = build_schedule_context(instance=instance, scheduled_execution_time=when, repository_def=defs.get_repository_def())
    return daily_update_schedule.evaluate_tick(ctx)


def test_daily_update_schedule(instance):
    assert daily_update_schedule.cron_schedule == "0 21 * * 1-4"
    assert daily_update_schedule.execution_timezone == "America/New_York"
    assert daily_update_schedule.job_name == "weekly_pipeline_job"
    # Wednesday before Good Friday: its data is the Thursday rebalance's signal date.
    data = _schedule(instance, dt.datetime(2026, 4, 1, 21, 0, tzinfo=NY))
    req = data.run_requests[0]
    assert (req.partition_key, req.run_key) == ("2026-03-30", "daily-update-2026-04-01")
    # 21:00 New York is 01:00 UTC the next day: still that day's week and date.
    data = _schedule(instance, dt.datetime(2025, 11, 26, 2, 0, tzinfo=dt.UTC))
    assert (data.run_requests[0].partition_key, data.run_requests[0].run_key) == ("2025-11-24", "daily-update-2025-11-25")
    # Thanksgiving Thursday: no session, nothing to sync.
    data = _schedule(instance, dt.datetime(2025, 11, 27, 21, 0, tzinfo=NY))
    assert not data.run_requests and "not an NYSE session" in data.skip_message


def test_rebalance_job_and_sensor_are_registered():
    assert defs.resolve_job_def("rebalance_job") is not None
    assert {s.name for s in defs.sensors} >= {"rebalance_day_sensor"}
    assert {s.name for s in defs.schedules} >= {"daily_update_schedule"}
