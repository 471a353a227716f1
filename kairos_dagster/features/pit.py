"""Point-in-time join rules of SF1 and DAILY (DESIGN.md, "Correctness rules"), pure polars.

- SF1: only the as-reported dimensions (ARQ/ART/ARY); a value on day d comes from rows with
  ``datekey <= d``. Among those, the latest *report period* wins, and for that period the latest
  ``datekey`` (an amendment of the current period replaces it from its filing date on; a late amendment
  of an *older* period never displaces a newer period). Snapshots older than ``SF1_STALE_DAYS`` are
  treated as missing. MR dimensions (restated, dated by period end) are never read.
- Year-ago SF1 values (growth, Piotroski changes) are the latest version of the period one year
  earlier (``calendardate`` minus one year) that was filed on or before the current snapshot's datekey.
- DAILY (marketcap, ev — USD millions): the latest row with ``date <= d`` within ``DAILY_STALE_DAYS``.

Also holds the input checks these joins and the factor tables (features.fundamental) share.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import polars as pl

from kairos_dagster.warehouse.ordering import in_key_order

AR_DIMENSIONS: tuple[str, ...] = ("ARQ", "ART", "ARY")
MR_DIMENSIONS: tuple[str, ...] = ("MRQ", "MRT", "MRY")
SF1_STALE_DAYS = 400  # an annual filer's snapshot is still current ~13 months on
DAILY_STALE_DAYS = 7


def require_columns(df: pl.DataFrame, table: str, columns: Sequence[str]) -> None:
    """Raise naming the table when any of `columns` is missing."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{table}: missing columns {missing} (has {df.columns})")


def require_no_nulls(df: pl.DataFrame, table: str, columns: Sequence[str]) -> None:
    """Raise naming the table, column and example rows when a column holds nulls."""
    for c in columns:
        bad = df.filter(pl.col(c).is_null())
        if bad.height:
            who = bad.head(3).select([k for k in ("ticker", "date") if k in df.columns]).rows()
            raise ValueError(f"{table}: {bad.height} rows with null {c!r}, e.g. {who}")


def require_unique(df: pl.DataFrame, table: str, key: Sequence[str]) -> None:
    """Raise naming the table and example keys when rows share a key."""
    if in_key_order(df, key, strict=True):  # one pass where hashing the keys costs several
        return
    dup = df.filter(pl.struct(key).is_duplicated())
    if dup.height:
        raise ValueError(f"{table}: {dup.height} rows share a key {list(key)}, e.g. {dup.select(key).head(3).rows()}")


def sf1_snapshots(
    sf1: pl.DataFrame, columns: Sequence[str], *, dimension: str = "ART", prior_year: Sequence[str] = ()
) -> pl.DataFrame:
    """The SF1 filings of one AR dimension that can be "current" for a ticker, with year-ago values.

    Returns (ticker, datekey, reportperiod, calendardate, *columns, *{c}_py) sorted by datekey, where
    only rows whose report period is at least as recent as every earlier-filed one are kept (a late
    amendment of an older period never becomes the current snapshot).
    """
    if dimension not in AR_DIMENSIONS:
        raise ValueError(
            f"sf1: dimension {dimension!r} is not point-in-time safe; use one of {AR_DIMENSIONS}"
        )
    key = ["ticker", "dimension", "datekey", "reportperiod"]
    cols = list(dict.fromkeys([*columns, *prior_year]))
    require_columns(sf1, "sf1", [*key, "calendardate", *cols])
    f = sf1.filter(pl.col("dimension") == dimension)
    require_no_nulls(f, f"sf1 ({dimension})", ["ticker", "datekey", "reportperiod", "calendardate"])
    require_unique(f, f"sf1 ({dimension})", key)
    f = f.select(
        "ticker", "datekey", "reportperiod", "calendardate", *[pl.col(c).cast(pl.Float64) for c in cols]
    ).sort("ticker", "datekey", "reportperiod")
    # Several rows filed the same day for one ticker: the latest period is the current one.
    versions = f.unique(["ticker", "datekey", "calendardate"], keep="last", maintain_order=True)
    current = f.unique(["ticker", "datekey"], keep="last", maintain_order=True).filter(
        pl.col("reportperiod") >= pl.col("reportperiod").cum_max().over("ticker")
    )
    if prior_year:
        right = versions.select(
            "ticker", "calendardate", pl.col("datekey").alias("_dk_py"), *[pl.col(c).alias(f"{c}_py") for c in prior_year]
        ).sort("_dk_py")
        current = (
            current.with_columns(_cd_py=pl.col("calendardate").dt.offset_by("-1y"))
            .sort("datekey")
            .join_asof(
                right,
                left_on="datekey",
                right_on="_dk_py",
                by_left=["ticker", "_cd_py"],
                by_right=["ticker", "calendardate"],
                strategy="backward",
                check_sortedness=False,
            )
            .drop("_cd_py", "_dk_py")
        )
    drop = [c for c in cols if c not in columns]
    return current.drop(drop).sort("datekey")


def pit_sf1(
    rows: pl.DataFrame,
    sf1: pl.DataFrame,
    columns: Sequence[str],
    *,
    dimension: str = "ART",
    prior_year: Sequence[str] = (),
) -> pl.DataFrame:
    """Attach the point-in-time SF1 snapshot (and year-ago values ``{c}_py``) to each (ticker, date) row.

    Keeps ``_row`` if present. Adds ``datekey``, ``reportperiod``, ``calendardate``.
    """
    snap = sf1_snapshots(sf1, columns, dimension=dimension, prior_year=prior_year)
    out = rows.sort("date").join_asof(
        snap,
        left_on="date",
        right_on="datekey",
        by="ticker",
        strategy="backward",
        tolerance=dt.timedelta(days=SF1_STALE_DAYS),
        check_sortedness=False,
    )
    return out


def pit_daily(rows: pl.DataFrame, daily: pl.DataFrame, columns: Sequence[str] = ("marketcap", "ev")) -> pl.DataFrame:
    """Attach the latest DAILY values dated on or before each row's date (within DAILY_STALE_DAYS)."""
    require_columns(daily, "daily", ["ticker", "date", *columns])
    d = daily.select("ticker", pl.col("date").alias("_daily_date"), *[pl.col(c).cast(pl.Float64) for c in columns])
    require_no_nulls(d.rename({"_daily_date": "date"}), "daily", ["ticker", "date"])
    require_unique(d, "daily", ["ticker", "_daily_date"])
    return (
        rows.sort("date")
        .join_asof(
            d.sort("_daily_date"),
            left_on="date",
            right_on="_daily_date",
            by="ticker",
            strategy="backward",
            tolerance=dt.timedelta(days=DAILY_STALE_DAYS),
            check_sortedness=False,
        )
        .drop("_daily_date")
    )
