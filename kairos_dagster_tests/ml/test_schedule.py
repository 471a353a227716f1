import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kairos_dagster.calendar import next_session, sessions_offset
from kairos_dagster.ml.schedule import ScheduleError, first_scorable_week, model_schedule

ANCHOR = dt.date(2016, 1, 4)


def test_week_maps_to_latest_retrain_point_on_the_anchor_grid():
    plan = model_schedule(dt.date(2016, 7, 11), anchor=ANCHOR)  # 27 weeks after the anchor
    assert plan.retrain_week == dt.date(2016, 7, 4)  # anchor + 26 weeks
    assert plan.fold == 2
    assert plan.train_start == ANCHOR
    # embargo of one week before R: the last label horizon ends before Monday 2016-06-27
    assert plan.label_end == dt.date(2016, 6, 24)
    assert plan.train_end == sessions_offset(plan.label_end, -5) == dt.date(2016, 6, 17)
    assert plan.first_session == dt.date(2016, 7, 5)  # Independence Day is not a session


def test_every_week_of_a_block_gets_the_same_model():
    weeks = [dt.date(2017, 1, 2) + dt.timedelta(weeks=i) for i in range(30)]
    plans = [model_schedule(w, anchor=ANCHOR).with_config({"p": 1}) for w in weeks]
    versions = {p.retrain_week: p.version for p in plans}
    assert all(p.version == versions[p.retrain_week] for p in plans)
    assert len(versions) == 3
    # versions derive from name, retrain point and config
    other = model_schedule(weeks[0], anchor=ANCHOR, model_name="other").with_config({"p": 1})
    assert other.version != plans[0].version
    assert plans[0].version != model_schedule(weeks[0], anchor=ANCHOR).with_config({"p": 2}).version


@settings(max_examples=60, deadline=None)
@given(offset=st.integers(13, 600), retrain=st.integers(1, 26), embargo=st.integers(1, 3),
       window=st.none() | st.integers(10, 200))
def test_no_training_label_reaches_past_the_purge_and_embargo(offset, retrain, embargo, window):
    week = ANCHOR + dt.timedelta(weeks=max(offset, retrain))
    try:
        plan = model_schedule(week, anchor=ANCHOR, retrain_weeks=retrain, embargo_weeks=embargo,
                              max_train_weeks=window)
    except ScheduleError:
        return  # window too short to hold a row: refused, not silently empty
    assert plan.retrain_week <= week < plan.retrain_week + dt.timedelta(weeks=retrain)
    assert (plan.retrain_week - ANCHOR).days % (7 * retrain) == 0
    assert sessions_offset(plan.train_end, 5) <= plan.label_end
    assert plan.label_end < plan.retrain_week - dt.timedelta(weeks=embargo) < plan.first_session
    # the latest possible row: the next session's label would end inside the embargo
    assert sessions_offset(next_session(plan.train_end), 5) >= plan.retrain_week - dt.timedelta(weeks=embargo)
    assert plan.train_start >= ANCHOR
    assert plan.tune_week <= plan.retrain_week and plan.tune_label_end <= plan.label_end


def test_tune_points_start_at_first_trainable_retrain_point():
    first = first_scorable_week(ANCHOR, 13)
    assert model_schedule(first, anchor=ANCHOR).tune_week == first
    assert model_schedule(first + dt.timedelta(weeks=51), anchor=ANCHOR).tune_week == first
    assert model_schedule(first + dt.timedelta(weeks=52), anchor=ANCHOR).tune_week == first + dt.timedelta(weeks=52)


@pytest.mark.parametrize("kwargs, match", [
    ({"week_monday": dt.date(2016, 7, 12)}, "Monday"),
    ({"week_monday": dt.date(2016, 2, 1)}, "has no model"),
    ({"week_monday": dt.date(2016, 7, 11), "embargo_weeks": 0}, "embargo_weeks"),
])
def test_bad_requests_are_refused_with_a_clear_message(kwargs, match):
    with pytest.raises(ScheduleError, match=match):
        model_schedule(anchor=ANCHOR, **kwargs)
