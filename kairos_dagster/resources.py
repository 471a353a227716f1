"""Dagster resources: the SHARADAR data source (the warehouse and broker resources live in their packages)."""

from __future__ import annotations

import datetime as dt

from dagster import ConfigurableResource

from kairos_dagster.sources.source import NEW_YORK, MarketSource, NasdaqSource, SyntheticSource


class SharadarSource(ConfigurableResource):
    """Where SHARADAR tables come from: `synthetic` (offline default) or `nasdaq` (Nasdaq Data Link).

    The API key arrives through `EnvVar("NASDAQ_DATA_LINK_API_KEY")` and is never logged.
    """

    kind: str = "synthetic"
    api_key: str | None = None
    base_url: str = "https://data.nasdaq.com/api/v3"
    synthetic_seed: int = 7
    synthetic_tickers: int = 500
    synthetic_signal: float = 1.0  # strength of the synthetic market's planted signal (1: as documented)
    # KAIROS_AS_OF (synthetic only): serve the market as published on the morning of this ISO day
    # (through the session before it), as if it were today; "" means today.
    as_of: str = ""
    # Nasdaq Data Link client tuning: per-request timeout and exponential backoff with jitter.
    timeout_s: float = 30.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0

    def build(self) -> MarketSource:
        if self.kind == "synthetic":
            now = None
            if self.as_of:
                now = dt.datetime.combine(dt.date.fromisoformat(self.as_of), dt.time(7, 0), tzinfo=NEW_YORK)
            return SyntheticSource(self.synthetic_seed, self.synthetic_tickers, signal=self.synthetic_signal, now=now)
        if self.kind == "nasdaq":
            if not self.api_key:
                raise ValueError("data source 'nasdaq' needs NASDAQ_DATA_LINK_API_KEY")
            return NasdaqSource(self.api_key, self.base_url, timeout=self.timeout_s,
                                backoff_base=self.backoff_base_s, backoff_max=self.backoff_max_s)
        raise ValueError(f"unknown data source kind {self.kind!r} (expected 'synthetic' or 'nasdaq')")
