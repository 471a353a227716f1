"""Dagster resources: the SHARADAR data source (the warehouse and broker resources live in their packages)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from dagster import ConfigurableResource

from kairos_dagster.settings import DEFAULT_NASDAQ_BASE_URL, Settings, load_settings
from kairos_dagster.sources.source import NEW_YORK, MarketSource, NasdaqSource, SyntheticSource
from kairos_dagster.sources.synthetic import SyntheticMarket

KEY_VAR = "NASDAQ_DATA_LINK_API_KEY"


class SourceConfigError(ValueError):
    """A data-source configuration that cannot run (an unknown kind, nasdaq without a key)."""


class SharadarSource(ConfigurableResource):
    """Where SHARADAR tables come from: `synthetic` (offline default) or `nasdaq` (Nasdaq Data Link).

    Every field left unset comes from the settings when the source is built (KAIROS_DATA_SOURCE,
    KAIROS_NASDAQ_BASE_URL, KAIROS_SYNTHETIC_*), so a run config that sets only a timeout or a base URL
    keeps the configured source: it can never switch a Nasdaq warehouse to invented prices. The API key
    arrives through `EnvVar("NASDAQ_DATA_LINK_API_KEY")`, or from that variable at build time, and is
    never logged.
    """

    kind: str = ""  # "": KAIROS_DATA_SOURCE (itself nasdaq when the key is set)
    api_key: str | None = None
    base_url: str = ""  # "": KAIROS_NASDAQ_BASE_URL
    synthetic_seed: int | None = None
    synthetic_tickers: int | None = None
    synthetic_signal: float | None = None  # strength of the synthetic market's planted signal (1: as documented)
    synthetic_cache_dir: str = ""  # "": KAIROS_SYNTHETIC_CACHE_DIR; "off": generate in every process
    # KAIROS_AS_OF (synthetic only): serve the market as published on the morning of this ISO day
    # (through the session before it), as if it were today; "" means the settings' (or today).
    as_of: str = ""
    # Nasdaq Data Link client tuning: per-request timeout and exponential backoff with jitter.
    timeout_s: float = 30.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0

    def resolved_kind(self) -> str:
        kind = (self.kind or load_settings().data_source).strip().lower()
        if kind not in ("synthetic", "nasdaq"):
            raise SourceConfigError(f"unknown data source kind {kind!r} (expected 'synthetic' or 'nasdaq')")
        return kind

    def identity(self) -> str:
        """What the warehouse records as its source: the kind, and for the synthetic market which one."""
        if self.resolved_kind() == "nasdaq":
            return "nasdaq"
        s = load_settings()
        return SyntheticMarket(
            s.synthetic_seed if self.synthetic_seed is None else self.synthetic_seed,
            s.synthetic_tickers if self.synthetic_tickers is None else self.synthetic_tickers,
            s.synthetic_signal if self.synthetic_signal is None else self.synthetic_signal).identity

    def panel_cache_dir(self) -> Path | None:
        """Where the synthetic market keeps its large generated panels for later processes (None: nowhere)."""
        if self.synthetic_cache_dir.strip():
            return None if self.synthetic_cache_dir.strip().lower() == "off" else Path(self.synthetic_cache_dir)
        return load_settings().synthetic_cache_dir

    def build(self) -> MarketSource:
        s = load_settings()
        kind = self.resolved_kind()
        if kind == "synthetic":
            as_of = self.as_of or (s.as_of.isoformat() if s.as_of else "")
            now = dt.datetime.combine(dt.date.fromisoformat(as_of), dt.time(7, 0), tzinfo=NEW_YORK) if as_of else None
            return SyntheticSource(
                s.synthetic_seed if self.synthetic_seed is None else self.synthetic_seed,
                s.synthetic_tickers if self.synthetic_tickers is None else self.synthetic_tickers,
                signal=s.synthetic_signal if self.synthetic_signal is None else self.synthetic_signal, now=now,
                cache_dir=self.panel_cache_dir())
        key = self.api_key or os.environ.get(KEY_VAR, "").strip()
        if not key:
            raise SourceConfigError(f"data source 'nasdaq' needs {KEY_VAR} to be set")
        return NasdaqSource(key, self.base_url or s.nasdaq_base_url or DEFAULT_NASDAQ_BASE_URL,
                            timeout=self.timeout_s, backoff_base=self.backoff_base_s, backoff_max=self.backoff_max_s)


def source_resource(settings: Settings):
    """The `source` resource of a Definitions built from `settings`: a run config may set any field,
    and every field it leaves out keeps the settings' value (a ConfigurableResource instance would fall
    back to its class defaults instead: run config replaces constructor values). The key is read from
    NASDAQ_DATA_LINK_API_KEY when the run starts; it is never part of the config."""
    from dagster import Field, InitResourceContext, resource

    defaults = {
        "kind": settings.data_source, "base_url": settings.nasdaq_base_url,
        "synthetic_seed": settings.synthetic_seed, "synthetic_tickers": settings.synthetic_tickers,
        "synthetic_signal": settings.synthetic_signal,
        "synthetic_cache_dir": str(settings.synthetic_cache_dir) if settings.synthetic_cache_dir else "off",
        "as_of": settings.as_of.isoformat() if settings.as_of else "",
        "timeout_s": 30.0, "backoff_base_s": 0.5, "backoff_max_s": 30.0,
    }
    schema = {k: Field(type(v), is_required=False, description=f"default from the settings: {v!r}")
              for k, v in defaults.items()}

    @resource(config_schema=schema, description=SharadarSource.__doc__)
    def source(context: InitResourceContext) -> SharadarSource:
        return SharadarSource(**{**defaults, **(context.resource_config or {})})

    return source
