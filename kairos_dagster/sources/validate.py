"""Validation of synced SHARADAR rows: bad rows are rejected with a reason, counted, never dropped silently."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import polars as pl

from kairos_dagster.calendar import sessions_frame
from kairos_dagster.sources.schemas import TableSchema

PRICE_COLUMNS = ("open", "high", "low", "close", "closeadj", "closeunadj")
# Past this share of rejected rows the sync's `valid_rows` check fails.
DEFAULT_REJECT_THRESHOLD = 0.01


@dataclass
class ValidationResult:
    table: str
    clean: pl.DataFrame
    rejects: pl.DataFrame  # reason, ticker, date, detail
    input_rows: int
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def rejected(self) -> int:
        return sum(self.counts.values())

    @property
    def reject_rate(self) -> float:
        return self.rejected / self.input_rows if self.input_rows else 0.0


def _reject(df: pl.DataFrame, mask: pl.Expr, reason: str, date_col: str | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split df by `mask` (true = reject) into (kept, rejects with reason)."""
    flagged = df.with_columns(mask.fill_null(True).alias("_bad"))
    bad = flagged.filter(pl.col("_bad"))
    kept = flagged.filter(~pl.col("_bad")).drop("_bad")
    rej = bad.select(
        pl.lit(reason).alias("reason"),
        pl.col("ticker").cast(pl.String) if "ticker" in df.columns else pl.lit(None, pl.String).alias("ticker"),
        (pl.col(date_col).cast(pl.Date) if date_col else pl.lit(None, pl.Date)).alias("date"),
    )
    return kept, rej


def validate_rows(
    table: TableSchema,
    df: pl.DataFrame,
    *,
    start: dt.date,
    end: dt.date,
    date_col: str,
    known_tickers: pl.Series | None,
) -> ValidationResult:
    """Check synced rows for table `table` that belong to [start, end) by `date_col`.

    Rejection reasons: exact duplicate rows (one copy kept), conflicting duplicate keys (all copies),
    dates outside the window, non-sessions (price tables), non-positive or NaN prices, OHLC
    inconsistency, negative volume, unknown tickers.
    """
    n = df.height
    rejects: list[pl.DataFrame] = []
    kept = df

    if n:
        dup_exact = kept.select(~pl.struct(pl.all()).is_first_distinct()).to_series()
        kept, r = _reject(kept, pl.lit(dup_exact), "duplicate_row", date_col)
        rejects.append(r)
    if kept.height:
        conflict = kept.select(pl.struct(list(table.key)).is_duplicated()).to_series()
        kept, r = _reject(kept, pl.lit(conflict), "duplicate_key", date_col)
        rejects.append(r)

    d = pl.col(date_col)
    kept, r = _reject(kept, d.is_null() | (d < start) | (d >= end), "date_outside_window", date_col)
    rejects.append(r)

    if table.name in {"SEP", "DAILY"} and kept.height:
        sessions = sessions_frame(start, end - dt.timedelta(days=1)).get_column("date")
        kept, r = _reject(kept, ~d.is_in(sessions.implode()), "not_a_session", date_col)
        rejects.append(r)

    if table.name == "SEP":
        bad_price = pl.any_horizontal(
            [pl.col(c).is_null() | pl.col(c).is_nan() | (pl.col(c) <= 0) for c in PRICE_COLUMNS]
        )
        kept, r = _reject(kept, bad_price, "price_nonpositive_or_nan", date_col)
        rejects.append(r)
        ohlc = (pl.col("low") > pl.min_horizontal("open", "close") * (1 + 1e-9)) | (
            pl.col("high") < pl.max_horizontal("open", "close") * (1 - 1e-9)
        ) | (pl.col("low") > pl.col("high"))
        kept, r = _reject(kept, ohlc, "ohlc_inconsistent", date_col)
        rejects.append(r)
        kept, r = _reject(kept, pl.col("volume").is_null() | pl.col("volume").is_nan() | (pl.col("volume") < 0),
                          "volume_negative_or_nan", date_col)
        rejects.append(r)

    if known_tickers is not None and "ticker" in kept.columns:
        kept, r = _reject(kept, ~pl.col("ticker").is_in(known_tickers.implode()), "unknown_ticker", date_col)
        rejects.append(r)

    all_rejects = (
        pl.concat(rejects, how="vertical") if rejects else pl.DataFrame(schema={"reason": pl.String, "ticker": pl.String, "date": pl.Date})
    )
    counts = {reason: int(c) for reason, c in all_rejects.group_by("reason").len().sort("reason").iter_rows()}
    return ValidationResult(table=table.warehouse_table, clean=kept, rejects=all_rejects, input_rows=n, counts=counts)
