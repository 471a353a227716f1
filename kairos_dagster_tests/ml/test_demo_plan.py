"""The demo's date logic on every calendar day of 2025-2027, as pure functions."""

import datetime as dt

import polars as pl
import pytest

from kairos_dagster import calendar
from kairos_dagster.defs.partitions import weekly_partitions
from kairos_dagster.features.warmup import longest_warmup_sessions
from kairos_dagster.ml.demo_plan import MIN_TRAIN_DATES, DemoPlanError, demo_plan, latest_completed_rebalance
from kairos_dagster.ml.schedule import LABEL_HORIZON
from kairos_dagster.ml.tune import cv_folds, frame_folds


def _days(first: dt.date, last: dt.date):
    d = first
    while d <= last:
        yield d
        d += dt.timedelta(days=1)


def test_every_day_2025_to_2027_plans_a_feasible_demo():
    reduced_tunes = 0
    for day in _days(dt.date(2025, 1, 1), dt.date(2027, 12, 31)):
        plan = demo_plan(day)
        reb = plan.rebalance_date
        # the latest completed rebalance: a rebalance day on or before the as-of day, none later
        assert calendar.is_rebalance_day(reb) and reb <= day, day
        assert calendar.rebalance_dates_between(reb + dt.timedelta(days=1), day) == [], day
        assert (day - reb).days <= 10, day
        # its signal session has data on the morning of the as-of day (data through the session before it)
        assert plan.signal_session == calendar.previous_session(reb) < day, day
        assert plan.signal_session <= calendar.previous_session(day), day
        # partitions: Mondays; the warm-up history, then three years of features up to the rebalance week
        assert plan.sync_start.weekday() == plan.feature_start.weekday() == plan.anchor.weekday() == 0
        assert plan.sync_start < plan.feature_start == plan.anchor <= plan.rebalance_week <= plan.as_of_week
        assert plan.rebalance_week == calendar.week_start(reb) and plan.as_of_week == calendar.week_start(day)
        # enough history for the longest feature warm-up: the sessions before the first feature week
        history = calendar.sessions_between(plan.sync_start, plan.feature_start - dt.timedelta(days=1))
        assert len(history) >= longest_warmup_sessions(), day
        # every fit has enough rows to train; every tune has at least one purged CV fold
        assert plan.fits and plan.tunes, day
        for w in plan.fits:
            assert w.n_dates >= MIN_TRAIN_DATES, (day, w)
            assert w.start <= w.end and calendar.sessions_offset(w.end, LABEL_HORIZON) <= w.label_end < w.point
        for w in plan.tunes:
            assert 1 <= w.folds <= 3, (day, w)
            assert (w.folds < 3) == bool(w.folds_why), (day, w)
            reduced_tunes += w.folds < 3
    # some first tune windows are short (a holiday moves their end): the reduction is exercised
    assert reduced_tunes > 0


def test_partitions_end_at_the_as_of_week_in_the_past_and_in_the_future():
    for day in (dt.date(2025, 3, 4), dt.date(2026, 12, 1), dt.date(2027, 12, 31)):
        plan = demo_plan(day)
        keys = weekly_partitions(plan.sync_start, as_of=day).get_partition_keys()
        assert keys[0] == plan.sync_start.isoformat()
        assert keys[-1] == plan.as_of_week.isoformat()
        assert plan.rebalance_week.isoformat() in keys


@pytest.mark.parametrize("day, expected", [
    ("2026-12-01", "2026-11-27"),  # Tuesday: the previous week's Friday
    ("2026-11-30", "2026-11-27"),  # Monday
    ("2026-12-04", "2026-12-04"),  # Friday: that Friday
    ("2026-12-05", "2026-12-04"),  # Saturday: the Friday before
    ("2026-04-02", "2026-04-02"),  # Thursday before Good Friday: that Thursday
    ("2026-04-03", "2026-04-02"),  # Good Friday itself
    ("2026-11-27", "2026-11-27"),  # the Friday after Thanksgiving (signal: Wednesday)
])
def test_chosen_rebalance(day, expected):
    assert latest_completed_rebalance(dt.date.fromisoformat(day)).isoformat() == expected


def test_the_reported_failure_now_plans_two_folds():
    # 2023-12-04 .. 2024-02-15 holds 10 rebalance dates (Presidents' Day moves the window's end)
    plan = demo_plan(dt.date(2026, 12, 5))
    first = plan.tunes[0]
    assert (first.start, first.n_dates, first.folds) == (dt.date(2023, 12, 4), 10, 2)
    assert "fold 1 of 3 has no fit rows" in first.folds_why


def test_calendar_folds_agree_with_the_tuner_on_rows():
    """The planner's fold count (calendar horizons) is what the tuner finds on real rows of those dates."""
    for day in (dt.date(2026, 12, 5), dt.date(2026, 12, 1), dt.date(2026, 4, 2)):
        for w in demo_plan(day).tunes[:1]:
            dates = calendar.rebalance_dates_between(w.start, w.end)
            rows = pl.DataFrame({"ticker": ["A"] * len(dates) + ["B"] * len(dates), "date": dates * 2})
            n, _ = frame_folds(rows, 3, 1)
            assert n == w.folds
            assert len(cv_folds(rows, n, 1)) == n
            if n < 3:
                with pytest.raises(ValueError, match="no fit rows"):
                    cv_folds(rows, 3, 1)


def test_a_range_without_a_completed_rebalance_is_refused():
    with pytest.raises(DemoPlanError, match="before the first partition"):
        demo_plan(dt.date(2024, 1, 9), first_partition=dt.date(2024, 1, 15))
