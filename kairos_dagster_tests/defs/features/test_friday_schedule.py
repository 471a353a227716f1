import datetime as dt
from zoneinfo import ZoneInfo

from dagster import AssetKey, DagsterInstance, SkipReason, build_schedule_context

from kairos_dagster.definitions import build_definitions
from kairos_dagster.defs.features.automation import week_partition_for

defs = build_definitions()
friday_weekly_schedule = defs.get_schedule_def("friday_weekly_schedule")


NY = ZoneInfo("America/New_York")


def _evaluate(when: dt.datetime):
    with DagsterInstance.ephemeral() as instance:
        ctx = build_schedule_context(
            instance=instance, scheduled_execution_time=when, repository_def=defs.get_repository_def()
        )
        return friday_weekly_schedule.evaluate_tick(ctx)


def test_schedule_cron_and_timezone():
    assert friday_weekly_schedule.cron_schedule == "0 21 * * 5"
    assert friday_weekly_schedule.execution_timezone == "America/New_York"


def test_friday_holiday_week_requests_that_week():
    # Good Friday 2026-04-03: the exchange is closed, the week's data ends Thursday; the run still syncs the week.
    data = _evaluate(dt.datetime(2026, 4, 3, 21, 0, tzinfo=NY))
    assert len(data.run_requests) == 2
    refresh, req = data.run_requests
    assert req.partition_key == "2026-03-30"
    assert req.run_key == "weekly-2026-03-30"
    # First the forward targets of the five previous weeks, in one single-run range, then the week.
    assert refresh.asset_selection == [AssetKey("feat_targets"), AssetKey("factor_ic")]
    assert refresh.tags["dagster/asset_partition_range_start"] == "2026-02-23"
    assert refresh.tags["dagster/asset_partition_range_end"] == "2026-03-23"
    assert refresh.tags["kairos/serial"] == req.tags["kairos/serial"]


def test_ordinary_friday_and_year_end():
    assert _evaluate(dt.datetime(2026, 11, 20, 21, tzinfo=NY)).run_requests[-1].partition_key == "2026-11-16"
    # Friday 2021-01-01 was a holiday; the week's partition (Monday 2020-12-28) holds Thursday 12-31.
    assert _evaluate(dt.datetime(2021, 1, 1, 21, tzinfo=NY)).run_requests[-1].partition_key == "2020-12-28"


def test_utc_tick_maps_to_new_york_week():
    # 21:00 New York on Friday is 02:00 UTC Saturday: the key must still be that Friday's week.
    assert week_partition_for(dt.datetime(2026, 11, 21, 2, 0, tzinfo=dt.UTC)) == "2026-11-16"


def test_skip_reason_type_exists():
    assert SkipReason("x").skip_message == "x"
