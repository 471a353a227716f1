"""What execution tells the operator: the plan as text, its preview files, the rebalance trades it is
compared with, the picks hash of the stored rebalance, and the verification report."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import polars as pl

from kairos_dagster.broker import engine
from kairos_dagster.broker.approval import picks_content_hash
from kairos_dagster.portfolio.outputs import PICKS_CSV_COLUMNS, picks_csv_frame
from kairos_dagster.warehouse import store
from kairos_dagster.warehouse.summary import markdown_table


class ReportInputError(ValueError):
    """A file the report reads is missing or malformed (named in the message)."""


def default_picks_path(rebalance_dir: str | Path, rebalance_date: dt.date) -> Path:
    """<rebalance_dir>/DATE/picks.csv: where the rebalance wrote the week's picks."""
    return Path(rebalance_dir) / rebalance_date.isoformat() / "picks.csv"

def table_picks(con: duckdb.DuckDBPyConnection, rebalance_date: dt.date) -> pl.DataFrame | None:
    """The rebalance_picks rows of the date (None: no rows)."""
    if not store.table_exists(con, "rebalance_picks"):
        return None
    rows = store.read_window(con, "rebalance_picks", "date", rebalance_date, rebalance_date + dt.timedelta(days=1))
    return rows if rows.height else None


def table_picks_hash(con: duckdb.DuckDBPyConnection, rebalance_date: dt.date) -> tuple[str | None, int]:
    """Hash of the rebalance_picks rows of the date over the picks.csv columns (None: no rows)."""
    if not store.table_exists(con, "rebalance_picks"):
        return None, 0
    rows = store.read_window(con, "rebalance_picks", "date", rebalance_date, rebalance_date + dt.timedelta(days=1))
    if rows.height == 0:
        return None, 0
    return picks_content_hash(picks_csv_frame(rows.select(PICKS_CSV_COLUMNS))), rows.height

def plan_text(plan: engine.ExecutionPlan, broker_desc: str) -> str:
    """The plan as the operator reads it: orders, skips, checks, approval, refusals."""
    o = plan.orders
    lines = [f"Broker: {broker_desc}",
             f"Rebalance {plan.rebalance_date}: {o.height} order(s), {plan.to_send.height} to send, "
             f"{o.height - plan.to_send.height} skipped"]
    if plan.timing:
        lines.append(f"{plan.timing.note} (time_in_force={plan.timing.time_in_force})")
    for r in o.iter_rows(named=True):
        skip = f"  SKIP {r['skip_reason']}" if r["skip_reason"] else ""
        lines.append(f"  {r['side'].upper():4} {r['ticker']:8} {r['qty']:>7} @ {r['price']:>10.2f} "
                     f"= {r['notional']:>12,.2f}  {r['reason']}{skip}")
    lines.append("Checks:")
    lines += [f"  [{'PASS' if c['passed'] else 'FAIL' if c['blocking'] else 'WARN'}] {c['check']}: {c['detail']}"
              for c in plan.checks.iter_rows(named=True)]
    lines.append("Approval: " + "; ".join(plan.approval.reasons))
    if plan.refusals:
        lines.append("REFUSED: " + " | ".join(plan.refusals))
    return "\n".join(lines)

def compare_trades(plan: pl.DataFrame, trades_path: Path) -> pl.DataFrame:
    """Planned orders vs the rebalance's trades.csv (ticker, action, shares): the broker's positions
    are the truth, so differences are shown, not acted on."""
    try:
        trades = pl.read_csv(trades_path, columns=["ticker", "action", "shares"])
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise ReportInputError(f"trades file {trades_path}: {exc}") from None
    t = trades.select(pl.col("ticker").cast(pl.String), side=pl.col("action").str.to_lowercase(),
                      trades_shares=pl.col("shares").cast(pl.Int64).abs())
    p = plan.select("ticker", "side", pl.col("qty").alias("planned_qty"))
    return (t.join(p, on=["ticker", "side"], how="full", coalesce=True)
            .filter(pl.col("trades_shares").fill_null(-1) != pl.col("planned_qty").fill_null(-1)).sort("ticker"))

def write_preview(out_dir: Path, plan: engine.ExecutionPlan, text: str, label: str, now: dt.datetime) -> Path:
    """The plan as execution_<label>_<ts>.csv and .md in `out_dir`; returns the csv."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = now.strftime("%Y%m%dT%H%M%S")
    csv = out_dir / f"execution_{label}_{stamp}.csv"
    plan.orders.write_csv(csv)
    (out_dir / f"execution_{label}_{stamp}.md").write_text(
        f"# Execution {label} for {plan.rebalance_date}\n\n```\n{text}\n```\n\n## Orders\n\n"
        f"{markdown_table(plan.orders, max_rows=500)}\n\n## Checks\n\n{markdown_table(plan.checks, max_rows=50)}\n")
    return csv

def format_report(summary: dict, table: pl.DataFrame) -> str:
    """The verification report in a few lines: counts, fill rate, slippage, one line per alert."""
    slip = "n/a" if summary["slippage_bps"] is None else f"{summary['slippage_bps']:.1f} bps"
    lines = [f"Execution report {summary['rebalance_date']}: {summary['orders']} orders, filled {summary['filled']}, "
             f"partial {summary['partial']}, rejected {summary['rejected']}, unfilled {summary['unfilled']}, "
             f"open {summary['open']}; fill rate {summary['fill_rate']:.1%}, slippage {slip}; "
             f"HIGH alerts {summary['high_alerts']}, MEDIUM alerts {summary['medium_alerts']}"]
    for r in table.filter(pl.col("severity").is_not_null()).iter_rows(named=True):
        lines.append(f"  [{r['severity']}] {r['side']} {r['ticker']} x{r['qty']:g}: {r['outcome']} "
                     f"(filled {r['filled_qty'] or 0:g}) {r['reason'] or ''}".rstrip())
    return "\n".join(lines)
