"""Model skill: an alpha's trailing out-of-sample rank IC against the realized 5-session return.

As of week W the IC uses only rebalance dates of the weeks before W: a date's ret_5d_f ends five sessions
later, by the next rebalance, so every label it reads was known when W was decided (no look-ahead).
The window is the last K such dates; K is KAIROS_LIVE_SHARPE_WEEKS, the same weeks the `min_live_sharpe`
kill switch judges the live track on. The ML models are compared with `alpha_composite_v8`, the
composite they replace, over the same dates.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from kairos_dagster.ml.metrics import rank_ic_by_date

LABEL = "ret_5d_f"
BENCHMARK = "alpha_composite_v8"
MIN_DATES = 4  # fewer labelled dates than this: too few to judge (the check says so and passes)


def ic_by_date(frame: pl.DataFrame, alphas: Sequence[str], label: str = LABEL) -> pl.DataFrame:
    """date, then one rank-IC column per alpha (null where the alpha has fewer than 3 names that date)."""
    out = frame.select("date").unique().sort("date")
    for alpha in alphas:
        ic = rank_ic_by_date(frame, alpha, label).select("date", pl.col("rank_ic").alias(alpha))
        out = out.join(ic, on="date", how="left")
    return out


@dataclass(frozen=True)
class TrailingIC:
    week: dt.date  # the Monday of the week it was known in
    dates: int  # labelled dates in the window (both alphas present)
    first_date: dt.date | None
    last_date: dt.date | None
    ic: float | None
    benchmark_ic: float | None

    @property
    def judged(self) -> bool:
        return self.dates >= MIN_DATES and self.ic is not None

    @property
    def skilful(self) -> bool:
        """Above zero and not below the benchmark's (a week with too few dates is not judged: True)."""
        if not self.judged:
            return True
        return self.ic > 0 and (self.benchmark_ic is None or self.ic >= self.benchmark_ic)

    def text(self, alpha: str, benchmark: str = BENCHMARK) -> str:
        if not self.judged:
            return (f"not judged: {self.dates} labelled rebalance date(s) before {self.week}, "
                    f"need {MIN_DATES}")
        bench = "n/a" if self.benchmark_ic is None else f"{self.benchmark_ic:+.4f}"
        verdict = "ok" if self.skilful else ("not above zero" if self.ic <= 0 else f"below {benchmark}")
        return (f"{alpha} trailing rank IC {self.ic:+.4f} vs {benchmark} {bench} over {self.dates} rebalance "
                f"dates {self.first_date}..{self.last_date}: {verdict}")


def trailing_ic(ics: pl.DataFrame, alpha: str, week: dt.date, k: int, benchmark: str | None = BENCHMARK) -> TrailingIC:
    """The mean rank IC of `alpha` (and the benchmark, same dates) over the last k dates before `week`."""
    cols = [alpha] + ([benchmark] if benchmark and benchmark in ics.columns and benchmark != alpha else [])
    window = (ics.filter(pl.col("date") < week).drop_nulls(cols).sort("date").tail(k))
    if not window.height:
        return TrailingIC(week, 0, None, None, None, None)
    bench = float(window[cols[1]].mean()) if len(cols) > 1 else None
    return TrailingIC(week, window.height, window["date"].min(), window["date"].max(), float(window[alpha].mean()),
                      bench)
