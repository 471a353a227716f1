"""Walk-forward retrain / retune calendar, anchored to the weekly partition grid.

The model that scores week W (keyed by its Monday) is the one trained at the most recent retrain
point R <= W on the grid ``anchor + k * retrain_weeks`` (k >= 0). The plan depends only on W and the
configuration, never on when a run happens, so a backfill of any span and a week-by-week run pick the
same models.

Leakage control for a model trained at R (all dates are exchange sessions):
* purge: a row dated d is usable only if its label horizon ``sessions_offset(d, 5)`` ended before
  R's first session;
* embargo: the horizon must moreover end before the Monday ``embargo_weeks`` weeks before R, i.e.
  ``label_end = last session before (R - 7 * embargo_weeks days)``;
* ``train_end = sessions_offset(label_end, -horizon)`` is the last usable row date;
* expanding window from ``anchor`` (``train_start = anchor``), or the last ``max_train_weeks`` weeks
  before R when that is set.

Tuning (Optuna) runs on the grid ``anchor + retrain_weeks + k * retune_weeks``: the first tune is at
the first retrain point that has training data, then every ``retune_weeks``; a model at R uses the
parameters of the most recent tune point T <= R, tuned on rows purged and embargoed against T.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from kairos_dagster.calendar import next_session, previous_session, sessions_offset

LABEL_HORIZON = 5  # sessions; label_top_quintile_5d / ret_5d_f


class ScheduleError(ValueError):
    """A week or schedule configuration the walk-forward calendar cannot plan."""


def config_hash(payload: Mapping[str, Any]) -> str:
    """A short, stable hash of a JSON-serialisable configuration (sorted keys, dates as ISO)."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ModelPlan:
    """What model scores one week, and on which rows it is trained."""

    model_name: str
    week: dt.date  # the scored week (Monday)
    fold: int  # k of the retrain point on the grid
    retrain_week: dt.date  # R, Monday of the retrain point
    first_session: dt.date  # R's first session: nothing observed on or after it is used
    train_start: dt.date  # first usable row date (inclusive)
    train_end: dt.date  # last usable row date (inclusive)
    label_end: dt.date  # last session a used label horizon may end on
    tune_week: dt.date  # T, Monday of the tune point whose params the tuned model uses
    tune_train_start: dt.date
    tune_train_end: dt.date
    tune_label_end: dt.date
    config_hash: str = ""

    @property
    def version(self) -> str:
        """``<retrain Monday>_<hash of model name, params, features, schedule>``; a directory name."""
        return f"{self.retrain_week.isoformat()}_{self.config_hash or 'unset'}"

    @property
    def tune_version(self) -> str:
        return f"tune_{self.tune_week.isoformat()}"

    def with_config(self, config: Mapping[str, Any]) -> ModelPlan:
        """The same plan with its version bound to a training configuration (params, features...)."""
        payload = {"model_name": self.model_name, **dict(config)}
        return replace(self, config_hash=config_hash(payload))


def _check_monday(name: str, d: dt.date) -> None:
    if not isinstance(d, dt.date) or isinstance(d, dt.datetime):
        raise ScheduleError(f"{name} must be a date, got {d!r}")
    if d.weekday() != 0:
        raise ScheduleError(f"{name} must be a Monday (weekly partition key), got {d} ({d:%A})")


def _window(point: dt.date, anchor: dt.date, embargo_weeks: int,
            max_train_weeks: int | None) -> tuple[dt.date, dt.date, dt.date]:
    """(train_start, train_end, label_end) for a model fitted at the Monday ``point``."""
    label_end = previous_session(point - dt.timedelta(weeks=embargo_weeks))
    train_end = sessions_offset(label_end, -LABEL_HORIZON)
    train_start = anchor
    if max_train_weeks is not None:
        train_start = max(anchor, point - dt.timedelta(weeks=max_train_weeks))
    return train_start, train_end, label_end


def first_scorable_week(anchor: dt.date, retrain_weeks: int = 13) -> dt.date:
    """The first week with a model: the second retrain point (the first has no training rows)."""
    return anchor + dt.timedelta(weeks=retrain_weeks)


def model_schedule(week_monday: dt.date, *, anchor: dt.date, retrain_weeks: int = 13,
                   retune_weeks: int = 52, embargo_weeks: int = 1, max_train_weeks: int | None = None,
                   model_name: str = "ml_v2") -> ModelPlan:
    """The walk-forward plan of the model that scores ``week_monday`` (see module docstring)."""
    _check_monday("week_monday", week_monday)
    _check_monday("anchor", anchor)
    if retrain_weeks < 1 or retune_weeks < 1:
        raise ScheduleError(f"retrain_weeks and retune_weeks must be >= 1, got {retrain_weeks}, {retune_weeks}")
    if embargo_weeks < 1:
        raise ScheduleError(f"embargo_weeks must be at least 1 (purge + one further week), got {embargo_weeks}")
    if max_train_weeks is not None and max_train_weeks < 1:
        raise ScheduleError(f"max_train_weeks must be >= 1 or None, got {max_train_weeks}")
    first = first_scorable_week(anchor, retrain_weeks)
    if week_monday < first:
        raise ScheduleError(
            f"week {week_monday} has no model: the first retrain point with training rows after anchor "
            f"{anchor} is {first} (retrain_weeks={retrain_weeks}); score weeks from {first} on")
    weeks_since = (week_monday - anchor).days // 7
    fold = weeks_since // retrain_weeks
    retrain = anchor + dt.timedelta(weeks=fold * retrain_weeks)
    # latest tune grid point <= R (R >= first, so tune_k >= 0)
    tune_k = (fold * retrain_weeks - retrain_weeks) // retune_weeks
    tune = first + dt.timedelta(weeks=tune_k * retune_weeks)
    train_start, train_end, label_end = _window(retrain, anchor, embargo_weeks, max_train_weeks)
    t_start, t_end, t_label_end = _window(tune, anchor, embargo_weeks, max_train_weeks)
    if train_end < train_start:
        raise ScheduleError(
            f"week {week_monday}: retrain point {retrain} leaves no training rows "
            f"(window {train_start}..{train_end}); use a larger retrain_weeks or an earlier anchor")
    return ModelPlan(
        model_name=model_name, week=week_monday, fold=fold, retrain_week=retrain,
        first_session=next_session(retrain - dt.timedelta(days=1)),
        train_start=train_start, train_end=train_end, label_end=label_end,
        tune_week=tune, tune_train_start=t_start, tune_train_end=t_end, tune_label_end=t_label_end,
    )
