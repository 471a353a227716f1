"""The demo's date logic as pure functions (no dagster): which week it rebalances, which partitions
and walk-forward windows it plans, for any as-of day.

As-of D means the morning of D before the open: data through the session before D exists. The demo
rebalances the latest *completed* rebalance: the last rebalance date R <= D (its signal session, the
one before R, is then before D and has data). On a Tuesday that is the previous week's Friday; on a
Friday, that Friday; on a Saturday, the Friday before; on the Thursday before a Friday holiday, that
Thursday. The runs cover the weeks up to R's week: the longest documented feature warm-up of history
(features/warmup.py: adx_14's 621 sessions, about 2.5 years), then three years of features, models and
rebalances, with the walk-forward grid anchored at the first feature week.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from kairos_dagster import calendar
from kairos_dagster.features.warmup import longest_warmup_sessions
from kairos_dagster.ml.predict import MIN_TRAIN_DATES
from kairos_dagster.ml.schedule import LABEL_HORIZON, first_scorable_week, model_schedule
from kairos_dagster.ml.tune import feasible_folds

__all__ = ["MIN_TRAIN_DATES", "DemoPlan", "DemoPlanError", "Window", "demo_plan", "latest_completed_rebalance"]

YEARS = 3  # of features, models and rebalances
# History before them: every technical feature of a name listed from the start is past its warm-up on
# the first feature week (feat_matrix_v2's features_past_warmup check then judges every row).
WARMUP_WEEKS = calendar.weeks_for_sessions(longest_warmup_sessions())


class DemoPlanError(ValueError):
    """An as-of day the demo cannot run for (no completed rebalance in its range)."""


@dataclass(frozen=True)
class Window:
    """A training (``fit``) or tuning (``tune``) window the walk-forward will plan."""

    kind: str
    point: dt.date  # the retrain or tune Monday
    start: dt.date
    end: dt.date
    label_end: dt.date
    n_dates: int  # weekly rebalance dates in [start, end]
    folds: int = 0  # tune: purged CV folds that fit (<= planned)
    folds_why: str = ""  # tune: why fewer than planned ("" when all fit)


@dataclass(frozen=True)
class DemoPlan:
    as_of: dt.date
    rebalance_date: dt.date
    signal_session: dt.date
    rebalance_week: dt.date  # the last week the runs cover (Monday)
    as_of_week: dt.date  # the last partition (Monday)
    sync_start: dt.date  # first synced week = first partition
    feature_start: dt.date  # first week of features, models, matrix
    anchor: dt.date  # walk-forward grid anchor
    fits: tuple[Window, ...]
    tunes: tuple[Window, ...]

    @property
    def why(self) -> str:
        day = f"{self.as_of} ({self.as_of:%A})"
        if self.rebalance_date == self.as_of:
            return (f"as of the morning of {day}, today is the week's last session: the rebalance trades at "
                    f"today's open on the signal of {self.signal_session}")
        return (f"as of the morning of {day}, data runs through {calendar.previous_session(self.as_of)}; the "
                f"latest completed rebalance is {self.rebalance_date} ({self.rebalance_date:%A}, signal "
                f"{self.signal_session})")


def latest_completed_rebalance(as_of: dt.date) -> dt.date:
    """The last rebalance date on or before ``as_of`` (its signal session is then before ``as_of``)."""
    found = calendar.rebalance_dates_between(as_of - dt.timedelta(days=21), as_of)
    if not found:
        raise DemoPlanError(f"no rebalance date in the three weeks up to {as_of}")
    return found[-1]


def _window(kind: str, point: dt.date, start: dt.date, end: dt.date, label_end: dt.date,
            n_folds: int, embargo_weeks: int) -> Window:
    dates = calendar.rebalance_dates_between(start, end) if start <= end else []
    if kind != "tune":
        return Window(kind, point, start, end, label_end, len(dates))
    ends = [calendar.sessions_offset(d, LABEL_HORIZON) for d in dates]
    folds, why = feasible_folds(dates, ends, n_folds, embargo_weeks) if dates else (0, "no dates")
    return Window(kind, point, start, end, label_end, len(dates), folds, why)


def demo_plan(as_of: dt.date, *, first_partition: dt.date | None = None, anchor: dt.date | None = None,
              retrain_weeks: int = 13, retune_weeks: int = 52, embargo_weeks: int = 1,
              n_folds: int = 3) -> DemoPlan:
    """Everything the demo decides from the as-of day. ``first_partition`` / ``anchor`` are an operator's
    KAIROS_START_DATE / KAIROS_ML_ANCHOR when set (the range is clipped at the first partition)."""
    reb = latest_completed_rebalance(as_of)
    reb_week = calendar.week_start(reb)
    features = reb_week - dt.timedelta(weeks=52 * YEARS)
    sync = features - dt.timedelta(weeks=WARMUP_WEEKS)
    if first_partition is not None:
        if reb_week < first_partition:
            raise DemoPlanError(
                f"as of {as_of} the latest completed rebalance is {reb}, before the first partition "
                f"{first_partition} (KAIROS_START_DATE): no completed rebalance in the demo's range")
        sync, features = max(sync, first_partition), max(features, first_partition)
    anchor = anchor or features
    sched = dict(anchor=anchor, retrain_weeks=retrain_weeks, retune_weeks=retune_weeks, embargo_weeks=embargo_weeks)
    fits: dict[dt.date, Window] = {}
    tunes: dict[dt.date, Window] = {}
    week = max(features, first_scorable_week(anchor, retrain_weeks))
    while week <= reb_week:
        p = model_schedule(week, **sched)
        if p.retrain_week not in fits:
            fits[p.retrain_week] = _window("fit", p.retrain_week, p.train_start, p.train_end, p.label_end,
                                           n_folds, embargo_weeks)
        if p.tune_week not in tunes:
            tunes[p.tune_week] = _window("tune", p.tune_week, p.tune_train_start, p.tune_train_end,
                                         p.tune_label_end, n_folds, embargo_weeks)
        week += dt.timedelta(weeks=1)
    return DemoPlan(as_of=as_of, rebalance_date=reb, signal_session=calendar.signal_date_for(reb),
                    rebalance_week=reb_week, as_of_week=calendar.week_start(as_of), sync_start=sync,
                    feature_start=features, anchor=anchor, fits=tuple(fits.values()), tunes=tuple(tunes.values()))
