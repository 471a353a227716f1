"""Training rows and the feature matrix for the ML alpha (pure polars / numpy).

Training rows are the universe on weekly rebalance dates (``rows="weekly"``, the default): the model
is used once a week, consecutive daily rows share 4 of 5 label days so they add little information
while making training ~5x slower, and weekly sampling keeps rows of one date from overlapping the
label horizon of the next one. ``rows="daily"`` (every session) is available for experiments.

Categorical features (string / categorical / enum columns such as ``regime`` or ``sector``) are
encoded deterministically: the vocabulary is the sorted set of non-null values seen in the training
rows, a value becomes its index in that vocabulary (a float), and a value not in the vocabulary
(a new sector) or a null becomes missing (NaN), which XGBoost routes by its learned default
direction. The vocabulary is stored with the model, so scoring uses the same codes.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from kairos_dagster.calendar import CALENDAR_END, CALENDAR_START, rebalance_dates_between, sessions_array
from kairos_dagster.ml.schedule import LABEL_HORIZON

KEY = ("ticker", "date")
# Every forward-looking column of feat_targets: never a feature.
TARGET_PATTERN = re.compile(r"^(ret_.*_f|label_.*)$")
LABEL_END = "label_end_date"
OWN_LABEL_END = "_ticker_label_end_date"  # feat_targets' horizon end in the ticker's own sessions


class DatasetError(ValueError):
    """Bad input to the ML dataset: names the table, column, ticker or date."""


class MissingHistoryError(DatasetError):
    """Training needs feature rows on dates the given frame does not hold (load more history)."""


def assert_no_target_features(features: Sequence[str], target_columns: Sequence[str] = ()) -> None:
    """Fail if a feature is a forward target (``ret_*_f``, ``label_*``) or any feat_targets column."""
    if not features:
        raise DatasetError("the feature list is empty")
    if len(set(features)) != len(features):
        dup = sorted({f for f in features if list(features).count(f) > 1})
        raise DatasetError(f"duplicate feature names: {dup}")
    banned = set(target_columns) - set(KEY)
    bad = [f for f in features if TARGET_PATTERN.match(f) or f in banned]
    if bad:
        raise DatasetError(f"features {bad} come from feat_targets (forward-looking); they can never be features")


def require_columns(frame: pl.DataFrame, columns: Sequence[str], table: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DatasetError(f"{table} is missing columns {missing}")


def assert_unique_keys(frame: pl.DataFrame, table: str) -> None:
    dup = frame.group_by(KEY).len().filter(pl.col("len") > 1)
    if dup.height:
        row = dup.sort(KEY).row(0, named=True)
        raise DatasetError(f"{table} has {dup.height} duplicate (ticker, date) keys, e.g. "
                           f"ticker={row['ticker']} date={row['date']} ({row['len']} rows)")


def label_end_dates(dates: pl.Series, horizon: int = LABEL_HORIZON) -> pl.Series:
    """``sessions_offset(d, horizon)`` for every date, vectorized over the session array."""
    days = sessions_array(CALENDAR_START, CALENDAR_END)
    arr = dates.cast(pl.Date).to_numpy().astype("datetime64[D]")
    idx = np.searchsorted(days, arr, side="right") - 1 + horizon
    if len(idx) and (idx.min() < 0 or idx.max() >= len(days)):
        raise DatasetError(f"label horizon of dates {dates.min()}..{dates.max()} is outside the calendar")
    return pl.Series(LABEL_END, days[idx], dtype=pl.Date)


def with_label_end(frame: pl.DataFrame, horizon: int = LABEL_HORIZON) -> pl.DataFrame:
    """Add ``label_end_date``: the session on which the row's label horizon ends."""
    dates = frame.select(pl.col("date").unique().sort())
    dates = dates.with_columns(label_end_dates(dates["date"], horizon))
    return frame.join(dates, on="date", how="left")


def is_categorical(dtype: pl.DataType) -> bool:
    return isinstance(dtype, pl.String | pl.Categorical | pl.Enum)


def fit_categories(frame: pl.DataFrame, features: Sequence[str]) -> dict[str, list[str]]:
    """Sorted vocabulary of every categorical feature (see module docstring)."""
    schema = frame.schema  # built anew on every access
    return {
        c: sorted(frame[c].cast(pl.String).drop_nulls().unique().to_list())
        for c in features if is_categorical(schema[c])
    }


