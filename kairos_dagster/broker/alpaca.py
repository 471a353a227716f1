"""AlpacaBroker: the Broker protocol on alpaca-py, with credentials, rate limiting and error mapping.

Retries: alpaca-py itself retries 429 and 504 (3 times, 3 s apart; `retry_wait_seconds` shortens that
for tests). On top of that this layer (1) spaces every request through a client-side token bucket of
at most 200 requests a minute, (2) retries a 429 that survived the SDK's retries with exponential
backoff (honouring X-Ratelimit-Reset), and (3) maps everything else to BrokerError subclasses.
5xx and timeouts are NOT retried here: for an order they may mean "accepted", so the engine decides
(it reconciles by client_order_id before any re-submission). Every request carries a timeout
(alpaca-py sets none). Messages carry the HTTP status and Alpaca's message, never credentials.

Paper vs live: live only when the base URL is exactly https://api.alpaca.markets. The older SDK
defaulted to live when APCA_API_BASE_URL was unset; here an unset base URL means PAPER (logged), so
forgetting the variable can never place live orders.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests
from alpaca.common.exceptions import APIError
from alpaca.data.enums import DataFeed
from alpaca.data.historical.corporate_actions import CorporateActionsClient
from alpaca.data.historical.stock import StockHistoricalDataClient
from alpaca.data.requests import CorporateActionsRequest, StockLatestTradeRequest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import GetOrdersRequest, GetPortfolioHistoryRequest, MarketOrderRequest

from kairos_dagster.broker.base import (
    Account,
    AssetInfo,
    BrokerError,
    Clock,
    DuplicateClientOrderIdError,
    OrderRejectedError,
    OrderRequest,
    OrderState,
    Position,
    SessionChange,
    TransientBrokerError,
)
from kairos_dagster.constants import NEW_YORK as NY

log = logging.getLogger(__name__)

PAPER_URL = "https://paper-api.alpaca.markets"
LIVE_URL = "https://api.alpaca.markets"
DATA_URL = "https://data.alpaca.markets"
DUPLICATE_CLIENT_ORDER_ID = 40010001
T = TypeVar("T")


class CredentialsError(ValueError):
    """Alpaca credentials that are incomplete (names the variable, never its value)."""


@dataclass(frozen=True)
class AlpacaCredentials:
    api_key: str
    secret_key: str = field(repr=False)
    base_url: str = PAPER_URL
    data_url: str = DATA_URL
    source: str = ""  # which variables they came from, for messages

    @property
    def is_live(self) -> bool:
        return _normalize_url(self.base_url) == LIVE_URL

    def __repr__(self) -> str:
        key = self.api_key[:4] + "…" if len(self.api_key) > 4 else "…"
        return f"AlpacaCredentials(api_key={key!r}, secret_key='***', base_url={self.base_url!r}, live={self.is_live})"

    __str__ = __repr__


def _normalize_url(url: str) -> str:
    u = url.strip().rstrip("/")
    return u.removesuffix("/v2").rstrip("/")


def alpaca_credentials_from_env(env: Mapping[str, str]) -> AlpacaCredentials | None:
    """Credentials from APCA_API_* (older SDK names) or ALPACA_* variables; None when no key is set.

    APCA_* wins when both are set. A missing base URL means paper (see the module docstring).
    """
    for key_var, secret_var, url_var in (("APCA_API_KEY_ID", "APCA_API_SECRET_KEY", "APCA_API_BASE_URL"),
                                         ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "ALPACA_BASE_URL")):
        key = env.get(key_var, "").strip()
        secret = env.get(secret_var, "").strip()
        if not key and not secret:
            continue
        if not key or not secret:
            missing = key_var if not key else secret_var
            raise CredentialsError(f"{missing} is not set but {secret_var if not key else key_var} is; "
                                   f"set both or neither")
        base = env.get(url_var, "").strip()
        if not base:
            log.warning("%s is not set: using PAPER trading (%s); set it to %s to trade live",
                        url_var, PAPER_URL, LIVE_URL)
            base = PAPER_URL
        if not base.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise CredentialsError(f"{url_var} must be an https URL, got {base!r}")
        data = env.get("APCA_API_DATA_URL", "").strip() or env.get("ALPACA_DATA_URL", "").strip() or DATA_URL
        return AlpacaCredentials(key, secret, _normalize_url(base), _normalize_url(data), source=key_var)
    return None


class TokenBucket:
    """Client-side limiter: at most `rate_per_minute` requests a minute (burst up to `capacity`)."""

    def __init__(self, rate_per_minute: float = 200.0, capacity: float | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if rate_per_minute <= 0:
            raise ValueError(f"rate_per_minute must be positive, got {rate_per_minute}")
        self.rate = rate_per_minute / 60.0
        self.capacity = float(capacity if capacity is not None else rate_per_minute)
        self._tokens = self.capacity
        self._clock, self._sleep = clock, sleep
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, sleeping until one is available; returns the seconds waited."""
        waited = 0.0
        with self._lock:
            while True:
                now = self._clock()
                self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= 1.0 - 1e-9:  # tolerance: float rounding must not spin forever
                    self._tokens = max(0.0, self._tokens - 1.0)
                    return waited
                wait = (1.0 - self._tokens) / self.rate
                self._sleep(wait)
                waited += wait


