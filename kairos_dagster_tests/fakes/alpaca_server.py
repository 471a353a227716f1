"""A stateful fake of the Alpaca trading and market-data APIs on 127.0.0.1, for the real alpaca-py.

    with FakeAlpaca(prices={"AAPL": 190.0}) as fake:
        client = TradingClient("key", "secret", url_override=fake.base_url)

Serves /v2 account, positions, clock, assets/{symbol}, orders (POST/GET, by client id, DELETE 207),
DELETE positions and the data endpoints /v2/stocks/trades/latest and /v2/stocks/snapshots, with
numbers as strings. It checks the auth headers, enforces client_order_id uniqueness (422 40010001),
buying power and no-shorting (403 40310000), and OPG timing against its own clock. Fill behaviour
per symbol ("fill" | "partial" | "none" | "reject" | "expire"); faults are injected by queueing them
with `inject(...)`; `calls` counts requests per (method, route).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse
from zoneinfo import ZoneInfo

NY = ZoneInfo("America/New_York")


@dataclass
class Fault:
    method: str  # "GET" | "POST" | "DELETE" | "*"
    route: str  # e.g. "/v2/orders", "/v2/account", "*"
    kind: str  # "429" | "500" | "504_after_accept" | "timeout_after_accept" | "timeout"
    times: int = 1
    delay: float = 1.0  # seconds, for timeouts


def _s(x: float | None) -> str | None:
    return None if x is None else f"{x:.10g}"


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


class FakeAlpaca:
    def __init__(self, *, prices: dict[str, float] | None = None, cash: float = 100_000.0,
                 positions: dict[str, float] | None = None, api_key: str = "PKTESTKEY",
                 secret_key: str = "fake-secret-value", now: dt.datetime | None = None,
                 non_tradable: set[str] | None = None) -> None:
        self.api_key, self.secret_key = api_key, secret_key
        self.account_id = "a1b2c3d4-0000-4000-8000-000000000001"
        self.prices: dict[str, float] = dict(prices or {})
        self.cash = cash
        self.positions: dict[str, dict[str, float]] = {
            s: {"qty": q, "avg_entry_price": self.prices.get(s, 100.0)} for s, q in (positions or {}).items()}
        self.non_tradable = set(non_tradable or ())
        self.now = now or dt.datetime(2026, 1, 16, 10, 0, tzinfo=NY)
        self.fill_mode: dict[str, str] = {}
        self.default_fill = "fill"
        self.partial_fraction = 0.5
        self.fill_slippage = 0.0  # fraction added to buy fills / taken from sell fills
        self.trading_blocked = False
        self.orders: list[dict[str, Any]] = []
        self.calls: Counter[tuple[str, str]] = Counter()
        self.post_attempts: Counter[str] = Counter()  # client_order_id -> POSTs received
        self.faults: list[Fault] = []
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> FakeAlpaca:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "use FakeAlpaca as a context manager"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def inject(self, method: str, route: str, kind: str, times: int = 1, delay: float = 1.0) -> None:
        with self._lock:
            self.faults.append(Fault(method, route, kind, times, delay))

    def set_price(self, symbol: str, price: float) -> None:
        with self._lock:
            self.prices[symbol] = price

    def orders_for(self, client_order_id: str) -> list[dict[str, Any]]:
        return [o for o in self.orders if o["client_order_id"] == client_order_id]

    # ---------------------------------------------------------------- state helpers
    def _is_open(self) -> bool:
        n = self.now.astimezone(NY)
        return n.weekday() < 5 and dt.time(9, 30) <= n.time() < dt.time(16, 0)

    def _next_weekday_at(self, t: dt.time, after: dt.datetime) -> dt.datetime:
        d = after.astimezone(NY).date()
        cand = dt.datetime.combine(d, t, tzinfo=NY)
        while cand <= after or cand.weekday() >= 5:
            d += dt.timedelta(days=1)
            cand = dt.datetime.combine(d, t, tzinfo=NY)
        return cand

    def _reserved_buys(self) -> float:
        return sum((o["_qty"] - o["_filled"]) * self.prices.get(o["symbol"], 0.0) for o in self.orders
                   if o["side"] == "buy" and o["status"] in {"new", "accepted", "partially_filled"})

    def _buying_power(self) -> float:
        return self.cash - self._reserved_buys()

    def _equity(self) -> float:
        return self.cash + sum(p["qty"] * self.prices.get(s, p["avg_entry_price"]) for s, p in self.positions.items())

    def _fill(self, o: dict[str, Any], qty: float) -> None:
        px = self.prices[o["symbol"]] * (1 + self.fill_slippage if o["side"] == "buy" else 1 - self.fill_slippage)
        sign = 1 if o["side"] == "buy" else -1
        pos = self.positions.setdefault(o["symbol"], {"qty": 0.0, "avg_entry_price": px})
        if sign > 0:
            pos["avg_entry_price"] = (pos["avg_entry_price"] * pos["qty"] + px * qty) / (pos["qty"] + qty)
        pos["qty"] += sign * qty
        if pos["qty"] == 0:
            del self.positions[o["symbol"]]
        self.cash -= sign * qty * px
        prev = o["_filled"]
        o["_avg"] = ((o["_avg"] or 0.0) * prev + px * qty) / (prev + qty)
        o["_filled"] = prev + qty
        o["filled_at"] = _iso(self.now)
        o["status"] = "filled" if o["_filled"] >= o["_qty"] else "partially_filled"
        o["updated_at"] = _iso(self.now)

    def _apply_fill_mode(self, o: dict[str, Any]) -> None:
        mode = self.fill_mode.get(o["symbol"], self.default_fill)
        if mode == "fill":
            self._fill(o, o["_qty"])
        elif mode == "partial":
            self._fill(o, max(1.0, float(int(o["_qty"] * self.partial_fraction))))
        elif mode == "reject":
            o["status"], o["failed_at"] = "rejected", _iso(self.now)
        elif mode == "expire":
            o["status"], o["expired_at"] = "expired", _iso(self.now)
        # "none": stays new

    def run_open(self) -> None:
        """The opening auction: OPG orders get their fill mode (they wait until then)."""
        with self._lock:
            for o in self.orders:
                if o["time_in_force"] == "opg" and o["status"] in {"new", "accepted"}:
                    self._apply_fill_mode(o)

    def _order_json(self, o: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in o.items() if not k.startswith("_")}
        out["qty"], out["filled_qty"] = _s(o["_qty"]), _s(o["_filled"])
        out["filled_avg_price"] = _s(o["_avg"])
        return out

    # ---------------------------------------------------------------- routes
    def _account(self) -> tuple[int, Any]:
        eq = self._equity()
        lmv = eq - self.cash
        return 200, {
            "id": self.account_id, "account_number": "PA3TESTFAKE", "status": "ACTIVE", "crypto_status": "ACTIVE",
            "currency": "USD", "cash": _s(self.cash), "buying_power": _s(self._buying_power()),
            "regt_buying_power": _s(self._buying_power()), "daytrading_buying_power": "0",
            "non_marginable_buying_power": _s(self._buying_power()), "portfolio_value": _s(eq), "equity": _s(eq),
            "last_equity": _s(eq), "long_market_value": _s(lmv), "short_market_value": "0", "multiplier": "1",
            "initial_margin": "0", "maintenance_margin": "0", "last_maintenance_margin": "0", "sma": "0",
            "pattern_day_trader": False, "trading_blocked": self.trading_blocked, "account_blocked": False,
            "transfers_blocked": False, "trade_suspended_by_user": False, "shorting_enabled": False,
            "daytrade_count": 0, "accrued_fees": "0", "pending_transfer_in": "0",
            "created_at": "2024-01-02T15:00:00Z"}

    def _position_json(self, s: str, p: dict[str, float]) -> dict[str, Any]:
        px = self.prices.get(s, p["avg_entry_price"])
        return {"asset_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, s)), "symbol": s, "exchange": "NASDAQ",
                "asset_class": "us_equity", "asset_marginable": True, "avg_entry_price": _s(p["avg_entry_price"]),
                "qty": _s(p["qty"]), "qty_available": _s(p["qty"]), "side": "long",
                "market_value": _s(p["qty"] * px), "cost_basis": _s(p["qty"] * p["avg_entry_price"]),
                "unrealized_pl": _s(p["qty"] * (px - p["avg_entry_price"])), "unrealized_plpc": "0",
                "unrealized_intraday_pl": "0", "unrealized_intraday_plpc": "0", "current_price": _s(px),
                "lastday_price": _s(px), "change_today": "0"}

    def _asset(self, symbol: str) -> tuple[int, Any]:
        if symbol not in self.prices:
            return 404, {"code": 40410000, "message": "asset not found"}
        return 200, {"id": str(uuid.uuid5(uuid.NAMESPACE_DNS, symbol)), "class": "us_equity", "exchange": "NASDAQ",
                     "symbol": symbol, "name": f"{symbol} Inc", "status": "active",
                     "tradable": symbol not in self.non_tradable, "marginable": True, "shortable": False,
                     "easy_to_borrow": False, "fractionable": True, "attributes": []}

    def _submit(self, body: dict[str, Any]) -> tuple[int, Any]:
        cid = body.get("client_order_id") or str(uuid.uuid4())
        self.post_attempts[cid] += 1
        if any(o["client_order_id"] == cid for o in self.orders):
            return 422, {"code": 40010001, "message": "client_order_id must be unique"}
        sym, side, tif = body.get("symbol"), body.get("side"), body.get("time_in_force")
        if sym not in self.prices:
            return 422, {"code": 42210000, "message": f'asset "{sym}" not found'}
        if sym in self.non_tradable:
            return 422, {"code": 42210000, "message": f"asset {sym} is not tradable"}
        if self.trading_blocked:
            return 403, {"code": 40310000, "message": "trading is blocked for this account"}
        try:
            qty = float(body["qty"])
        except (KeyError, TypeError, ValueError):
            return 422, {"code": 40010001, "message": "qty is required"}
        if tif == "opg":
            t = self.now.astimezone(NY).time()
            if dt.time(9, 28) <= t < dt.time(19, 0):
                return 422, {"code": 42210000,
                             "message": "opg orders must be submitted before 9:28am or after 7:00pm ET"}
        if side == "buy" and qty * self.prices[sym] > self._buying_power():
            return 403, {"code": 40310000, "message": "insufficient buying power"}
        if side == "sell" and qty > self.positions.get(sym, {"qty": 0.0})["qty"]:
            return 403, {"code": 40310000, "message": f"insufficient qty available for order (requested: {qty})"}
        now = _iso(self.now)
        o = {"id": str(uuid.uuid4()), "client_order_id": cid, "created_at": now, "updated_at": now,
             "submitted_at": now, "filled_at": None, "expired_at": None, "canceled_at": None, "failed_at": None,
             "replaced_at": None, "replaced_by": None, "replaces": None,
             "asset_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, sym)), "symbol": sym, "asset_class": "us_equity",
             "notional": None, "order_class": "simple", "order_type": "market", "type": "market",
             "side": side, "position_intent": "buy_to_open" if side == "buy" else "sell_to_close",
             "time_in_force": tif, "limit_price": None, "stop_price": None, "status": "accepted",
             "extended_hours": False, "legs": None, "trail_percent": None, "trail_price": None, "hwm": None,
             "_qty": qty, "_filled": 0.0, "_avg": None}
        self.orders.append(o)
        if tif != "opg":
            o["status"] = "new"
            self._apply_fill_mode(o)
        return 200, self._order_json(o)

    def _list_orders(self, q: dict[str, str]) -> tuple[int, Any]:
        status = q.get("status", "open")
        limit = min(int(q.get("limit", "50")), 500)
        syms = set(q["symbols"].split(",")) if q.get("symbols") else None
        after = dt.datetime.fromisoformat(q["after"].replace("Z", "+00:00")) if q.get("after") else None
        out = []
        for o in self.orders:
            is_open = o["status"] in {"new", "accepted", "partially_filled", "pending_new"}
            if (status == "open" and not is_open) or (status == "closed" and is_open):
                continue
            if syms and o["symbol"] not in syms:
                continue
            if after and dt.datetime.fromisoformat(o["submitted_at"].replace("Z", "+00:00")) <= after:
                continue
            out.append(self._order_json(o))
        return 200, list(reversed(out))[:limit]

    def _cancel_all(self) -> tuple[int, Any]:
        out = []
        for o in self.orders:
            if o["status"] in {"new", "accepted", "partially_filled", "pending_new"}:
                o["status"], o["canceled_at"] = "canceled", _iso(self.now)
                out.append({"id": o["id"], "status": 200, "body": self._order_json(o)})
        return 207, out

    def _close_all(self, q: dict[str, str]) -> tuple[int, Any]:
        if q.get("cancel_orders") == "true":
            self._cancel_all()
        out = []
        for s, p in list(self.positions.items()):
            cid = f"close-{s}-{uuid.uuid4().hex[:8]}"
            o = {**self._submit({"symbol": s, "qty": p["qty"], "side": "sell", "time_in_force": "day",
                                 "client_order_id": cid})[1]}
            out.append({"symbol": s, "status": 200, "body": o})
        return 207, out

    def _latest_trades(self, q: dict[str, str]) -> tuple[int, Any]:
        syms = [s for s in q.get("symbols", "").split(",") if s]
        t = _iso(self.now)
        return 200, {"trades": {s: {"t": t, "x": "V", "p": self.prices[s], "s": 100, "c": ["@"], "i": 1, "z": "C"}
                                for s in syms if s in self.prices}}

    def _snapshots(self, q: dict[str, str]) -> tuple[int, Any]:
        syms = [s for s in q.get("symbols", "").split(",") if s]
        t = _iso(self.now)
        out = {}
        for s in syms:
            if s not in self.prices:
                continue
            p = self.prices[s]
            bar = {"t": t, "o": p, "h": p, "l": p, "c": p, "v": 1000, "n": 10, "vw": p}
            out[s] = {"latestTrade": {"t": t, "x": "V", "p": p, "s": 100, "c": ["@"], "i": 1, "z": "C"},
                      "latestQuote": {"t": t, "ax": "V", "ap": p, "as": 1, "bx": "V", "bp": p, "bs": 1,
                                      "c": ["R"], "z": "C"},
                      "minuteBar": bar, "dailyBar": bar, "prevDailyBar": bar}
        return 200, out

    def route(self, method: str, path: str, q: dict[str, str], body: dict[str, Any] | None) -> tuple[int, Any]:
        if method == "GET" and path == "/v2/account":
            return self._account()
        if method == "GET" and path == "/v2/positions":
            return 200, [self._position_json(s, p) for s, p in sorted(self.positions.items())]
        if method == "DELETE" and path == "/v2/positions":
            return self._close_all(q)
        if method == "GET" and path == "/v2/clock":
            n = self.now
            return 200, {"timestamp": n.astimezone(NY).isoformat(), "is_open": self._is_open(),
                         "next_open": self._next_weekday_at(dt.time(9, 30), n).isoformat(),
                         "next_close": self._next_weekday_at(dt.time(16, 0), n).isoformat()}
        if method == "GET" and path.startswith("/v2/assets/"):
            return self._asset(unquote(path.removeprefix("/v2/assets/")))
        if method == "POST" and path == "/v2/orders":
            return self._submit(body or {})
        if method == "GET" and path == "/v2/orders":
            return self._list_orders(q)
        if method == "DELETE" and path == "/v2/orders":
            return self._cancel_all()
        if method == "GET" and path == "/v2/orders:by_client_order_id":
            found = self.orders_for(q.get("client_order_id", ""))
            if not found:
                return 404, {"code": 40410000, "message": "order not found"}
            return 200, self._order_json(found[0])
        if method == "GET" and path == "/v2/stocks/trades/latest":
            return self._latest_trades(q)
        if method == "GET" and path == "/v2/stocks/snapshots":
            return self._snapshots(q)
        return 404, {"code": 40400000, "message": f"not found: {method} {path}"}

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for f in self.faults:
            if f.times > 0 and f.method in {method, "*"} and f.route in {path, "*"}:
                f.times -= 1
                return f
        return None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def _handle(self, method: str) -> None:
                u = urlparse(self.path)
                path = u.path
                q = {k: v[-1] for k, v in parse_qs(u.query).items()}
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                with fake._lock:
                    fake.calls[(method, path)] += 1
                    if (self.headers.get("APCA-API-KEY-ID") != fake.api_key
                            or self.headers.get("APCA-API-SECRET-KEY") != fake.secret_key):
                        return self._send(401, {"message": "unauthorized"})
                    fault = fake._take_fault(method, path)
                    if fault and fault.kind == "429":
                        return self._send(429, {"code": 42910000, "message": "rate limit exceeded"},
                                          {"X-Ratelimit-Limit": "200", "X-Ratelimit-Remaining": "0",
                                           "X-Ratelimit-Reset": str(int(time.time()) + 1)})
                    if fault and fault.kind == "500":
                        return self._send(500, {"code": 50010000, "message": "internal server error"})
                    if fault and fault.kind == "timeout":
                        delay = fault.delay
                    else:
                        status, payload = fake.route(method, path, q, body)
                        delay = fault.delay if fault and fault.kind == "timeout_after_accept" else 0.0
                        if fault and fault.kind == "504_after_accept":
                            return self._send(504, {"message": "gateway timeout"})
                if delay:
                    time.sleep(delay)  # outside the lock; the client times out first
                    return self._send(504, {"message": "gateway timeout"})
                self._send(status, payload)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        return Handler
