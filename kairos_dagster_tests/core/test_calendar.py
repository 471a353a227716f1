import datetime as dt

import pytest
from typer.testing import CliRunner

from kairos_dagster import calendar as cal
from kairos_dagster.cli.main import app

D = dt.date


@pytest.mark.parametrize(
    ("any_day", "expected"),
    [
        (D(2026, 4, 1), D(2026, 4, 2)),  # Good Friday: Thursday rebalance
        (D(2026, 7, 1), D(2026, 7, 2)),  # Independence Day observed on Friday July 3
        (D(2026, 12, 22), D(2026, 12, 24)),  # Christmas Friday; the Thursday half day counts as a full day
        (D(2026, 11, 23), D(2026, 11, 27)),  # Thanksgiving Thursday; Friday half day is the rebalance
        (D(2018, 12, 3), D(2018, 12, 7)),  # unscheduled closure mid-week (Bush funeral, Wed 2018-12-05)
        (D(2025, 1, 6), D(2025, 1, 10)),  # unscheduled closure Thursday 2025-01-09 (Carter funeral)
        (D(2012, 10, 29), D(2012, 11, 2)),  # Hurricane Sandy closed Monday and Tuesday
        (D(2026, 12, 28), D(2026, 12, 31)),  # New Year's Day 2027 is a Friday: year-end Thursday rebalance
        (D(2027, 1, 3), D(2026, 12, 31)),  # Sunday belongs to the Monday-Sunday week that started before it
        (D(2021, 12, 31), D(2021, 12, 31)),  # New Year's Day 2022 on Saturday is not observed on Friday
    ],
)
def test_rebalance_date_for_week(any_day, expected):
    assert cal.rebalance_date_for_week(any_day) == expected
    assert cal.is_rebalance_day(expected)


def test_unscheduled_closures_are_not_sessions():
    assert not cal.is_session(D(2018, 12, 5))
    assert not cal.is_session(D(2025, 1, 9))
    assert not cal.is_session(D(2012, 10, 29)) and not cal.is_session(D(2012, 10, 30))
    assert cal.is_session(D(2026, 11, 27))  # half day is a session


def test_rebalance_dates_between_matches_week_by_week_rule():
    start, end = D(2015, 1, 1), D(2027, 12, 31)
    dates = cal.rebalance_dates_between(start, end)
    mondays = {cal.week_start(d) for d in cal.sessions_between(start, end)}
    expected = sorted(cal.rebalance_date_for_week(m) for m in mondays)
    expected = [d for d in expected if start <= d <= end]
    assert dates == expected
    assert len(dates) == len(set(dates)) and dates == sorted(dates)


def test_range_ending_midweek_excludes_incomplete_week():
    # Through Wednesday 2026-11-18 the week's rebalance (Friday 11-20) is not in range.
    assert cal.rebalance_dates_between(D(2026, 11, 9), D(2026, 11, 18)) == [D(2026, 11, 13)]


def test_next_rebalance_dates_inclusive_and_after():
    assert cal.next_rebalance_dates(3, D(2026, 4, 2)) == [D(2026, 4, 2), D(2026, 4, 10), D(2026, 4, 17)]
    assert cal.next_rebalance_after(D(2026, 4, 2)) == D(2026, 4, 10)
    with pytest.raises(cal.CalendarError):
        cal.next_rebalance_dates(0, D(2026, 4, 2))


def test_signal_date_is_previous_session():
    assert cal.signal_date_for(D(2026, 4, 2)) == D(2026, 4, 1)
    assert cal.signal_date_for(D(2025, 1, 10)) == D(2025, 1, 8)  # skips the closure


def test_out_of_range_and_bad_input():
    with pytest.raises(cal.CalendarError, match="outside"):
        cal.is_session(D(1990, 1, 2))
    with pytest.raises(cal.CalendarError, match="not an ISO date"):
        cal.parse_date("2026/01/02")


runner = CliRunner()


def test_cli_check_exit_codes_and_json():
    r = runner.invoke(app, ["check-rebalance", "check", "--date", "2026-04-02"])
    assert r.exit_code == 0 and "IS a rebalance day" in r.output
    r = runner.invoke(app, ["check-rebalance", "check", "--date", "2026-04-03", "--json"])
    assert r.exit_code == 1
    assert '"week_rebalance_date": "2026-04-02"' in r.output
    r = runner.invoke(app, ["check-rebalance", "check", "--date", "tomorrow"])
    assert r.exit_code == 2


def test_cli_next_and_range():
    r = runner.invoke(app, ["check-rebalance", "next", "--count", "3", "--from", "2026-03-28"])
    assert r.exit_code == 0
    assert r.output.split() == ["2026-04-02", "2026-04-10", "2026-04-17"]
    r = runner.invoke(app, ["check-rebalance", "range", "2026-12-20", "2027-01-10", "--json"])
    assert r.exit_code == 0
    assert r.output.strip() == '["2026-12-24", "2026-12-31", "2027-01-08"]'
    r = runner.invoke(app, ["check-rebalance", "range", "2027-01-10", "2026-12-20"])
    assert r.exit_code == 2