def _f(x: Any) -> float:
    return 0.0 if x is None else float(x)


def _enum(x: Any) -> str:
    return str(getattr(x, "value", x)) if x is not None else ""


def _order_state(o: Any) -> OrderState:
    return OrderState(
        id=str(o.id), client_order_id=o.client_order_id, symbol=o.symbol or "", side=_enum(o.side),
        qty=_f(o.qty), type=_enum(o.order_type or o.type), time_in_force=_enum(o.time_in_force),
        status=_enum(o.status), filled_qty=_f(o.filled_qty),
        filled_avg_price=None if o.filled_avg_price is None else float(o.filled_avg_price),
        submitted_at=o.submitted_at, filled_at=o.filled_at, updated_at=o.updated_at)


def _api_message(e: APIError) -> tuple[int | None, int | None, str]:
    status = e.status_code
    try:
        body = json.loads(str(e))
        return status, body.get("code"), str(body.get("message", ""))
    except (ValueError, TypeError, AttributeError):
        return status, None, str(e)[:200]


class AlpacaBroker:
    """Broker on Alpaca (paper or live by the base URL)."""

    def __init__(self, credentials: AlpacaCredentials, *, timeout_s: float = 15.0,
                 limiter: TokenBucket | None = None, retry_wait_seconds: float | None = None,
                 max_429_retries: int = 3, backoff_base_s: float = 2.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.credentials = credentials
        self.is_live = credentials.is_live
        self._trading = TradingClient(credentials.api_key, credentials.secret_key, paper=not self.is_live,
                                      url_override=credentials.base_url)
        self._data = StockHistoricalDataClient(credentials.api_key, credentials.secret_key,
                                               url_override=credentials.data_url)
        # raw data: the split fields we read (symbol, ex_date, old_rate, new_rate), not the SDK's models
        self._actions = CorporateActionsClient(credentials.api_key, credentials.secret_key, raw_data=True,
                                               url_override=credentials.data_url)
        for client in (self._trading, self._data, self._actions):
            # alpaca-py sends requests without a timeout: a hung connection would hang the run.
            client._session.request = functools.partial(client._session.request, timeout=timeout_s)
            if retry_wait_seconds is not None:  # the SDK's own 429/504 wait (3 s); tests shorten it
                client._retry_wait = retry_wait_seconds
        self._limiter = limiter or TokenBucket(200.0)
        self._max_429 = max_429_retries
        self._backoff = backoff_base_s
        self._sleep = sleep
        self._account_id: str | None = None
        log.info("Alpaca broker: %s trading at %s", "LIVE" if self.is_live else "paper", credentials.base_url)

    def __repr__(self) -> str:
        return f"AlpacaBroker(live={self.is_live}, base_url={self.credentials.base_url!r})"

    # ------------------------------------------------------------ plumbing
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            self._limiter.acquire()
            try:
                return fn()
            except APIError as e:
                status, code, message = _api_message(e)
                if status == 429 and attempt < self._max_429:
                    reset = e.response.headers.get("X-Ratelimit-Reset") if e.response is not None else None
                    wait = self._backoff * (2 ** attempt)
                    if reset and reset.isdigit():
                        wait = max(wait, min(60.0, float(reset) - time.time()))
                    log.warning("alpaca %s: rate limited (429), backing off %.1fs (retry %d/%d)",
                                what, wait, attempt + 1, self._max_429)
                    self._sleep(max(0.0, wait))
                    attempt += 1
                    continue
                text = f"alpaca {what}: HTTP {status} code={code} {message}"
                if status == 422 and code == DUPLICATE_CLIENT_ORDER_ID and "unique" in message:
                    raise DuplicateClientOrderIdError(text, status_code=status, code=code) from None
                if status in (403, 422):
                    raise OrderRejectedError(text, status_code=status, code=code) from None
                if status is None or status == 429 or status >= 500:
                    raise TransientBrokerError(text, status_code=status, code=code) from None
                raise BrokerError(text, status_code=status, code=code) from None
            except (requests.Timeout, requests.ConnectionError) as e:
                raise TransientBrokerError(f"alpaca {what}: {type(e).__name__} (no answer)") from None

    # ------------------------------------------------------------ protocol
    @property
    def account_id(self) -> str:
        if self._account_id is None:
            self._account_id = self.account().account_id
        return self._account_id

    def account(self) -> Account:
        a = self._call("get_account", self._trading.get_account)
        self._account_id = str(a.id)
        return Account(account_id=str(a.id), status=_enum(a.status), currency=a.currency or "USD",
                       cash=_f(a.cash), buying_power=_f(a.buying_power), equity=_f(a.equity),
                       portfolio_value=_f(a.portfolio_value), trading_blocked=bool(a.trading_blocked),
                       account_blocked=bool(a.account_blocked))

    def positions(self) -> list[Position]:
        ps = self._call("get_all_positions", self._trading.get_all_positions)
        return [Position(symbol=p.symbol, qty=_f(p.qty), avg_entry_price=_f(p.avg_entry_price),
                         market_value=_f(p.market_value), current_price=_f(p.current_price)) for p in ps]

    def clock(self) -> Clock:
        c = self._call("get_clock", self._trading.get_clock)
        return Clock(timestamp=c.timestamp, is_open=bool(c.is_open), next_open=c.next_open, next_close=c.next_close)

    def asset(self, symbol: str) -> AssetInfo | None:
        try:
            a = self._call(f"get_asset {symbol}", lambda: self._trading.get_asset(symbol))
        except BrokerError as e:
            if e.status_code == 404:
                return None
            raise
        return AssetInfo(symbol=a.symbol, tradable=bool(a.tradable), status=_enum(a.status),
                         fractionable=bool(a.fractionable))

    def latest_prices(self, symbols: list[str]) -> dict[str, float]:
        if not symbols:
            return {}
        req = StockLatestTradeRequest(symbol_or_symbols=list(symbols), feed=DataFeed.IEX)
        trades = self._call("latest_trades", lambda: self._data.get_stock_latest_trade(req))
        return {s: float(t.price) for s, t in trades.items() if t.price}

    def latest_price(self, symbol: str) -> float | None:
        return self.latest_prices([symbol]).get(symbol)

    def split_ratios(self, symbols: list[str], after: dt.date, through: dt.date) -> dict[str, float]:
        """Alpaca's corporate-actions announcements (forward and reverse splits) with an ex-date in
        (after, through]: new_rate / old_rate, multiplied over several splits of one symbol."""
        if not symbols or through <= after:
            return {}
        req = CorporateActionsRequest(symbols=list(symbols), types=["forward_split", "reverse_split"],
                                      start=after + dt.timedelta(days=1), end=through)
        raw = self._call("corporate_actions", lambda: self._actions.get_corporate_actions(req)) or {}
        out: dict[str, float] = {}
        for kind in ("forward_splits", "reverse_splits"):
            for a in raw.get(kind, []) or []:
                try:
                    ex = dt.date.fromisoformat(str(a["ex_date"])[:10])
                    old, new = float(a["old_rate"]), float(a["new_rate"])
                except (KeyError, TypeError, ValueError) as exc:  # never size orders on a split we cannot read
                    raise BrokerError(f"alpaca corporate_actions: unreadable {kind[:-1]} {a!r}: {exc!r}") from None
                if after < ex <= through and old > 0 and new > 0 and a.get("symbol") in symbols:
                    out[a["symbol"]] = out.get(a["symbol"], 1.0) * new / old
        return out

    def last_session_change(self) -> SessionChange | None:
        """The account's daily portfolio history (the last week): the last two session closes. Today's
        point counts only after 16:00 New York (before that it is the session in progress)."""
        now = self.clock().timestamp.astimezone(NY)
        req = GetPortfolioHistoryRequest(period="1W", timeframe="1D")
        h = self._call("get_portfolio_history", lambda: self._trading.get_portfolio_history(req))
        closes = [(dt.datetime.fromtimestamp(int(t), dt.UTC).astimezone(NY).date(), float(e))
                  for t, e in zip(h.timestamp or [], h.equity or [], strict=False) if e is not None and float(e) > 0]
        done = [(d, e) for d, e in closes if d < now.date() or (d == now.date() and now.time() >= dt.time(16, 0))]
        if len(done) < 2:
            return None
        (_, before), (session, after) = done[-2], done[-1]
        return SessionChange(session=session, equity_before=before, equity_after=after)

    def submit(self, order: OrderRequest) -> OrderState:
        if order.type != "market":
            raise ValueError(f"only market orders are supported, got {order.type!r} for {order.symbol}")
        req = MarketOrderRequest(symbol=order.symbol, qty=order.qty, side=OrderSide(order.side),
                                 time_in_force=TimeInForce(order.time_in_force),
                                 client_order_id=order.client_order_id)
        o = self._call(f"submit_order {order.symbol} {order.client_order_id}",
                       lambda: self._trading.submit_order(req))
        log.info("alpaca order %s %s %s x%s %s -> %s", order.client_order_id, order.side, order.symbol,
                 order.qty, order.time_in_force, _enum(o.status))
        return _order_state(o)

    def order_by_client_id(self, client_order_id: str) -> OrderState | None:
        try:
            o = self._call(f"get_order_by_client_id {client_order_id}",
                           lambda: self._trading.get_order_by_client_id(client_order_id))
        except BrokerError as e:
            if e.status_code == 404:
                return None
            raise
        return _order_state(o)

    def orders(self, status: str = "all", after: dt.datetime | None = None,
               symbols: list[str] | None = None) -> list[OrderState]:
        req = GetOrdersRequest(status=QueryOrderStatus(status), limit=500, after=after, symbols=symbols)
        return [_order_state(o) for o in self._call("get_orders", lambda: self._trading.get_orders(req))]

    def cancel_all(self) -> list[str]:
        res = self._call("cancel_orders", self._trading.cancel_orders)
        return [str(r.id) for r in res]

    def close_all(self) -> list[str]:
        res = self._call("close_all_positions", lambda: self._trading.close_all_positions(cancel_orders=True))
        return [str(r.symbol) for r in res]


