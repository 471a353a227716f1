import datetime as dt
from zoneinfo import ZoneInfo

from kairos_dagster.defs.partitions import key_window, keys_between, weekly_partitions, window_dates

NY = ZoneInfo("America/New_York")


def test_keys_are_mondays_and_windows_start_at_midnight_new_york():
    p = weekly_partitions(dt.date(2024, 1, 1))
    keys = p.get_partition_keys(current_time=dt.datetime(2024, 3, 6, 12, tzinfo=NY))
    assert keys[0] == "2024-01-01"
    assert all(dt.date.fromisoformat(k).weekday() == 0 for k in keys)
    w = p.time_window_for_partition_key("2024-03-04")
    assert w.start == dt.datetime(2024, 3, 4, tzinfo=NY) and w.end == dt.datetime(2024, 3, 11, tzinfo=NY)
    assert window_dates(w) == (dt.date(2024, 3, 4), dt.date(2024, 3, 11)) == key_window("2024-03-04")


def test_current_week_exists_thanks_to_end_offset():
    p = weekly_partitions(dt.date(2024, 1, 1))
    # Thursday of a week whose Friday is a holiday: the current week must already be a partition.
    keys = p.get_partition_keys(current_time=dt.datetime(2024, 3, 28, 8, tzinfo=NY))
    assert keys[-1] == "2024-03-25"


def test_keys_between():
    p = weekly_partitions(dt.date(2024, 1, 1))
    assert keys_between(p, dt.date(2024, 1, 3), dt.date(2024, 1, 16)) == ["2024-01-01", "2024-01-08", "2024-01-15"]


def test_lookback_weeks_always_hold_the_sessions_they_promise():
    """A lookback mapping of weeks_for_sessions(n) weeks loads at least n sessions before any week
    (the calendar starts in 1998, so weeks from 2002 on have the longest lookback behind them)."""
    import numpy as np

    from kairos_dagster.calendar import sessions_array, weeks_for_sessions

    days = sessions_array(dt.date(1998, 1, 5), dt.date(2035, 12, 31)).astype("datetime64[D]").astype(np.int64)
    mondays = np.arange(np.datetime64("2002-01-07"), np.datetime64("2035-12-31"), 7).astype(np.int64)
    for n in (1, 20, 63, 253, 621, 756):
        weeks = weeks_for_sessions(n)
        before = np.searchsorted(days, mondays) - np.searchsorted(days, mondays - 7 * weeks)
        assert before.min() >= n, (n, weeks, int(before.min()))