def feature_matrix(frame: pl.DataFrame, features: Sequence[str], categories: Mapping[str, list[str]],
                   *, table: str = "features") -> np.ndarray:
    """The float32 design matrix (rows x features); categoricals encoded with ``categories``."""
    require_columns(frame, [*KEY, *features], table)
    exprs = []
    schema = frame.schema  # built anew on every access
    for c in features:
        dtype = schema[c]
        if c in categories:
            if not is_categorical(dtype):
                raise DatasetError(f"{table}.{c} was categorical at training time but is {dtype} now")
            vocab = categories[c]
            exprs.append(pl.col(c).cast(pl.String).replace_strict(
                vocab, list(map(float, range(len(vocab)))), default=None, return_dtype=pl.Float32).alias(c))
        elif dtype.is_numeric() or dtype == pl.Boolean:
            exprs.append(pl.col(c).cast(pl.Float32))  # float32 in polars: half the bytes to copy out
        else:
            raise DatasetError(f"{table}.{c} has type {dtype}, which is neither numeric nor categorical")
    x = frame.select(exprs)
    inf = x.select(pl.any_horizontal(pl.col(c).is_infinite() for c in features).alias("bad"))["bad"]
    if inf.any():
        i = int(inf.arg_true()[0])
        cols = [c for c in features if x[c][i] is not None and np.isinf(x[c][i])]
        raise DatasetError(f"{table} has an infinite value (or one beyond float32) in {cols} at ticker={frame['ticker'][i]} "
                           f"date={frame['date'][i]}")
    return x.to_numpy()  # float32; polars nulls become NaN: XGBoost's missing value


def training_rows(features_frame: pl.DataFrame, labels_frame: pl.DataFrame, features: Sequence[str],
                  label: str, *, start: dt.date, end: dt.date, label_end: dt.date,
                  rows: str = "weekly", ret_col: str | None = "ret_5d_f") -> tuple[pl.DataFrame, dict[str, int]]:
    """Join features with feat_targets on (ticker, date) for row dates in [start, end].

    Only rows whose label horizon ended on or before ``label_end`` are kept. A row's horizon ends
    ``LABEL_HORIZON`` XNYS sessions after its date, or later when feat_targets says so: its
    ``label_end_date`` counts the ticker's own sessions, so a name that missed sessions (a halt)
    looks further ahead. ``label_end_date`` is the later of the two, and purges here, in the
    early-stopping tail and in the tuning folds use it. A calendar horizon past ``label_end`` is a
    schedule error (raised); a row whose own longer horizon runs past it is dropped and counted
    (``rows_horizon_after_label_end``).
    Every rebalance date (or session, for daily rows) in the window must have feature rows, so a
    caller that loaded too little history fails instead of silently training on a shorter window.
    Rows with a null label (delisted before the horizon ended) are dropped and counted in the stats.
    Returns (rows sorted by date, ticker; stats).
    """
    assert_no_target_features(features, labels_frame.columns)
    require_columns(features_frame, [*KEY, *features], "features")
    extra = [ret_col] if ret_col else []
    require_columns(labels_frame, [*KEY, label, *extra], "feat_targets")
    if rows == "weekly":
        wanted = rebalance_dates_between(start, end)
    elif rows == "daily":
        wanted = [d.astype(dt.date) for d in sessions_array(start, end)]
    else:
        raise DatasetError(f"rows must be 'weekly' or 'daily', got {rows!r}")
    if not wanted:
        raise DatasetError(f"no {rows} row dates in the training window {start}..{end}")
    want = pl.DataFrame({"date": wanted}, schema={"date": pl.Date})
    # Keys and labels first, the wide feature columns joined once at the end: every join or filter of
    # the 150-column frame copies it, and at 5,000 tickers a late window is 600,000 rows.
    keys = features_frame.select(KEY).join(want, on="date", how="semi")
    missing = want.join(keys.select("date").unique(), on="date", how="anti")
    if missing.height:
        raise MissingHistoryError(f"features has no rows on {missing.height} training dates in {start}..{end}, "
                           f"first {missing['date'].min()}; load history back to the training start")
    assert_unique_keys(keys, "features")
    own_end = [pl.col(LABEL_END).alias(OWN_LABEL_END)] if LABEL_END in labels_frame.columns else []
    labels = labels_frame.select([*KEY, label, *extra, *own_end]).join(want, on="date", how="semi")
    assert_unique_keys(labels, "feat_targets")
    out = with_label_end(keys.join(labels, on=list(KEY), how="left"))
    late = out.filter(pl.col(LABEL_END) > label_end)
    if late.height:
        raise DatasetError(f"training rows up to {late['date'].max()} have label horizons ending after "
                           f"{label_end} (look-ahead)")
    n_late_own = 0
    if own_end:
        out = out.with_columns(pl.max_horizontal(LABEL_END, OWN_LABEL_END).alias(LABEL_END)).drop(OWN_LABEL_END)
        n_late_own = int((out[LABEL_END] > label_end).sum())
        out = out.filter(pl.col(LABEL_END) <= label_end)
    bad = out.filter(pl.col(label).is_not_null() & ~pl.col(label).is_in([0, 1]))
    if bad.height:
        r = bad.row(0, named=True)
        raise DatasetError(f"feat_targets.{label} must be 0/1, got {r[label]} at ticker={r['ticker']} date={r['date']}")
    n_null = int(out[label].null_count())
    out = out.filter(pl.col(label).is_not_null()).sort(["date", "ticker"])
    if out.height == 0:
        raise DatasetError(f"no labelled training rows in {start}..{end}")
    out = out.join(features_frame.select([*KEY, *features]), on=list(KEY), how="left", maintain_order="left")
    out = out.select([*KEY, *features, label, *extra, LABEL_END])
    return out, {"rows": out.height, "rows_null_label": n_null, "rows_horizon_after_label_end": n_late_own,
                 "dates": out["date"].n_unique()}
