"""One interface over the two SHARADAR sources: Nasdaq Data Link and the synthetic market."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Protocol

import polars as pl

from kairos_dagster import calendar
from kairos_dagster.constants import NEW_YORK
from kairos_dagster.sources.schemas import schema

# SHARADAR publishes a session's prices in the evening; before this hour the latest complete day is the previous one.
PUBLISH_HOUR = 18


class MarketSource(Protocol):
    name: str
    as_of: dt.date  # the last session whose data the source serves (the day its adjustments are as of)

    def fetch(self, table: str, start: dt.date | None, end: dt.date | None) -> pl.DataFrame:
        """Rows of SHARADAR `table` whose point-in-time column lies in [start, end] (inclusive)."""
        ...

    def latest_date(self, table: str) -> dt.date | None:
        """The newest point-in-time date the source holds for `table`."""
        ...

    def fetch_updated(self, table: str, since: dt.date, not_before: dt.date | None = None) -> pl.DataFrame:
        """Rows of `table` (one with a `lastupdated` column) whose `lastupdated` is on or after `since`
        and whose point-in-time date is on or after `not_before`: new rows and the older rows the feed
        has rewritten since (split and dividend restatements, corrections)."""
        ...


def last_published_session(now: dt.datetime | None = None) -> dt.date:
    """The latest session whose data is published at `now` (New York time)."""
    now = (now or dt.datetime.now(NEW_YORK)).astimezone(NEW_YORK)
    today = now.date()
    if calendar.is_session(today) and now.hour >= PUBLISH_HOUR:
        return today
    return calendar.previous_session(today)


class SyntheticSource:
    """The synthetic market, published up to the last completed session (never the future)."""

    name = "synthetic"

    def __init__(self, seed: int, n_tickers: int, *, signal: float = 1.0, now: dt.datetime | None = None,
                 cache_dir: Path | None = None) -> None:
        from kairos_dagster.sources.synthetic import SyntheticMarket

        self.market = SyntheticMarket(seed=seed, n_tickers=n_tickers, signal=signal, cache_dir=cache_dir)
        self.as_of = last_published_session(now)

    def fetch(self, table: str, start: dt.date | None, end: dt.date | None) -> pl.DataFrame:
        spec = schema(table)
        if spec.pit_column is None:  # TICKERS: keyed by the symbols of the as-of day
            return self.market.table(spec.name, as_of=self.as_of)
        end = self.as_of if end is None else min(end, self.as_of)
        if start is not None and start > end:
            return spec.empty()
        return self.market.table(spec.name, start, end, as_of=self.as_of)

    def fetch_updated(self, table: str, since: dt.date, not_before: dt.date | None = None) -> pl.DataFrame:
        return self.market.updated(schema(table).name, since, self.as_of, not_before=not_before)

    def latest_date(self, table: str) -> dt.date | None:
        spec = schema(table)
        if spec.pit_column is None:
            return None
        if spec.name == "SEP" or spec.name == "DAILY":
            return self.as_of
        recent = self.fetch(table, self.as_of - dt.timedelta(days=200), self.as_of)
        return recent.get_column(spec.pit_column).max() if recent.height else None


class NasdaqSource:
    """SHARADAR through the Nasdaq Data Link datatables API."""

    name = "nasdaq"

    def __init__(self, api_key: str, base_url: str, **client_options: float) -> None:
        from kairos_dagster.sources.nasdaq import NasdaqDataLinkClient

        self.client = NasdaqDataLinkClient(api_key, base_url, **client_options)
        self.as_of = last_published_session()

    def fetch(self, table: str, start: dt.date | None, end: dt.date | None) -> pl.DataFrame:
        spec = schema(table)
        if spec.pit_column is None:
            return self.client.fetch_table(spec.name)
        return self.client.fetch_range(spec.name, start, end)

    def fetch_updated(self, table: str, since: dt.date, not_before: dt.date | None = None) -> pl.DataFrame:
        spec = schema(table)
        if "lastupdated" not in spec.columns:
            raise ValueError(f"{spec.name} has no lastupdated column")
        filters: dict[str, dt.date] = {"lastupdated.gte": since}
        if not_before is not None and spec.pit_column is not None:
            filters[f"{spec.pit_column}.gte"] = not_before
        return self.client.fetch_table(spec.name, filters)

    def latest_date(self, table: str) -> dt.date | None:
        return self.client.latest_date(schema(table).name)
