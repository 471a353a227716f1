"""Model skill: an alpha's trailing out-of-sample rank IC against the realized 5-session return.

A date's ret_5d_f is known once its horizon has ended (`features.targets.label_end_dates`: the XNYS
session five sessions later). As of a moment that knows the data through session S, the IC uses only
the rebalance dates whose label ended on or before S (no look-ahead, holiday weeks included): for a
week's Friday-night run S is the week's last session, for a rebalance morning the signal session.
The window is the last K such dates; K is KAIROS_LIVE_SHARPE_WEEKS, the same weeks the
`min_live_sharpe` kill switch judges the live track on. The ML models are compared with
`alpha_composite_v8`, the composite they replace, over the same dates.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from kairos_dagster import calendar
from kairos_dagster.features.targets import label_end_dates
from kairos_dagster.ml.metrics import rank_ic_by_date

LABEL = "ret_5d_f"
BENCHMARK = "alpha_composite_v8"
MIN_DATES = 4  # fewer labelled dates than this: too few to judge (the check says so and passes)


def with_own_alpha(stored: pl.DataFrame, own: pl.DataFrame, alpha: str) -> pl.DataFrame:
    """`stored` (ticker, date, label, benchmark and, for weeks a run does not rebuild, the alpha as
    stored) with the alpha of the run's own output `own` (ticker, date, alpha) where it has one."""
    mine = own.select("ticker", "date", pl.col(alpha).alias("_own"))
    out = stored.join(mine, on=["ticker", "date"], how="left")
    alpha_now = pl.coalesce(alpha, "_own") if alpha in out.columns else pl.col("_own")
    return out.with_columns(alpha_now.alias(alpha)).drop("_own")


def ic_by_date(frame: pl.DataFrame, alphas: Sequence[str], label: str = LABEL) -> pl.DataFrame:
    """date, label_end (the session its label is known), then one rank-IC column per alpha (null
    where the alpha has fewer than 3 names that date)."""
    dates = frame.select("date").unique().sort("date")
    out = dates.with_columns(label_end_dates(dates.get_column("date")).alias("label_end"))
    for alpha in alphas:
        ic = rank_ic_by_date(frame, alpha, label).select("date", pl.col("rank_ic").alias(alpha))
        out = out.join(ic, on="date", how="left")
    return out


def week_end_session(week: dt.date) -> dt.date:
    """The last session of the week starting on Monday `week`: what its Friday-night run knows."""
    return calendar.sessions_between(week, week + dt.timedelta(days=6))[-1]


def rebalance_morning_session(rebalance_date: dt.date) -> dt.date:
    """The last session a rebalance morning knows: its signal session (the one before it)."""
    return calendar.previous_session(rebalance_date)


@dataclass(frozen=True)
class TrailingIC:
    known_by: dt.date  # the last session whose data (and labels) it could read
    dates: int  # labelled dates in the window (both alphas present)
    first_date: dt.date | None
    last_date: dt.date | None
    ic: float | None
    benchmark_ic: float | None
    note: str | None = None  # why nothing could be judged, when an input was missing

    @property
    def judged(self) -> bool:
        return self.dates >= MIN_DATES and self.ic is not None

    @property
    def skilful(self) -> bool:
        """Above zero and not below the benchmark's (a window too short to judge counts as True)."""
        if not self.judged:
            return True
        return self.ic > 0 and (self.benchmark_ic is None or self.ic >= self.benchmark_ic)

    def text(self, alpha: str, benchmark: str = BENCHMARK) -> str:
        if self.note:
            return f"not judged: {self.note}"
        if not self.judged:
            return (f"not judged: {self.dates} rebalance date(s) labelled by {self.known_by}, "
                    f"need {MIN_DATES}")
        bench = "n/a" if self.benchmark_ic is None else f"{self.benchmark_ic:+.4f}"
        verdict = "ok" if self.skilful else ("not above zero" if self.ic <= 0 else f"below {benchmark}")
        return (f"{alpha} trailing rank IC {self.ic:+.4f} vs {benchmark} {bench} over {self.dates} rebalance "
                f"dates {self.first_date}..{self.last_date}: {verdict}")


def unjudged(known_by: dt.date, note: str) -> TrailingIC:
    return TrailingIC(known_by, 0, None, None, None, None, note)


def trailing_ic(ics: pl.DataFrame, alpha: str, known_by: dt.date, k: int,
                benchmark: str | None = BENCHMARK) -> TrailingIC:
    """The mean rank IC of `alpha` (and the benchmark, same dates) over the last k dates whose label
    ended by the session `known_by`."""
    if alpha not in ics.columns:
        return unjudged(known_by, f"no {alpha} values")
    cols = [alpha] + ([benchmark] if benchmark and benchmark in ics.columns and benchmark != alpha else [])
    window = ics.filter(pl.col("label_end") <= known_by).drop_nulls(cols).sort("date").tail(k)
    if not window.height:
        return TrailingIC(known_by, 0, None, None, None, None)
    bench = float(window[cols[1]].mean()) if len(cols) > 1 else None
    return TrailingIC(known_by, window.height, window["date"].min(), window["date"].max(),
                      float(window[alpha].mean()), bench)


def weekly_trailing_ic(ics: pl.DataFrame, alpha: str, weeks: Sequence[dt.date], k: int) -> list[TrailingIC]:
    """For each week (its Monday), the trailing IC its Friday-night run knows."""
    return [trailing_ic(ics, alpha, week_end_session(w), k) for w in weeks]
