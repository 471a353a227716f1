"""Execution engine: preview, submit exactly once, verify, emergency procedures.

Exactly once: every order has a deterministic client_order_id (account, rebalance date, ticker,
side). Before each submission the engine looks the id up at the broker; a 422 "client_order_id must
be unique" means an earlier attempt (an SDK retry after a 504, or a crashed run) already got through,
and the order is reconciled by lookup; a 5xx/timeout is followed by a lookup before any retry. So a
re-run after a crash never creates a second order. Every state is upserted into `execution_orders`
as soon as it is known, and each run writes outputs/rebalance/DATE/alpaca_orders_<timestamp>.csv.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from kairos_dagster import calendar as cal
from kairos_dagster.broker.approval import (
    ApprovalDecision,
    ApprovalRecord,
    picks_content_hash,
    validate_approval,
)
from kairos_dagster.broker.base import (
    Broker,
    BrokerError,
    DuplicateClientOrderIdError,
    OrderRejectedError,
    OrderRequest,
    OrderState,
    TransientBrokerError,
)
from kairos_dagster.broker.orders import (
    ExecutionRefusedError,
    OrderTiming,
    RiskLimits,
    apply_skips,
    blocking_failures,
    client_order_id,
    order_outcome,
    order_timing,
    plan_orders,
    positions_frame,
    risk_checks,
)
from kairos_dagster.warehouse import store

log = logging.getLogger(__name__)

EXECUTION_ORDERS_SCHEMA: dict[str, Any] = {
    "rebalance_date": pl.Date, "client_order_id": pl.String, "account_id": pl.String, "is_live": pl.Boolean,
    "ticker": pl.String, "side": pl.String, "qty": pl.Float64, "type": pl.String, "time_in_force": pl.String,
    "order_reason": pl.String, "picks_price": pl.Float64, "latest_price": pl.Float64, "status": pl.String,
    "broker_order_id": pl.String, "submitted_at": pl.Datetime("us", "UTC"), "filled_qty": pl.Float64,
    "filled_avg_price": pl.Float64, "reason": pl.String, "updated_at": pl.Datetime("us", "UTC"),
}
_DDL = """CREATE TABLE IF NOT EXISTS execution_orders (
    rebalance_date DATE NOT NULL, client_order_id VARCHAR PRIMARY KEY, account_id VARCHAR, is_live BOOLEAN,
    ticker VARCHAR NOT NULL, side VARCHAR NOT NULL, qty DOUBLE NOT NULL, type VARCHAR, time_in_force VARCHAR,
    order_reason VARCHAR, picks_price DOUBLE, latest_price DOUBLE, status VARCHAR NOT NULL, broker_order_id VARCHAR,
    submitted_at TIMESTAMPTZ, filled_qty DOUBLE, filled_avg_price DOUBLE, reason VARCHAR, updated_at TIMESTAMPTZ)"""
SEVERITY = {"rejected": "HIGH", "submit_error": "HIGH", "unfilled": "HIGH", "partial": "MEDIUM", "open": "LOW"}


@dataclass(frozen=True)
class ExecutionConfig:
    max_gap: float | None = None  # fraction: 0.05 skips orders whose price moved > 5% from the picks price
    intraday: bool = False
    force_moo: bool = False
    limits: RiskLimits = field(default_factory=RiskLimits)
    portfolio_value_override: float | None = None
    auto_paper: bool = False
    submit_attempts: int = 3


@dataclass(frozen=True)
class ExecutionPlan:
    rebalance_date: dt.date
    is_live: bool
    account_id: str
    picks_hash: str
    orders: pl.DataFrame  # plan + latest_price, gap, skip_reason, client_order_id, type, time_in_force
    checks: pl.DataFrame  # check, passed, blocking, detail
    approval: ApprovalDecision
    timing: OrderTiming | None
    refusals: list[str]

    @property
    def can_execute(self) -> bool:
        return not self.refusals

    @property
    def to_send(self) -> pl.DataFrame:
        return self.orders.filter(pl.col("skip_reason").is_null())


@dataclass(frozen=True)
class ExecutionResult:
    plan: ExecutionPlan
    orders: pl.DataFrame  # EXECUTION_ORDERS_SCHEMA rows of this run
    csv_path: Path


def adjust_for_splits(picks: pl.DataFrame, ratios: Mapping[str, float]) -> tuple[pl.DataFrame, dict[str, float]]:
    """Picks re-expressed in shares of the fill day: a split of ratio r (new shares per old) between the
    signal and the fill multiplies the target shares by r (whole shares, rounded down) and divides the
    picks price by r, so the target value is unchanged. Returns the picks and the ratios applied."""
    applied = {t: float(r) for t, r in ratios.items() if r > 0 and abs(r - 1.0) > 1e-9}
    if not applied or picks.height == 0:
        return picks, {}
    shares_col = "shares" if "shares" in picks.columns else "target_shares"
    r = pl.col("ticker").replace_strict(applied, default=1.0, return_dtype=pl.Float64)
    out = picks.with_columns(
        (pl.col(shares_col).cast(pl.Float64) * r + 1e-9).floor().cast(picks.schema[shares_col]).alias(shares_col),
        (pl.col("price").cast(pl.Float64) / r).alias("price"))
    return out, {t: v for t, v in applied.items() if t in set(picks["ticker"].to_list())}


def preview(broker: Broker, picks: pl.DataFrame, rebalance_date: dt.date, *,
            approval: ApprovalRecord | Mapping[str, Any] | None = None, failed_gates: Sequence[str] = (),
            config: ExecutionConfig = ExecutionConfig(), kill_switches: pl.DataFrame | None = None,
            overrides: Mapping[str, str] = {}) -> ExecutionPlan:
    """Plan orders, skips and checks against the broker's current state. Submits nothing.

    `kill_switches`: kill_switches.evaluate's rows (their tripped blocking switches refuse, unless
    overridden); `overrides`: gate or check name -> who overrode it for these picks (`turnover`)."""
    picks_hash = picks_content_hash(picks)  # the approval is bound to the picks as built, before any split
    account = broker.account()
    clock = broker.clock()
    picks, splits = adjust_for_splits(picks, broker.split_ratios(
        picks["ticker"].to_list(), cal.previous_session(rebalance_date), rebalance_date))
    plan = plan_orders(picks, positions_frame(broker.positions()),
                       portfolio_value_override=config.portfolio_value_override)
    tickers = plan["ticker"].to_list()
    assets = {t: broker.asset(t) for t in tickers}  # one call per symbol: Alpaca has no batch asset lookup
    latest = broker.latest_prices(tickers) if (config.max_gap is not None and tickers) else {}
    plan = apply_skips(plan, assets=assets, latest_prices=latest, max_gap=config.max_gap)
    refusals: list[str] = []
    timing: OrderTiming | None = None
    try:
        timing = order_timing(is_live=broker.is_live, now=clock.timestamp, intraday=config.intraday,
                              force_moo=config.force_moo)
    except ExecutionRefusedError as e:
        refusals.append(str(e))
    decision = validate_approval(approval, picks_hash, live=broker.is_live, auto_paper=config.auto_paper,
                                 rebalance_date=rebalance_date)
    if not decision.ok:
        refusals.extend(decision.reasons)
    checks = risk_checks(plan, account, failed_gates=failed_gates, turnover_overridden_by=overrides.get("turnover"),
                         limits=config.limits, portfolio_value_override=config.portfolio_value_override)
    if kill_switches is not None and kill_switches.height:
        checks = pl.concat([checks, kill_switches.select(
            pl.col("switch").alias("check"),
            (~pl.col("tripped") | pl.col("overridden_by").is_not_null()).alias("passed"),
            pl.col("blocking"),
            (pl.lit("kill switch: ") + pl.col("detail")
             + pl.when(pl.col("tripped") & pl.col("overridden_by").is_null() & pl.col("blocking"))
             .then(pl.lit("; record `kairos override --gate ") + pl.col("switch") + pl.lit("` to trade anyway"))
             .otherwise(pl.lit(""))).alias("detail"))])
    refusals.extend(blocking_failures(checks))
    if splits:
        checks = pl.concat([checks, pl.DataFrame([(
            "splits_since_signal", True, False,
            "target shares and prices re-expressed for splits between the signal and the fill: "
            + ", ".join(f"{t} x{r:g}" for t, r in sorted(splits.items())))], orient="row", schema=checks.schema)])
    acct = account.account_id
    cids = [client_order_id(acct, rebalance_date, t, s) for t, s in zip(plan["ticker"], plan["side"], strict=True)]
    plan = plan.with_columns(client_order_id=pl.Series(cids, dtype=pl.String), type=pl.lit("market"),
                             time_in_force=pl.lit(timing.time_in_force if timing else None, pl.String))
    if timing:
        log.info("%s", timing.note)
    return ExecutionPlan(rebalance_date, broker.is_live, acct, picks_hash, plan, checks, decision, timing, refusals)


def _submit_once(broker: Broker, req: OrderRequest, attempts: int) -> tuple[OrderState | None, str, str]:
    """Returns (state, status_if_no_state, note). Looks the id up before every attempt."""
    last = ""
    for attempt in range(1, attempts + 1):
        try:
            existing = broker.order_by_client_id(req.client_order_id)
            if existing is not None:
                return existing, existing.status, "already at broker: reconciled by client_order_id"
            return broker.submit(req), "", "submitted"
        except DuplicateClientOrderIdError:
            found = broker.order_by_client_id(req.client_order_id)
            if found is None:
                raise BrokerError(f"{req.client_order_id}: broker says duplicate but lookup finds no order") from None
            return found, found.status, "duplicate on submit (earlier attempt got through): reconciled"
        except OrderRejectedError as e:
            return None, "rejected", str(e)
        except TransientBrokerError as e:
            last = str(e)
            log.warning("order %s attempt %d/%d: %s; will look it up before retrying",
                        req.client_order_id, attempt, attempts, last)
    return None, "submit_error", f"gave up after {attempts} attempts: {last}"


def ensure_execution_table(con: duckdb.DuckDBPyConnection) -> None:
    # DuckLake has no key constraints: there the upsert below keeps client_order_id unique itself
    con.execute(store.table_ddl(con, _DDL))


def _upsert(con: duckdb.DuckDBPyConnection, rows: pl.DataFrame, *, keep_existing_sent: bool = False) -> None:
    """Upsert by client_order_id. Skipped rows never overwrite an order that was actually sent."""
    if rows.height == 0:
        return
    cols = list(EXECUTION_ORDERS_SCHEMA)
    sent_guard = "execution_orders.status IN ('skipped', 'submit_error')"
    if not store.on_lake(con):
        sets = ", ".join(f"{c} = excluded.{c}" for c in cols if c != "client_order_id")
        where = f" WHERE {sent_guard}" if keep_existing_sent else ""
        con.register("_exec_rows", rows.select(cols))
        try:
            con.execute(f"INSERT INTO execution_orders ({', '.join(cols)}) SELECT {', '.join(cols)} FROM _exec_rows "
                        f"ON CONFLICT (client_order_id) DO UPDATE SET {sets}{where}")
        finally:
            con.unregister("_exec_rows")
            store.written(["execution_orders"])  # outside store.transaction: tell the run's read cache
        return
    # DuckLake: the same upsert as an UPDATE of the ids held and an INSERT of the others, in one transaction
    sets = ", ".join(f"{c} = s.{c}" for c in cols if c != "client_order_id")
    where = f" AND {sent_guard}" if keep_existing_sent else ""

    def write() -> None:
        con.execute(f"UPDATE execution_orders SET {sets} FROM _exec_rows s "
                    f"WHERE execution_orders.client_order_id = s.client_order_id{where}")
        con.execute(f"INSERT INTO execution_orders ({', '.join(cols)}) SELECT {', '.join(cols)} FROM _exec_rows s "
                    "WHERE NOT EXISTS (SELECT 1 FROM execution_orders t WHERE t.client_order_id = s.client_order_id)")

    store.atomic(con, "execution_orders: upsert failed", write, {"_exec_rows": rows.select(cols)},
                 tables=["execution_orders"])


def _row(plan: ExecutionPlan, o: dict[str, Any], state: OrderState | None, status: str, reason: str | None,
         now: dt.datetime) -> dict[str, Any]:
    return {
        "rebalance_date": plan.rebalance_date, "client_order_id": o["client_order_id"], "account_id": plan.account_id,
        "is_live": plan.is_live, "ticker": o["ticker"], "side": o["side"], "qty": float(o["qty"]),
        "type": o["type"], "time_in_force": o["time_in_force"], "order_reason": o["reason"],
        "picks_price": o["price"], "latest_price": o.get("latest_price"),
        "status": state.status if state else status, "broker_order_id": state.id if state else None,
        "submitted_at": state.submitted_at if state else None,
        "filled_qty": state.filled_qty if state else 0.0,
        "filled_avg_price": state.filled_avg_price if state else None,
        "reason": (state.reason or reason) if state else reason, "updated_at": now,
    }


def _frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=EXECUTION_ORDERS_SCHEMA)


def execute(broker: Broker, picks: pl.DataFrame, rebalance_date: dt.date, *, con: duckdb.DuckDBPyConnection,
            output_dir: Path, approval: ApprovalRecord | Mapping[str, Any] | None = None,
            failed_gates: Sequence[str] = (), config: ExecutionConfig = ExecutionConfig(),
            now: dt.datetime | None = None, kill_switches: pl.DataFrame | None = None,
            overrides: Mapping[str, str] = {}) -> ExecutionResult:
    """Preview, refuse if anything blocks, then submit each order exactly once (SELLs first)."""
    plan = preview(broker, picks, rebalance_date, approval=approval, failed_gates=failed_gates, config=config,
                   kill_switches=kill_switches, overrides=overrides)
    if plan.refusals:
        raise ExecutionRefusedError(f"execution of {rebalance_date} refused ({'live' if plan.is_live else 'paper'}): "
                                    + " | ".join(plan.refusals))
    now = now or dt.datetime.now(dt.UTC)
    ensure_execution_table(con)
    skipped = [_row(plan, o, None, "skipped", o["skip_reason"], now)
               for o in plan.orders.filter(pl.col("skip_reason").is_not_null()).iter_rows(named=True)]
    _upsert(con, _frame(skipped), keep_existing_sent=True)
    done: list[dict[str, Any]] = []
    for o in plan.to_send.iter_rows(named=True):  # one broker round trip per order, in plan order
        req = OrderRequest(symbol=o["ticker"], qty=float(o["qty"]), side=o["side"],
                           time_in_force=o["time_in_force"], client_order_id=o["client_order_id"])
        state, status, note = _submit_once(broker, req, config.submit_attempts)
        row = _row(plan, o, state, status, note, now)
        _upsert(con, _frame([row]))  # persisted before the next order: a crash loses nothing
        done.append(row)
        log.info("order %s %s %s x%d: %s (%s)", o["client_order_id"], o["side"], o["ticker"], o["qty"],
                 row["status"], note)
    result = _frame(skipped + done)
    out_dir = Path(output_dir) / "rebalance" / rebalance_date.isoformat()
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"alpaca_orders_{now.astimezone(dt.UTC):%Y%m%dT%H%M%S}.csv"
    result.write_csv(csv_path)
    return ExecutionResult(plan, result, csv_path)


@dataclass(frozen=True)
class VerifyReport:
    orders: pl.DataFrame  # per order: outcome, severity, fill_rate, slippage_bps
    summary: dict[str, Any]

    @property
    def alerts(self) -> pl.DataFrame:
        return self.orders.filter(pl.col("severity").is_not_null())


def verify(broker: Broker, rebalance_date: dt.date, *, con: duckdb.DuckDBPyConnection,
           now: dt.datetime | None = None) -> VerifyReport:
    """Refresh every order of the rebalance from the broker and report fills, partials, rejections, expiries.

    Severity: rejected / submit error / expired-or-canceled with nothing filled → HIGH; partial fill →
    MEDIUM; still open → LOW. Slippage is in bps against the picks price, positive = cost
    (buys paid more, sells received less).
    """
    ensure_execution_table(con)
    now = now or dt.datetime.now(dt.UTC)
    cur = pl.from_arrow(con.execute(
        "SELECT * FROM execution_orders WHERE rebalance_date = ? AND status <> 'skipped' ORDER BY side <> 'sell', "
        "ticker", [rebalance_date]).to_arrow_table())
    if cur.height == 0:
        raise ValueError(f"execution_orders has no submitted orders for rebalance {rebalance_date}")
    refreshed = []
    for o in cur.iter_rows(named=True):
        state = broker.order_by_client_id(o["client_order_id"]) if o["status"] != "rejected" else None
        if state is not None:
            o.update(status=state.status, broker_order_id=state.id, submitted_at=state.submitted_at,
                     filled_qty=state.filled_qty, filled_avg_price=state.filled_avg_price,
                     reason=state.reason or o["reason"], updated_at=now)
        refreshed.append(o)
    frame = pl.DataFrame(refreshed, schema=EXECUTION_ORDERS_SCHEMA)
    _upsert(con, frame)
    filled = pl.col("filled_qty").fill_null(0.0)
    sign = pl.when(pl.col("side") == "buy").then(1.0).otherwise(-1.0)
    report = frame.with_columns(outcome=order_outcome()).with_columns(
        severity=pl.col("outcome").replace_strict(SEVERITY, default=None, return_dtype=pl.String),
        fill_rate=filled / pl.col("qty"),
        slippage_bps=sign * (pl.col("filled_avg_price") / pl.col("picks_price") - 1.0) * 1e4,
        filled_notional=filled * pl.col("filled_avg_price"))
    n = report.height
    w = report["filled_notional"].fill_null(0.0)
    summary = {
        "rebalance_date": rebalance_date.isoformat(), "orders": n,
        "filled": int((report["outcome"] == "filled").sum()), "partial": int((report["outcome"] == "partial").sum()),
        "rejected": int(report["outcome"].is_in(["rejected", "submit_error"]).sum()),
        "unfilled": int((report["outcome"] == "unfilled").sum()), "open": int((report["outcome"] == "open").sum()),
        "fill_rate": float(report["filled_qty"].fill_null(0.0).sum() / report["qty"].sum()),
        "slippage_bps": float((report["slippage_bps"].fill_null(0.0) * w).sum() / w.sum()) if w.sum() > 0 else None,
        "high_alerts": int((report["severity"] == "HIGH").sum()),
        "medium_alerts": int((report["severity"] == "MEDIUM").sum()),
    }
    return VerifyReport(report, summary)


def emergency_cancel_all(broker: Broker) -> list[str]:
    """Cancel every open order (runbook §8.5). Returns the ids asked to cancel."""
    ids = broker.cancel_all()
    log.warning("EMERGENCY: cancel all open orders: %d order(s)", len(ids))
    return ids


def emergency_liquidate(broker: Broker, *, confirm: bool) -> list[str]:
    """Cancel open orders and close every position. Refuses unless confirm=True."""
    if confirm is not True:
        raise ExecutionRefusedError("emergency liquidation closes EVERY position at market; pass confirm=True "
                                    "to do it")
    symbols = broker.close_all()
    log.warning("EMERGENCY: liquidating all positions (%s): %s", "LIVE" if broker.is_live else "paper", symbols)
    return symbols
