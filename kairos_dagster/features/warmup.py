"""The documented warm-up of every technical feature, and the nulls found past it.

A technical feature (features/technical.py) is declared with the history it reads: `Feature.lookback`,
in the ticker's own sessions. Its value is null while the ticker has fewer stored sessions and must
exist afterwards. A feature of a table that reads the market's return (feat_beta) also waits for the
market's own history: the market has no return in the first sessions of the stored history.
Fundamental, insider and composite columns are null when the data are (no filing, no trade): they
have no session warm-up and are not judged here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import duckdb
import polars as pl

from kairos_dagster.features.technical import TECHNICAL_TABLES
from kairos_dagster.warehouse.store import table_exists


def feature_warmups() -> dict[str, tuple[int, bool]]:
    """column -> (warm-up in sessions, waits for the market's history) for every technical feature."""
    out: dict[str, tuple[int, bool]] = {}
    for spec in TECHNICAL_TABLES.values():
        if spec.lookahead_sessions:
            continue  # forward targets are not features
        for column, lookback in zip(spec.columns, spec.column_lookbacks, strict=True):
            out[column] = (lookback, "mkt_ret" in spec.inputs)
    return out


def longest_warmup_sessions() -> int:
    """The longest technical warm-up, in sessions (the demo syncs at least this much history)."""
    return max(lb for lb, _ in feature_warmups().values())


def history_index(con: duckdb.DuckDBPyConnection, dates: Sequence[dt.date]) -> pl.DataFrame:
    """ticker, date, n_ticker, n_market for the sep_base rows dated in `dates`: the ticker's stored sessions
    and the market's returns (market_returns, one row per session) strictly before the date."""
    schema = {"ticker": pl.String, "date": pl.Date, "n_ticker": pl.Int64, "n_market": pl.Int64}
    if not dates:
        return pl.DataFrame(schema=schema)
    market = table_exists(con, "market_returns")
    mk = ("(SELECT date, row_number() OVER (ORDER BY date) - 1 AS n FROM market_returns WHERE date <= $last)"
          if market else "(SELECT NULL::DATE AS date, NULL::BIGINT AS n)")
    return con.execute(
        "WITH h AS (SELECT ticker, date, row_number() OVER (PARTITION BY ticker ORDER BY date) - 1 AS n "
        f"FROM sep_base WHERE date <= $last) SELECT h.ticker, h.date, h.n AS n_ticker, "
        f"coalesce(mk.n, 0) AS n_market FROM h LEFT JOIN {mk} mk ON mk.date = h.date "
        "WHERE list_contains($dates::DATE[], h.date) ORDER BY h.date, h.ticker",
        {"last": max(dates), "dates": list(dates)}).pl().cast(schema)


def warmup_nulls(frame: pl.DataFrame, index: pl.DataFrame,
                 warmups: Mapping[str, tuple[int, bool]] | None = None) -> pl.DataFrame:
    """Per date and feature of `frame` (rows on the dates of `index`): rows past the feature's warm-up,
    the nulls among them, and the rows still inside it."""
    warmups = dict(warmups if warmups is not None else feature_warmups())
    cols = [c for c in warmups if c in frame.columns]
    schema = {"date": pl.Date, "feature": pl.String, "warmup_sessions": pl.Int64, "rows_past_warmup": pl.Int64,
              "nulls_past_warmup": pl.Int64, "rows_in_warmup": pl.Int64}
    if not cols or not index.height:
        return pl.DataFrame(schema=schema)
    rows = frame.select("ticker", "date", *cols).join(index, on=["ticker", "date"], how="inner")
    parts = []
    for c in cols:
        lb, needs_market = warmups[c]
        seen = pl.min_horizontal("n_ticker", "n_market") if needs_market else pl.col("n_ticker")
        past = seen >= lb
        parts.append(rows.group_by("date").agg(
            pl.lit(c).alias("feature"), pl.lit(lb, pl.Int64).alias("warmup_sessions"),
            past.sum().cast(pl.Int64).alias("rows_past_warmup"),
            (past & pl.col(c).is_null()).sum().cast(pl.Int64).alias("nulls_past_warmup"),
            (~past).sum().cast(pl.Int64).alias("rows_in_warmup")))
    return pl.concat(parts).select(list(schema)).cast(schema).sort("date", "feature")


@dataclass(frozen=True)
class WeekWarmup:
    """One week's verdict: `late` lists the features null past their warm-up (it fails the week),
    `warming` those with rows still inside it (counted); per feature, summed over the week's dates."""

    week: dt.date
    dates: int
    late: pl.DataFrame
    warming: pl.DataFrame

    @property
    def passed(self) -> bool:
        return self.late.height == 0

    @property
    def nulls_past_warmup(self) -> int:
        return int(self.late["nulls_past_warmup"].sum()) if self.late.height else 0

    @property
    def rows_in_warmup_max(self) -> int:
        return int(self.warming["rows_in_warmup"].max() or 0) if self.warming.height else 0

    def text(self) -> str:
        if not self.dates:
            return "no rebalance date in the week"
        if self.late.height:
            worst = ", ".join(f"{f} ({n})" for f, n in self.late.select("feature", "nulls_past_warmup").head(8).iter_rows())
            return f"{self.nulls_past_warmup} null value(s) past the documented warm-up: {worst}"
        return (f"no feature null past its warm-up; {self.warming.height} feature(s) still warming up on "
                f"{self.rows_in_warmup_max} row(s) at most")


def week_verdicts(nulls: pl.DataFrame, weeks: Sequence[dt.date]) -> list[WeekWarmup]:
    """`warmup_nulls` output summed per week (each week's Monday in `weeks`)."""
    by_week = nulls.with_columns(week=pl.col("date").dt.truncate("1w"))
    out = []
    for week in weeks:
        rows = by_week.filter(pl.col("week") == week)
        per_feature = (rows.group_by("feature", "warmup_sessions")
                       .agg(pl.col("nulls_past_warmup").sum(), pl.col("rows_in_warmup").sum(),
                            pl.col("rows_past_warmup").sum())
                       .sort("nulls_past_warmup", "rows_in_warmup", "feature", descending=[True, True, False]))
        out.append(WeekWarmup(week, rows.get_column("date").n_unique(),
                              per_feature.filter(pl.col("nulls_past_warmup") > 0),
                              per_feature.filter(pl.col("rows_in_warmup") > 0)))
    return out
