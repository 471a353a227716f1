"""Model skill (ml/skill): the trailing rank IC known in a week, against alpha_composite_v8."""

import datetime as dt

import numpy as np
import polars as pl

from kairos_dagster.ml import skill

FRIDAYS = [dt.date(2026, 1, 2) + dt.timedelta(weeks=i) for i in range(12)]


def _frame(ml_sign: list[float], v8_sign: float = 0.5, n: int = 40, seed: int = 3) -> pl.DataFrame:
    """Per Friday, n names whose ret_5d_f is noise; the ML alpha is ret * sign + noise, v8 likewise."""
    rng = np.random.default_rng(seed)
    parts = []
    for d, s in zip(FRIDAYS, ml_sign, strict=True):
        ret = rng.normal(size=n)
        parts.append(pl.DataFrame({
            "ticker": [f"T{i}" for i in range(n)], "date": [d] * n, "ret_5d_f": ret,
            "alpha_ml": s * ret + rng.normal(size=n) * 0.5, "alpha_composite_v8": v8_sign * ret + rng.normal(size=n)}))
    return pl.concat(parts)


def test_a_week_knows_only_the_labels_of_the_weeks_before_it():
    ics = skill.ic_by_date(_frame([1.0] * 6 + [-1.0] * 6), ["alpha_ml", "alpha_composite_v8"])
    monday_7 = FRIDAYS[6] - dt.timedelta(days=4)  # the week of the 7th Friday: the six good weeks only
    t = skill.weekly_trailing_ic(ics, "alpha_ml", [monday_7], 26)[0]
    assert t.dates == 6 and t.last_date == FRIDAYS[5] and t.ic > 0.5 and t.skilful
    # Twelve weeks later the window holds the six bad weeks too; with k=6 only the bad ones.
    later = FRIDAYS[-1] + dt.timedelta(days=3)
    bad = skill.weekly_trailing_ic(ics, "alpha_ml", [later], 6)[0]
    assert bad.first_date == FRIDAYS[6] and bad.ic < 0 and not bad.skilful
    assert "not above zero" in bad.text("alpha_ml")


def test_positive_but_below_the_composite_is_flagged_and_too_few_dates_are_not_judged():
    frame = _frame([0.3] * 12, v8_sign=3.0)  # ML weakly right, the composite strongly right
    ics = skill.ic_by_date(frame, ["alpha_ml", "alpha_composite_v8"])
    t = skill.weekly_trailing_ic(ics, "alpha_ml", [FRIDAYS[-1] + dt.timedelta(days=3)], 26)[0]
    assert 0 < t.ic < t.benchmark_ic and not t.skilful and "below alpha_composite_v8" in t.text("alpha_ml")
    early = skill.weekly_trailing_ic(ics, "alpha_ml", [FRIDAYS[2] - dt.timedelta(days=4)], 26)[0]
    assert early.dates == 2 and not early.judged and early.skilful and "not judged" in early.text("alpha_ml")


def test_a_holiday_week_waits_for_a_label_that_ends_after_it():
    """Martin Luther King Day (Monday 2026-01-19): the label of Friday 2026-01-16 ends on Monday 2026-01-26,
    after that week's Friday-night run; the week judges only the two Fridays before."""
    ics = skill.ic_by_date(_frame([1.0] * 12), ["alpha_ml", "alpha_composite_v8"])
    assert ics.filter(pl.col("date") == dt.date(2026, 1, 16))["label_end"].item() == dt.date(2026, 1, 26)
    t = skill.weekly_trailing_ic(ics, "alpha_ml", [dt.date(2026, 1, 19)], 26)[0]
    assert t.known_by == dt.date(2026, 1, 23) and t.dates == 2 and t.last_date == dt.date(2026, 1, 9)
    # A rebalance morning knows the data through its signal session only.
    assert skill.rebalance_morning_session(dt.date(2026, 1, 23)) == dt.date(2026, 1, 22)
    assert "not judged: table" in skill.unjudged(t.known_by, "table 'x' does not exist").text("alpha_ml")
