"""The broker as a Dagster resource: the simulated broker unless Alpaca credentials are configured.

Credentials arrive through `EnvVar` (APCA_API_KEY_ID / APCA_API_SECRET_KEY / APCA_API_BASE_URL, or
ALPACA_API_KEY / ALPACA_SECRET_KEY / ALPACA_BASE_URL), so the Definitions, the UI's resource view and
the run config show the variable names, never the values. Paper or live is decided by the base URL
alone (live only for https://api.alpaca.markets; unset = paper), see broker/alpaca.py.
"""

import datetime as dt
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import duckdb
from dagster import ConfigurableResource, EnvVar
from pydantic import Field

from kairos_dagster.broker.alpaca import AlpacaBroker, AlpacaCredentials, alpaca_credentials_from_env
from kairos_dagster.broker.base import Broker
from kairos_dagster.broker.simulated import SimulatedBroker

# (key, secret, base URL) variable names, in the order alpaca_credentials_from_env prefers them.
CREDENTIAL_VARS: tuple[tuple[str, str, str], ...] = (
    ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY", "APCA_API_BASE_URL"),
    ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "ALPACA_BASE_URL"),
)
DATA_URL_VARS = ("APCA_API_DATA_URL", "ALPACA_DATA_URL")


class BrokerResource(ConfigurableResource):
    """Which broker the execution assets talk to.

    `kind`: "simulated" (default; a paper account in the warehouse DuckDB, sim_* tables) or "alpaca".
    With "alpaca" the key, secret and base URL are EnvVar references resolved at run time.
    """

    kind: str = Field(default="simulated", description="simulated | alpaca")
    warehouse_path: str = Field(description="the warehouse DuckDB file (simulated broker and execution_orders)")
    api_key: str | None = Field(default=None, description="EnvVar APCA_API_KEY_ID or ALPACA_API_KEY")
    secret_key: str | None = Field(default=None, description="EnvVar APCA_API_SECRET_KEY or ALPACA_SECRET_KEY")
    base_url: str | None = Field(default=None, description="EnvVar APCA_API_BASE_URL or ALPACA_BASE_URL (unset: paper)")
    data_url: str | None = Field(default=None, description="market-data URL (default https://data.alpaca.markets)")
    auto_paper: bool = Field(default=False, description="KAIROS_AUTO_PAPER: paper may execute without an approval")
    sim_starting_cash: float = 100_000.0
    sim_slippage_bps: float = 5.0
    sim_account_id: str = "sim-paper"
    alpaca_timeout_s: float = 15.0
    alpaca_retry_wait_s: float | None = None  # the SDK's own 429/504 wait (None: its default, 3 s)

    @classmethod
    def from_env(cls, warehouse_path: str, env: Mapping[str, str] | None = None, *,
                 auto_paper: bool = False) -> "BrokerResource":
        """Alpaca when a key or secret variable is set (EnvVar references to the set ones), else simulated."""
        env = os.environ if env is None else env
        for key_var, secret_var, url_var in CREDENTIAL_VARS:
            if env.get(key_var, "").strip() or env.get(secret_var, "").strip():
                data_var = next((v for v in DATA_URL_VARS if env.get(v, "").strip()), None)
                return cls(
                    kind="alpaca", warehouse_path=warehouse_path, auto_paper=auto_paper,
                    # An EnvVar of an unset variable fails at run time: missing ones stay None and
                    # credentials() names the missing variable instead.
                    api_key=EnvVar(key_var) if env.get(key_var, "").strip() else None,
                    secret_key=EnvVar(secret_var) if env.get(secret_var, "").strip() else None,
                    base_url=EnvVar(url_var) if env.get(url_var, "").strip() else None,
                    data_url=EnvVar(data_var) if data_var else None,
                )
        return cls(kind="simulated", warehouse_path=warehouse_path, auto_paper=auto_paper)

    def __repr__(self) -> str:
        # A resolved resource holds the secret: never let it reach a log line or an error message.
        return f"BrokerResource(kind={self.kind!r}, warehouse_path={self.warehouse_path!r})"

    __str__ = __repr__

    # ------------------------------------------------------------------ what it is
    def credentials(self) -> AlpacaCredentials:
        if self.kind != "alpaca":
            raise ValueError(f"broker kind is {self.kind!r}: no Alpaca credentials")
        if any(isinstance(v, EnvVar) for v in (self.api_key, self.secret_key, self.base_url, self.data_url)):
            raise ValueError("broker credentials are unresolved EnvVar references: use the resource inside a run "
                             "or call process_config_and_initialize() first")
        creds = alpaca_credentials_from_env({
            "APCA_API_KEY_ID": self.api_key or "", "APCA_API_SECRET_KEY": self.secret_key or "",
            "APCA_API_BASE_URL": self.base_url or "", "APCA_API_DATA_URL": self.data_url or ""})
        if creds is None:
            raise ValueError("broker kind 'alpaca' but no API key/secret is configured (APCA_API_KEY_ID / "
                             "APCA_API_SECRET_KEY or ALPACA_API_KEY / ALPACA_SECRET_KEY)")
        return creds

    @property
    def is_live(self) -> bool:
        return self.kind == "alpaca" and self.credentials().is_live

    def describe(self) -> str:
        """A one-line, secret-free description for logs and metadata."""
        if self.kind == "simulated":
            return f"simulated paper broker (account {self.sim_account_id}, {self.sim_slippage_bps:g} bps slippage)"
        if self.kind == "alpaca":
            c = self.credentials()
            return f"Alpaca {'LIVE' if c.is_live else 'paper'} ({c.base_url})"
        raise ValueError(f"unknown broker kind {self.kind!r} (expected 'simulated' or 'alpaca')")

    # ------------------------------------------------------------------ building
    def make_alpaca(self, creds: AlpacaCredentials) -> AlpacaBroker:
        return AlpacaBroker(creds, timeout_s=self.alpaca_timeout_s, retry_wait_seconds=self.alpaca_retry_wait_s)

    @contextmanager
    def open(self, con: duckdb.DuckDBPyConnection | None = None, *,
             as_of: dt.datetime | None = None) -> Iterator[Broker]:
        """The broker. The simulated one shares `con` (DuckDB allows one writer per file) and runs on
        the clock `as_of` (default now); Alpaca keeps its own clock and refuses `as_of`."""
        if self.kind == "simulated":
            if as_of is not None and as_of.tzinfo is None:
                raise ValueError(f"as_of must be timezone-aware, got {as_of!r}")
            clock = (lambda: as_of) if as_of is not None else (lambda: dt.datetime.now(dt.UTC))
            broker = SimulatedBroker(con if con is not None else self.warehouse_path, clock=clock,
                                     starting_cash=self.sim_starting_cash, slippage_bps=self.sim_slippage_bps,
                                     account_id=self.sim_account_id)
            try:
                yield broker
            finally:
                broker.close()
        elif self.kind == "alpaca":
            if as_of is not None:
                raise ValueError("as_of (a replay clock) only applies to the simulated broker; Alpaca keeps its own clock")
            yield self.make_alpaca(self.credentials())
        else:
            raise ValueError(f"unknown broker kind {self.kind!r} (expected 'simulated' or 'alpaca')")
