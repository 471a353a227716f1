"""SimulatedBroker: the offline default, a persistent paper account in the DuckDB warehouse.

Tables (created on first use): sim_account, sim_positions, sim_orders. Market orders fill at the open
of the first XNYS session whose 09:30 New York open is after the submission (so an order sent
before the open fills that day, one sent during or after the session fills the next day) at
the unadjusted open (`open * closeunadj / close`: SEP's OHLC are split-adjusted, orders trade real
prices) with slippage: buys pay open * (1 + bps), sells receive open * (1 - bps). Until that
session's price is in sep_base the order stays open. The clock is injected (tests control time);
every read first fills what has become fillable, so state is always "as of now".

Splits: like a real broker, the account holds shares of the company as it is now. A position's quantity
is expressed as of a session (`basis_date`); when sep_base shows a split after it (the unadjusted over
the split-adjusted close changes by the ratio), the quantity is multiplied by the ratio and the average
price divided by it. An order's quantity is in shares of its submission day: one that fills after a
split fills the adjusted whole number of shares at the unadjusted open.

Ticker changes: like a real broker on the exchange's notice, the account re-keys a held position to the
company's new symbol once the warehouse has recorded the change (`ticker_changes`), and cancels open
orders under the old symbol (they could never fill: prices are now under the new one).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from pathlib import Path

import duckdb

from kairos_dagster import calendar as cal
from kairos_dagster.broker.base import (
    Account,
    AssetInfo,
    BrokerError,
    Clock,
    DuplicateClientOrderIdError,
    OrderRequest,
    OrderState,
    Position,
    SessionChange,
)
from kairos_dagster.constants import NEW_YORK as NY
from kairos_dagster.warehouse import store

OPEN, CLOSE = dt.time(9, 30), dt.time(16, 0)

_DDL = """
CREATE TABLE IF NOT EXISTS sim_account (account_id VARCHAR PRIMARY KEY, cash DOUBLE NOT NULL,
    starting_cash DOUBLE NOT NULL, slippage_bps DOUBLE NOT NULL, created_at TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS sim_positions (account_id VARCHAR, symbol VARCHAR, qty DOUBLE NOT NULL,
    avg_entry_price DOUBLE NOT NULL, PRIMARY KEY (account_id, symbol));
CREATE TABLE IF NOT EXISTS sim_orders (id VARCHAR PRIMARY KEY, account_id VARCHAR NOT NULL,
    client_order_id VARCHAR NOT NULL, symbol VARCHAR NOT NULL, side VARCHAR NOT NULL, qty DOUBLE NOT NULL,
    type VARCHAR NOT NULL, time_in_force VARCHAR NOT NULL, status VARCHAR NOT NULL,
    filled_qty DOUBLE NOT NULL DEFAULT 0, filled_avg_price DOUBLE, submitted_at TIMESTAMPTZ NOT NULL,
    fill_session DATE, filled_at TIMESTAMPTZ, updated_at TIMESTAMPTZ, reason VARCHAR,
    UNIQUE (account_id, client_order_id));
CREATE TABLE IF NOT EXISTS sim_ticker_changes (account_id VARCHAR, recorded_at TIMESTAMP);
ALTER TABLE sim_positions ADD COLUMN IF NOT EXISTS basis_date DATE;
ALTER TABLE sim_orders ADD COLUMN IF NOT EXISTS basis_date DATE;
"""


SPLIT_TOLERANCE = 1e-6  # a ratio within this of 1 is rounding of the adjustment factors, not a split

_ORDER_COLS = ("id, client_order_id, symbol, side, qty, type, time_in_force, status, filled_qty, filled_avg_price, "
               "submitted_at, filled_at, updated_at, reason")


def fill_session_for(now: dt.datetime) -> dt.date:
    """The session whose open is the first one strictly after `now` (New York time)."""
    ny = now.astimezone(NY)
    d = ny.date()
    if cal.is_session(d) and ny.time() < OPEN:
        return d
    return cal.next_session(d)


class SimulatedBroker:
    is_live = False

    def __init__(self, warehouse: str | Path | duckdb.DuckDBPyConnection, *,
                 clock: Callable[[], dt.datetime], starting_cash: float = 100_000.0,
                 slippage_bps: float = 5.0, account_id: str = "sim-paper") -> None:
        if starting_cash <= 0:
            raise ValueError(f"starting_cash must be positive, got {starting_cash}")
        if slippage_bps < 0:
            raise ValueError(f"slippage_bps must be >= 0, got {slippage_bps}")
        self._owns = not isinstance(warehouse, duckdb.DuckDBPyConnection)
        if self._owns:
            self.con = (store.open_lake_connection(str(warehouse)) if store.is_lake(warehouse)
                        else duckdb.connect(str(warehouse)))
        else:
            self.con = warehouse
        self._clock = clock
        self._processed_at: tuple | None = None  # the point _process last brought the account to
        self.account_id = account_id
        # DuckLake has no key constraints: there the uniqueness of client_order_id rests on submit's check
        self.con.execute(store.table_ddl(self.con, _DDL))
        if not store.table_exists(self.con, "sep_base"):
            raise BrokerError("simulated broker needs table sep_base (ticker, date, open, close, closeunadj) in the warehouse")
        row = self.con.execute("SELECT slippage_bps FROM sim_account WHERE account_id = ?", [account_id]).fetchone()
        if row is None:
            self.con.execute("INSERT INTO sim_account VALUES (?, ?, ?, ?, ?)",
                             [account_id, starting_cash, starting_cash, slippage_bps, self._now()])
            self.slippage_bps = slippage_bps
        else:  # an existing account keeps its own terms
            self.slippage_bps = float(row[0])

    def close(self) -> None:
        if self._owns:
            self.con.close()

    def __enter__(self) -> SimulatedBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _now(self) -> dt.datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError(f"simulated broker clock must return an aware datetime, got {now!r}")
        return now.astimezone(NY)

    # ------------------------------------------------------------ fills
    def _apply_ticker_changes(self, now: dt.datetime) -> None:
        """Apply the ticker changes recorded since the account last did, one sync's changes at once."""
        if not store.table_exists(self.con, "ticker_changes"):
            return
        done = self.con.execute("SELECT max(recorded_at) FROM sim_ticker_changes WHERE account_id = ?",
                                [self.account_id]).fetchone()[0]
        batches = self.con.execute(
            "SELECT recorded_at, list(DISTINCT {'old': old_ticker, 'new': new_ticker}) FROM ticker_changes "
            "WHERE recorded_at > coalesce(?::TIMESTAMP, TIMESTAMP '1900-01-01') GROUP BY recorded_at ORDER BY 1",
            [done]).fetchall()
        for recorded_at, pairs in batches:  # one batch per sync that changed symbols: a few a year
            step = {p["old"]: p["new"] for p in pairs}
            case = "CASE symbol " + " ".join("WHEN ? THEN ?" for _ in step) + " END"
            args = [x for kv in step.items() for x in kv]
            self.con.execute(f"UPDATE sim_positions SET symbol = {case} WHERE account_id = ? AND symbol IN "
                             "(SELECT unnest(?))", [*args, self.account_id, list(step)])
            for oid, old in self.con.execute(
                    "SELECT id, symbol FROM sim_orders WHERE account_id = ? AND symbol IN (SELECT unnest(?)) "
                    "AND status IN ('new', 'accepted')", [self.account_id, list(step)]).fetchall():
                self._set(oid, "canceled", at=now,
                          reason=f"{old} changed its symbol to {step[old]}: open orders under {old} canceled")
            self.con.execute("INSERT INTO sim_ticker_changes VALUES (?, ?)", [self.account_id, recorded_at])

    def _process(self) -> None:
        """Re-key positions renamed since, then fill every open order whose fill session has opened and has
        a sep_base open price. Nothing new can fill or split until another open passes, another close becomes
        observable or sep_base gains rows (an order never fills at the instant it is sent), so a read at the
        same point repeats no work: a plan of a hundred orders is a hundred lookups, not a hundred passes
        over the account. (A restatement that rewrites sep_base in place comes with a sync, in another run
        and another broker.)"""
        now = self._now()
        last_open_session = now.date() if (cal.is_session(now.date()) and now.time() >= OPEN) \
            else cal.previous_session(now.date())
        point = (last_open_session, self._price_cutoff(),
                 *self.con.execute("SELECT max(date), count(*) FROM sep_base").fetchone())
        if point == self._processed_at:
            return
        self._apply_ticker_changes(now)
        self._apply_splits()
        due = self.con.execute(
            """SELECT o.id, o.symbol, o.side, o.qty, (s.open * s.closeunadj / s.close)::DOUBLE, o.fill_session,
                      o.basis_date
               FROM sim_orders o
               JOIN sep_base s ON s.ticker = o.symbol AND s.date = o.fill_session
               WHERE o.account_id = ? AND o.status IN ('new', 'accepted') AND o.fill_session <= ?
               ORDER BY o.side = 'buy', o.submitted_at, o.client_order_id""",
            [self.account_id, last_open_session]).fetchall()
        bps = self.slippage_bps / 1e4
        for oid, sym, side, qty, open_px, session, basis in due:  # a handful of orders: a state machine
            ratio = self._split_ratio(sym, basis, session) if basis is not None else 1.0
            qty = float(int(qty * ratio + 1e-9)) if ratio != 1.0 else qty  # whole shares of the company now
            filled_at = dt.datetime.combine(session, OPEN, tzinfo=NY)
            if open_px is None or not open_px > 0:
                self._set(oid, "rejected", reason=f"sep_base has no valid open for {sym} on {session}", at=now)
                continue
            px = open_px * (1 + bps) if side == "buy" else open_px * (1 - bps)
            cash = self.con.execute("SELECT cash FROM sim_account WHERE account_id = ?", [self.account_id]).fetchone()[0]
            pos = self.con.execute("SELECT qty, avg_entry_price FROM sim_positions WHERE account_id = ? AND symbol = ?",
                                   [self.account_id, sym]).fetchone()
            held, avg = (pos or (0.0, 0.0))
            if side == "buy" and qty * px > cash + 1e-9:
                self._set(oid, "rejected", reason=f"insufficient cash at fill: need {qty * px:,.2f}, have {cash:,.2f}",
                          at=now)
                continue
            if side == "sell" and qty > held:
                self._set(oid, "rejected", reason=f"cannot sell {qty:g} {sym}: holding {held:g} (no shorting)", at=now)
                continue
            new_qty = held + qty if side == "buy" else held - qty
            new_avg = (avg * held + px * qty) / new_qty if side == "buy" else avg
            self.con.execute("DELETE FROM sim_positions WHERE account_id = ? AND symbol = ?", [self.account_id, sym])
            if new_qty > 0:
                self.con.execute("INSERT INTO sim_positions (account_id, symbol, qty, avg_entry_price, basis_date) "
                                 "VALUES (?, ?, ?, ?, ?)", [self.account_id, sym, new_qty, new_avg, session])
            self.con.execute("UPDATE sim_account SET cash = cash + ? WHERE account_id = ?",
                             [-qty * px if side == "buy" else qty * px, self.account_id])
            self.con.execute("UPDATE sim_orders SET status = 'filled', qty = ?, filled_qty = ?, filled_avg_price = ?, "
                             "filled_at = ?, updated_at = ?, basis_date = ? WHERE id = ?",
                             [qty, qty, px, filled_at, filled_at, session, oid])
        self._processed_at = point

    def _split_ratio(self, symbol: str, after: dt.date, through: dt.date) -> float:
        """Splits between two sessions of sep_base: the unadjusted/adjusted close ratio of `after` over that of
        the last session on or before `through` (1.0 when there is none or no data)."""
        row = self.con.execute(
            """SELECT arg_max(closeunadj / close, date) FILTER (WHERE date <= ?)::DOUBLE,
                      arg_max(closeunadj / close, date) FILTER (WHERE date <= ?)::DOUBLE
               FROM sep_base WHERE ticker = ? AND date <= ? AND close > 0""", [after, through, symbol, through]).fetchone()
        if row is None or row[0] is None or row[1] is None or not row[1] > 0:
            return 1.0
        ratio = row[0] / row[1]
        return 1.0 if abs(ratio - 1.0) <= SPLIT_TOLERANCE else round(ratio, 6)

    def _apply_splits(self) -> None:
        """Positions whose shares split since their basis session take the ratio (qty x r, average / r)."""
        cutoff = self._price_cutoff()
        rows = self.con.execute(
            """SELECT p.symbol, p.basis_date, max(s.date) FROM sim_positions p JOIN sep_base s ON s.ticker = p.symbol
               WHERE p.account_id = ? AND s.date <= ? GROUP BY ALL""", [self.account_id, cutoff]).fetchall()
        for sym, basis, latest in rows:  # the held names (~75): a state update, not a hot path
            if basis is not None and latest > basis:
                r = self._split_ratio(sym, basis, latest)
                self.con.execute("UPDATE sim_positions SET qty = qty * ?, avg_entry_price = avg_entry_price / ?, "
                                 "basis_date = ? WHERE account_id = ? AND symbol = ?", [r, r, latest, self.account_id, sym])
            elif basis is None:  # a position of an earlier release: its quantity is as of now
                self.con.execute("UPDATE sim_positions SET basis_date = ? WHERE account_id = ? AND symbol = ?",
                                 [latest, self.account_id, sym])

    def split_ratios(self, symbols: list[str], after: dt.date, through: dt.date) -> dict[str, float]:
        if not symbols:
            return {}
        through = min(through, self._price_cutoff())
        rows = self.con.execute(
            """SELECT ticker, arg_max(closeunadj / close, date) FILTER (WHERE date <= $after)::DOUBLE,
                      arg_max(closeunadj / close, date)::DOUBLE
               FROM sep_base WHERE ticker IN (SELECT unnest($symbols)) AND date <= $through
                    AND date >= $after - INTERVAL 14 DAY AND close > 0 GROUP BY ticker""",
            {"symbols": list(symbols), "after": after, "through": through}).fetchall()
        out = {}
        for sym, before, now in rows:  # one row per pick
            if before is not None and now and abs(before / now - 1.0) > SPLIT_TOLERANCE:
                out[sym] = round(before / now, 6)
        return out

    def _set(self, oid: str, status: str, *, reason: str, at: dt.datetime) -> None:
        self.con.execute("UPDATE sim_orders SET status = ?, reason = ?, updated_at = ? WHERE id = ?",
                         [status, reason, at, oid])

    # ------------------------------------------------------------ prices
    def _price_cutoff(self) -> dt.date:
        """The last date whose close is observable now (today's close only after 16:00)."""
        now = self._now()
        return now.date() if now.time() >= CLOSE else now.date() - dt.timedelta(days=1)

    def latest_prices(self, symbols: list[str]) -> dict[str, float]:
        if not symbols:
            return {}
        rows = self.con.execute(
            """SELECT ticker, arg_max(closeunadj::DOUBLE, date) FROM sep_base WHERE ticker IN (SELECT unnest(?))
               AND date <= ? AND closeunadj IS NOT NULL GROUP BY ticker""", [list(symbols), self._price_cutoff()]).fetchall()
        return {t: float(p) for t, p in rows}

    def latest_price(self, symbol: str) -> float | None:
        return self.latest_prices([symbol]).get(symbol)

    # ------------------------------------------------------------ protocol
    def account(self) -> Account:
        self._process()
        cash = self.con.execute("SELECT cash FROM sim_account WHERE account_id = ?", [self.account_id]).fetchone()[0]
        pos = self.positions()
        equity = cash + sum(p.market_value for p in pos)
        open_buys = self.orders("open", symbols=None)
        prices = self.latest_prices(sorted({o.symbol for o in open_buys if o.side == "buy"}))
        reserved = sum(o.qty * prices.get(o.symbol, 0.0) for o in open_buys if o.side == "buy")
        return Account(account_id=self.account_id, status="ACTIVE", currency="USD", cash=cash,
                       buying_power=max(0.0, cash - reserved), equity=equity, portfolio_value=equity,
                       trading_blocked=False, account_blocked=False)

    def last_session_change(self) -> SessionChange | None:
        """Equity at the last observable close against the close before, of the holdings and cash held now
        (the account trades only at the open of a rebalance day, so these are the last session's holdings).
        Each holding moves by its split-adjusted close ratio."""
        self._process()
        cutoff = self._price_cutoff()
        last = self.con.execute("SELECT max(date) FROM sep_base WHERE date <= ?", [cutoff]).fetchone()[0]
        if last is None:
            return None
        before = cal.previous_session(last)
        cash = self.con.execute("SELECT cash FROM sim_account WHERE account_id = ?", [self.account_id]).fetchone()[0]
        # Each holding at its last close on or before each of the two sessions (a delisted name: flat).
        row = self.con.execute(
            """WITH px AS (
                   SELECT p.symbol, p.qty,
                          arg_max(s.closeunadj, s.date) FILTER (WHERE s.date <= $last) AS u1,
                          arg_max(s.close, s.date) FILTER (WHERE s.date <= $last) AS c1,
                          arg_max(s.close, s.date) FILTER (WHERE s.date <= $before) AS c0
                   FROM sim_positions p LEFT JOIN sep_base s ON s.ticker = p.symbol AND s.date <= $last
                   WHERE p.account_id = $account GROUP BY p.symbol, p.qty)
               SELECT count(*), count(*) FILTER (WHERE c0 > 0 AND c1 > 0),
                      coalesce(sum(qty * u1), 0)::DOUBLE, coalesce(sum(qty * u1 * c0 / c1), 0)::DOUBLE FROM px""",
            {"last": last, "before": before, "account": self.account_id}).fetchone()
        held, priced, after_value, before_value = row
        if priced < held:  # a holding never priced by the session before: no honest figure
            return None
        return SessionChange(session=last, equity_before=cash + before_value, equity_after=cash + after_value)

    def positions(self) -> list[Position]:
        self._process()
        rows = self.con.execute("SELECT symbol, qty, avg_entry_price FROM sim_positions WHERE account_id = ? "
                                "ORDER BY symbol", [self.account_id]).fetchall()
        prices = self.latest_prices([r[0] for r in rows])
        out = []
        for sym, qty, avg in rows:
            px = prices.get(sym, avg)
            out.append(Position(symbol=sym, qty=qty, avg_entry_price=avg, market_value=qty * px, current_price=px))
        return out

    def clock(self) -> Clock:
        now = self._now()
        is_open = cal.is_session(now.date()) and OPEN <= now.time() < CLOSE
        nxt = fill_session_for(now)
        close_day = now.date() if (cal.is_session(now.date()) and now.time() < CLOSE) else cal.next_session(now.date())
        return Clock(timestamp=now, is_open=is_open, next_open=dt.datetime.combine(nxt, OPEN, tzinfo=NY),
                     next_close=dt.datetime.combine(close_day, CLOSE, tzinfo=NY))

    def asset(self, symbol: str) -> AssetInfo | None:
        row = self.con.execute("SELECT max(date) FROM sep_base WHERE ticker = ?", [symbol]).fetchone()
        if row is None or row[0] is None:
            return None
        # A ticker whose prices stopped more than 10 days before today is treated as delisted.
        active = row[0] >= self._now().date() - dt.timedelta(days=10)
        return AssetInfo(symbol=symbol, tradable=active, status="active" if active else "inactive")

    def submit(self, order: OrderRequest) -> OrderState:
        self._process()
        exists = self.con.execute("SELECT 1 FROM sim_orders WHERE account_id = ? AND client_order_id = ?",
                                  [self.account_id, order.client_order_id]).fetchone()
        if exists:
            raise DuplicateClientOrderIdError(f"simulated: client_order_id must be unique: {order.client_order_id}",
                                              status_code=422, code=40010001)
        if order.type != "market":
            raise ValueError(f"simulated broker supports market orders only, got {order.type!r}")
        now = self._now()
        known = self.con.execute("SELECT 1 FROM sep_base WHERE ticker = ? LIMIT 1", [order.symbol]).fetchone()
        status, reason, session = "accepted", None, fill_session_for(now)
        if not known:
            status, reason, session = "rejected", f"unknown ticker {order.symbol!r}: not in sep_base", None
        # the order's shares are those of the latest session priced now: a later split adjusts them at the fill
        basis = self.con.execute("SELECT max(date) FROM sep_base WHERE ticker = ? AND date <= ?",
                                 [order.symbol, self._price_cutoff()]).fetchone()[0]
        self.con.execute(
            "INSERT INTO sim_orders (id, account_id, client_order_id, symbol, side, qty, type, time_in_force, status, "
            "submitted_at, fill_session, updated_at, reason, basis_date) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [str(uuid.uuid4()), self.account_id, order.client_order_id, order.symbol, order.side, order.qty,
             order.type, order.time_in_force, status, now, session, now, reason, basis])
        self._process()
        state = self.order_by_client_id(order.client_order_id)
        assert state is not None
        return state

    def _rows(self, where: str, params: list) -> list[OrderState]:
        rows = self.con.execute(f"SELECT {_ORDER_COLS} FROM sim_orders WHERE account_id = ? AND {where} "
                                "ORDER BY submitted_at, client_order_id", [self.account_id, *params]).fetchall()
        return [OrderState(id=r[0], client_order_id=r[1], symbol=r[2], side=r[3], qty=r[4], type=r[5],
                           time_in_force=r[6], status=r[7], filled_qty=r[8], filled_avg_price=r[9],
                           submitted_at=r[10], filled_at=r[11], updated_at=r[12], reason=r[13]) for r in rows]

    def order_by_client_id(self, client_order_id: str) -> OrderState | None:
        self._process()
        found = self._rows("client_order_id = ?", [client_order_id])
        return found[0] if found else None

    def orders(self, status: str = "all", after: dt.datetime | None = None,
               symbols: list[str] | None = None) -> list[OrderState]:
        self._process()
        if status not in {"open", "closed", "all"}:
            raise ValueError(f"status must be open, closed or all, got {status!r}")
        where, params = ["TRUE"], []
        if status == "open":
            where.append("status IN ('new', 'accepted')")
        elif status == "closed":
            where.append("status NOT IN ('new', 'accepted')")
        if after is not None:
            where.append("submitted_at > ?")
            params.append(after)
        if symbols:
            where.append("symbol IN (SELECT unnest(?))")
            params.append(list(symbols))
        return self._rows(" AND ".join(where), params)

    def cancel_all(self) -> list[str]:
        ids = [o.id for o in self.orders("open")]
        self.con.execute("UPDATE sim_orders SET status = 'canceled', updated_at = ?, reason = 'canceled by request' "
                         "WHERE account_id = ? AND status IN ('new', 'accepted')", [self._now(), self.account_id])
        return ids

    def close_all(self) -> list[str]:
        self.cancel_all()
        stamp = self._now().strftime("%Y%m%dT%H%M%S")
        out = []
        for p in self.positions():
            self.submit(OrderRequest(p.symbol, float(int(p.qty)), "sell", "day", f"liquidate-{p.symbol}-{stamp}"))
            out.append(p.symbol)
        return out
