"""The broker protocol and its plain result types.

Money and quantities are floats throughout (whole shares, prices to the cent) so results drop
straight into polars frames; every broker (Alpaca, simulated) returns these types and raises these
errors, so the engine never sees a vendor object.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

# Order statuses that will not change any more (Alpaca's names).
TERMINAL_STATUSES = frozenset({"filled", "canceled", "expired", "rejected", "replaced", "done_for_day",
                               "stopped", "suspended"})
OPEN_STATUSES = frozenset({"new", "accepted", "pending_new", "partially_filled", "accepted_for_bidding",
                           "pending_cancel", "pending_replace", "calculated", "held"})


class BrokerError(RuntimeError):
    """A broker call that failed; the message never carries credentials."""

    def __init__(self, message: str, *, status_code: int | None = None, code: int | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.code = code


class DuplicateClientOrderIdError(BrokerError):
    """422 40010001: an order with this client_order_id already exists (it was submitted before)."""


class OrderRejectedError(BrokerError):
    """The broker refused the order outright (403 buying power, 422 validation, unknown symbol)."""


class TransientBrokerError(BrokerError):
    """5xx, timeout or rate limit after retries: the request may or may not have been applied."""


@dataclass(frozen=True)
class Account:
    account_id: str
    status: str
    currency: str
    cash: float
    buying_power: float
    equity: float
    portfolio_value: float
    trading_blocked: bool
    account_blocked: bool


@dataclass(frozen=True)
class SessionChange:
    """The account's equity at the close of `session` and at the close of the session before it."""

    session: dt.date
    equity_before: float
    equity_after: float

    @property
    def change(self) -> float:
        return self.equity_after / self.equity_before - 1.0 if self.equity_before > 0 else math.nan


@dataclass(frozen=True)
class Position:
    symbol: str
    qty: float
    avg_entry_price: float
    market_value: float
    current_price: float


@dataclass(frozen=True)
class Clock:
    timestamp: dt.datetime  # tz-aware
    is_open: bool
    next_open: dt.datetime
    next_close: dt.datetime


@dataclass(frozen=True)
class AssetInfo:
    symbol: str
    tradable: bool
    status: str  # "active" | "inactive"
    fractionable: bool = False


@dataclass(frozen=True)
class OrderRequest:
    symbol: str
    qty: float
    side: str  # "buy" | "sell"
    time_in_force: str  # "day" | "opg" | ...
    client_order_id: str
    type: str = "market"

    def __post_init__(self) -> None:
        if self.side not in {"buy", "sell"}:
            raise ValueError(f"order {self.client_order_id}: side must be 'buy' or 'sell', got {self.side!r}")
        if not self.qty > 0 or self.qty != int(self.qty):
            raise ValueError(f"order {self.client_order_id} ({self.symbol}): qty must be a positive whole "
                             f"number of shares, got {self.qty!r}")
        if len(self.client_order_id) > 128:
            raise ValueError(f"client_order_id longer than 128 characters: {self.client_order_id!r}")


@dataclass(frozen=True)
class OrderState:
    id: str
    client_order_id: str
    symbol: str
    side: str
    qty: float
    type: str
    time_in_force: str
    status: str
    filled_qty: float
    filled_avg_price: float | None
    submitted_at: dt.datetime | None
    filled_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    reason: str | None = None  # why a simulated order was rejected / expired

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@runtime_checkable
class Broker(Protocol):
    """What the execution engine needs from a broker."""

    is_live: bool
    account_id: str

    def account(self) -> Account: ...

    def positions(self) -> list[Position]: ...

    def clock(self) -> Clock: ...

    def asset(self, symbol: str) -> AssetInfo | None:
        """None when the broker does not know the symbol."""
        ...

    def latest_price(self, symbol: str) -> float | None: ...

    def latest_prices(self, symbols: list[str]) -> dict[str, float]:
        """Symbols without a price are absent from the result."""
        ...

    def split_ratios(self, symbols: list[str], after: dt.date, through: dt.date) -> dict[str, float]:
        """New shares per old share of the splits with an ex-date in (after, through] that the broker knows
        of now (forward > 1, reverse < 1); symbols without one are absent."""
        ...

    def last_session_change(self) -> SessionChange | None:
        """The account's equity at the last complete session's close and the close before it (the daily-loss
        kill switch); None while the account has no two closes."""
        ...

    def submit(self, order: OrderRequest) -> OrderState:
        """Raises DuplicateClientOrderIdError when the client id was used before."""
        ...

    def order_by_client_id(self, client_order_id: str) -> OrderState | None: ...

    def orders(self, status: str = "all", after: dt.datetime | None = None,
               symbols: list[str] | None = None) -> list[OrderState]: ...

    def cancel_all(self) -> list[str]:
        """Cancel every open order; returns the ids of the orders asked to cancel."""
        ...

    def close_all(self) -> list[str]:
        """Cancel open orders and liquidate every position; returns the symbols being closed."""
        ...
