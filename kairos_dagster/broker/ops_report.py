"""The weekly ops report (no dagster import): what an operator reads on Saturday morning, in one HTML file.

`gather` reads the week from the warehouse and the rebalance's output files; the Dagster side (the week's
runs and the failed or warned asset checks) comes from the instance and is passed in. `render_html` writes
the self-contained page (pictures as PNG data URIs, backtest/report's helpers): the week's runs, data
freshness per table, failed and warned checks and gates, the picks against their sector caps, the trades
and their execution, performance (the week, the year to date and since inception, against the benchmarks
and the backtest, with a chart), the kill-switch state and the ML alpha's trailing out-of-sample IC.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from kairos_dagster import calendar as cal
from kairos_dagster.broker import kill_switches as ks
from kairos_dagster.broker.orders import order_outcome
from kairos_dagster.portfolio import gate_records
from kairos_dagster.warehouse import store
from kairos_dagster.warehouse.plots import data_uri, figure, pct_formatter, png, sector_weights_png

REPORT_SUBDIR = "reports"
# The dated market and feature tables the rebalance reads: more than one session behind the signal date is
# the seed's "Data >1 day stale" (CRITICAL). Other dated tables are listed without a verdict.
DAILY_PREFIXES = ("sep_base", "daily", "feat_", "universe", "market_returns", "regime_history", "ml_predictions")
IC_WINDOWS = (13, 26)  # weeks of the trailing out-of-sample IC
RUN_COLUMNS = {"run_id": pl.String, "job": pl.String, "status": pl.String, "trigger": pl.String,
               "partitions": pl.String, "started": pl.Datetime("us", "UTC"), "duration_s": pl.Float64}
CHECK_COLUMNS = {"asset": pl.String, "check": pl.String, "passed": pl.Boolean, "severity": pl.String,
                 "description": pl.String, "run_id": pl.String}
SECTIONS = ("runs", "freshness", "checks", "picks", "execution", "performance", "kill_switches", "model_health")


def report_name(rebalance_date: dt.date) -> str:
    return f"ops_report_{rebalance_date:%Y%m%d}.html"


@dataclass(frozen=True)
class OpsWeek:
    week: dt.date
    rebalance_date: dt.date
    signal_date: dt.date
    runs: pl.DataFrame  # RUN_COLUMNS
    checks: pl.DataFrame  # CHECK_COLUMNS: failed or warned evaluations only
    freshness: pl.DataFrame  # table, latest, rows, sessions_behind, daily, stale
    gates: pl.DataFrame  # rebalance_gate_results of the date
    picks: pl.DataFrame  # rebalance_picks of the date
    sectors: pl.DataFrame  # sector, weight, cap, headroom
    summary: dict | None  # portfolio_summary.json
    orders: pl.DataFrame  # execution_orders of the date, with outcome
    performance: pl.DataFrame  # rebalance_performance through the date
    kill_switches: pl.DataFrame  # kill_switch_evaluations of the date
    model_ic: pl.DataFrame  # model_name, date, rank_ic (out of sample) through the signal date

    @property
    def headline(self) -> dict[str, object]:
        """The few numbers the report opens with (also the asset's metadata)."""
        runs_failed = int((self.runs["status"] == "FAILURE").sum()) if self.runs.height else 0
        row = self.performance.filter(pl.col("date") == self.rebalance_date)
        if not row.height:  # this week is measured only once the next rebalance's open is in: the latest one
            row = self.performance.filter(pl.col("held_return").is_not_null()).tail(1)
        sent = self.orders.filter(pl.col("outcome") != "skipped") if self.orders.height else self.orders
        return {
            "runs": self.runs.height, "runs_failed": runs_failed,
            "checks_failed_or_warned": self.checks.height,
            "gates_failed": int((~self.gates["passed"]).sum()) if self.gates.height else 0,
            "stale_tables": int(self.freshness["stale"].sum()) if self.freshness.height else 0,
            "positions": self.picks.height,
            "orders": sent.height,
            "orders_skipped": self.orders.height - sent.height,
            "orders_not_filled": int((sent["outcome"] != "filled").sum()) if sent.height else 0,
            "kill_switches_tripped": int(self.kill_switches["tripped"].sum()) if self.kill_switches.height else 0,
            "week_status": (f"{row['status'][0]} ({row['date'][0]})" if row.height else "not measured yet"),
            "week_return": row["held_return"][0] if row.height else None,
        }


# ------------------------------------------------------------------------------------------- gather
def _read(con: duckdb.DuckDBPyConnection, table: str, sql: str, params: list) -> pl.DataFrame | None:
    return con.execute(sql, params).pl() if store.table_exists(con, table) else None


def freshness(con: duckdb.DuckDBPyConnection, signal_date: dt.date) -> pl.DataFrame:
    """table, latest, rows, sessions_behind (sessions after `latest` through the signal date), daily, stale."""
    tables = [r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.columns WHERE column_name = 'date' AND data_type = 'DATE' "
        "AND table_schema = current_schema() ORDER BY table_name").fetchall()]
    rows = []
    for t in tables:  # one aggregate per table (~40): metadata, not a hot path
        latest, n = con.execute(f"SELECT max(date), count(*) FROM {store.ident(t)}").fetchone()
        behind = len(cal.sessions_between(latest + dt.timedelta(days=1), signal_date)) if latest and latest < signal_date \
            else 0
        daily = t.startswith(DAILY_PREFIXES)
        rows.append({"table": t, "latest": latest, "rows": int(n), "sessions_behind": behind if latest else None,
                     "daily": daily, "stale": bool(daily and (latest is None or behind > 1))})
    return pl.DataFrame(rows, schema={"table": pl.String, "latest": pl.Date, "rows": pl.Int64,
                                      "sessions_behind": pl.Int64, "daily": pl.Boolean, "stale": pl.Boolean})


def gather(con: duckdb.DuckDBPyConnection, week: dt.date, output_dir: Path, *, runs: pl.DataFrame,
           checks: pl.DataFrame) -> OpsWeek:
    """Everything the report shows for the week of `week` (a Monday), read from the warehouse and
    `output_dir/rebalance/DATE/portfolio_summary.json`. ValueError for a week without an NYSE session."""
    reb = cal.rebalance_date_for_week(week)
    if reb is None:
        raise ValueError(f"the week of {week} has no NYSE session: no rebalance to report on")
    signal = cal.signal_date_for(reb)
    picks = _read(con, "rebalance_picks", "SELECT * FROM rebalance_picks WHERE date = ? ORDER BY rank, ticker", [reb])
    picks = picks if picks is not None else pl.DataFrame(schema={"ticker": pl.String, "weight": pl.Float64,
                                                               "sector": pl.String, "rank": pl.Int64})
    summary_path = output_dir / "rebalance" / reb.isoformat() / "portfolio_summary.json"
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{summary_path} is not a readable portfolio_summary.json: {exc}") from None
    if summary is not None and not isinstance(summary, dict):
        raise ValueError(f"{summary_path} holds {type(summary).__name__}, not a portfolio summary object")
    caps = (summary or {}).get("portfolio", {}).get("sector_caps") or {}
    by_sector = picks.group_by("sector").agg(pl.col("weight").sum()) if picks.height else \
        pl.DataFrame(schema={"sector": pl.String, "weight": pl.Float64})
    cap_frame = pl.DataFrame({"sector": list(caps), "cap": [float(v) if v is not None else None for v in caps.values()]},
                             schema={"sector": pl.String, "cap": pl.Float64})
    sectors = (by_sector.join(cap_frame, on="sector", how="full", coalesce=True)
               .with_columns(pl.col("weight").fill_null(0.0))
               .with_columns(headroom=pl.col("cap") - pl.col("weight")).sort("weight", descending=True))
    orders = _read(con, "execution_orders", "SELECT * FROM execution_orders WHERE rebalance_date = ? "
                   "ORDER BY side <> 'sell', ticker", [reb])
    orders = orders.with_columns(outcome=order_outcome()) if orders is not None else pl.DataFrame(
        schema={"ticker": pl.String, "side": pl.String, "qty": pl.Float64, "status": pl.String,
                "filled_qty": pl.Float64, "filled_avg_price": pl.Float64, "picks_price": pl.Float64,
                "reason": pl.String, "outcome": pl.String})
    performance = _read(con, "rebalance_performance", "SELECT * FROM rebalance_performance WHERE date <= ? ORDER BY date",
                        [reb])
    switches = _read(con, ks.TABLE, f"SELECT * FROM {ks.TABLE} WHERE rebalance_date = ? ORDER BY switch", [reb])
    model_ic = _read(con, "ml_metrics", "SELECT model_name, date, value AS rank_ic FROM ml_metrics WHERE split = 'oos' "
                     "AND metric = 'rank_ic' AND feature IS NULL AND date <= ? AND isfinite(value) ORDER BY model_name, "
                     "date", [signal])
    return OpsWeek(
        week=week, rebalance_date=reb, signal_date=signal, runs=runs, checks=checks,
        freshness=freshness(con, signal), gates=gate_records.stored_gates(con, reb), picks=picks, sectors=sectors,
        summary=summary, orders=orders,
        performance=performance if performance is not None else pl.DataFrame(
            schema={"date": pl.Date, "status": pl.String, "held_return": pl.Float64}),
        kill_switches=switches if switches is not None else pl.DataFrame(schema=ks.SCHEMA),
        model_ic=model_ic if model_ic is not None else pl.DataFrame(
            schema={"model_name": pl.String, "date": pl.Date, "rank_ic": pl.Float64}))


# ------------------------------------------------------------------------------------- the numbers
RETURN_COLUMNS = (("held_return", "live (held)"), ("picks_return", "picks at target"),
                  ("backtest_return", "backtest (ml)"), ("market_return", "market"),
                  ("universe_ew_return", "universe_ew"))


def performance_periods(perf: pl.DataFrame, rebalance_date: dt.date) -> pl.DataFrame:
    """period (week, year to date, since inception), then the compounded return of each series over the
    executed weeks of that period (weeks not executed are not counted for any series)."""
    done = perf.filter(pl.col("held_return").is_not_null())
    periods = {"week": done.filter(pl.col("date") == rebalance_date),
               f"year to date ({rebalance_date.year})": done.filter(pl.col("date").dt.year() == rebalance_date.year),
               "since inception": done}
    rows = []
    for name, part in periods.items():
        row: dict[str, object] = {"period": name, "weeks": part.height}
        for col, label in RETURN_COLUMNS:
            vals = part[col] if col in part.columns else pl.Series([], dtype=pl.Float64)
            row[label] = (float((1.0 + vals).product()) - 1.0) if part.height and vals.null_count() == 0 else None
        rows.append(row)
    return pl.DataFrame(rows, schema={"period": pl.String, "weeks": pl.Int64,
                                      **{label: pl.Float64 for _, label in RETURN_COLUMNS}})


def trailing_ic(model_ic: pl.DataFrame) -> pl.DataFrame:
    """model_name, then per window: the mean out-of-sample rank IC of the last N scored weeks and its ICIR."""
    rows = []
    for (model,), part in model_ic.sort("date").group_by("model_name", maintain_order=True):
        row: dict[str, object] = {"model_name": model, "latest": part["date"].max()}
        for n in IC_WINDOWS:
            tail = part.tail(n)["rank_ic"]
            sd = tail.std() if tail.len() > 1 else None
            row[f"ic_{n}w"] = float(tail.mean()) if tail.len() else None
            row[f"icir_{n}w"] = float(tail.mean() / sd) if sd else None
        rows.append(row)
    schema = {"model_name": pl.String, "latest": pl.Date,
              **{k: pl.Float64 for n in IC_WINDOWS for k in (f"ic_{n}w", f"icir_{n}w")}}
    return pl.DataFrame(rows, schema=schema)


# ---------------------------------------------------------------------------------------- pictures
def performance_png(perf: pl.DataFrame) -> bytes | None:
    """Cumulative returns of the executed weeks: live, the backtest and the benchmarks."""
    done = perf.filter(pl.col("held_return").is_not_null()).sort("date")
    if not done.height:
        return None
    fig, (ax,) = figure(height=3.6)
    for col, label in RETURN_COLUMNS:
        if col in done.columns and done[col].null_count() < done.height:
            ax.plot(done["next_date"].to_list(), ((1.0 + done[col].fill_null(0.0)).cum_prod() - 1.0).to_list(),
                    marker="o", markersize=3, label=label, linewidth=2 if col == "held_return" else 1.2)
    ax.axhline(0.0, color="#888", linewidth=0.8)
    ax.set_ylabel("cumulative return")
    ax.yaxis.set_major_formatter(pct_formatter())
    ax.legend(loc="best", fontsize=8)
    ax.set_title("Executed rebalances: live vs backtest and benchmarks")
    fig.autofmt_xdate()
    return png(fig)


def ic_png(model_ic: pl.DataFrame) -> bytes | None:
    if not model_ic.height:
        return None
    fig, (ax,) = figure(height=3.2)
    for (model,), part in model_ic.sort("date").group_by("model_name", maintain_order=True):
        rolling = part["rank_ic"].rolling_mean(window_size=IC_WINDOWS[0], min_samples=1)
        ax.plot(part["date"].to_list(), rolling.to_list(), label=f"{model} ({IC_WINDOWS[0]}-week mean)")
    ax.axhline(0.0, color="#888", linewidth=0.8)
    ax.set_ylabel("out-of-sample rank IC")
    ax.legend(fontsize=8)
    ax.set_title("Model health: trailing out-of-sample IC")
    fig.autofmt_xdate()
    return png(fig)


def pictures(w: OpsWeek) -> dict[str, bytes]:
    out = {"performance_chart": performance_png(w.performance), "sector_chart": sector_weights_png(w.sectors),
           "ic_chart": ic_png(w.model_ic)}
    return {k: v for k, v in out.items() if v is not None}


# ------------------------------------------------------------------------------------------- html
_PCT_COLS = {"weight", "cap", "headroom", "held_return", "picks_return", "market_return", "universe_ew_return",
             "backtest_return", "excess_vs_market", "max_drift", "drift_tolerance", "live (held)", "picks at target",
             "backtest (ml)", "market", "universe_ew", "fill_rate"}


def _cell(col: str, v: object) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return "&ndash;"
        return f"{100 * v:.2f}%" if col in _PCT_COLS else f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, dt.datetime):
        return f"{v:%Y-%m-%d %H:%M}"
    return html.escape(str(v))


def table(frame: pl.DataFrame, columns: list[str] | None = None, *, max_rows: int = 60,
          row_class: str | None = None) -> str:
    if not frame.height:
        return "<p class=none>none</p>"
    cols = [c for c in (columns or frame.columns) if c in frame.columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in frame.head(max_rows).iter_rows(named=True):
        cls = f' class="{r[row_class]}"' if row_class and r.get(row_class) else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_cell(c, r[c])}</td>" for c in cols) + "</tr>")
    more = f"<p class=more>{frame.height - max_rows} more rows not shown</p>" if frame.height > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def _img(pngs: dict[str, bytes], name: str, empty: str) -> str:
    if name not in pngs:
        return f"<p class=none>{html.escape(empty)}</p>"
    return f'<img alt="{name}" src="{data_uri(pngs[name])}">'


def render_html(w: OpsWeek, pngs: dict[str, bytes], *, generated_at: dt.datetime) -> str:
    h = w.headline
    runs = w.runs.with_columns(pl.when(pl.col("status") == "FAILURE").then(pl.lit("bad")).otherwise(None).alias("_c")) \
        if w.runs.height else w.runs
    fresh = w.freshness.with_columns(pl.when(pl.col("stale")).then(pl.lit("bad")).otherwise(None).alias("_c"))
    gates = w.gates.filter(~pl.col("passed")) if w.gates.height else w.gates
    s = w.summary or {}
    port, metrics = s.get("portfolio", {}), s.get("metrics", {})
    turnover = metrics.get("turnover_vs_prior")
    counts = (w.orders.group_by("outcome").len().sort("outcome") if w.orders.height else
              pl.DataFrame(schema={"outcome": pl.String, "len": pl.UInt32}))
    row = w.performance.filter(pl.col("date") == w.rebalance_date)
    shortfall = row["shortfall_bps"][0] if row.height and "shortfall_bps" in row.columns else None
    switches = w.kill_switches.with_columns(
        pl.when(pl.col("tripped") & pl.col("blocking") & pl.col("overridden_by").is_null()).then(pl.lit("bad"))
        .when(pl.col("tripped")).then(pl.lit("warn")).otherwise(None).alias("_c")) if w.kill_switches.height \
        else w.kill_switches
    switch_cols = ["switch", "blocking", "armed", "tripped", "overridden_by", "value", "threshold", "detail",
                   "evaluated_at"]
    ic = trailing_ic(w.model_ic)
    top = w.picks.sort("weight", descending=True).head(15) if w.picks.height else w.picks
    not_filled = w.orders.filter(pl.col("outcome") != "filled") if w.orders.height else w.orders

    def verdict(ok: bool, good: str, bad: str) -> str:
        return f'<span class="{"ok" if ok else "bad"}">{html.escape(good if ok else bad)}</span>'

    cards = [
        ("Runs", verdict(h["runs_failed"] == 0, f"{h['runs']} runs, none failed", f"{h['runs_failed']} of {h['runs']} failed")),
        ("Data", verdict(h["stale_tables"] == 0, "fresh", f"{h['stale_tables']} stale table(s)")),
        ("Checks and gates", verdict(h["checks_failed_or_warned"] + h["gates_failed"] == 0, "all passed",
                                     f"{h['checks_failed_or_warned']} check(s), {h['gates_failed']} gate(s) not passed")),
        ("Execution", verdict(h["orders_not_filled"] == 0, (f"{h['orders']} orders, all filled" if h["orders"] else
                                                            "nothing executed")
                              + (f", {h['orders_skipped']} skipped" if h["orders_skipped"] else ""),
                              f"{h['orders_not_filled']} of {h['orders']} not filled")),
        ("Kill switches", verdict(h["kill_switches_tripped"] == 0, "none tripped",
                                  f"{h['kill_switches_tripped']} tripped")),
        ("Latest measured week", html.escape(f"{h['week_status']}" + (f", {h['week_return']:+.2%}" if h["week_return"] is not None
                                                          else ""))),
    ]
    card_html = "".join(f"<div class=card><div class=label>{html.escape(k)}</div><div>{v}</div></div>" for k, v in cards)
    perf_table = performance_periods(w.performance, w.rebalance_date)
    perf_rows = w.performance.tail(12) if w.performance.height else w.performance
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Kairos ops report {w.rebalance_date}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.82em; margin: 0.4em 0 1.2em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 7px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
tr.bad td {{ background: #fbe3e1; }} tr.warn td {{ background: #fff4d6; }}
.ok {{ color: #1e7b34; font-weight: 600; }} .bad {{ color: #b3261e; font-weight: 600; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 0.6em; }} .card {{ border: 1px solid #ddd; border-radius: 6px;
padding: 0.5em 0.9em; min-width: 150px; }} .label {{ font-size: 0.75em; color: #666; }}
.none, .more {{ color: #777; font-style: italic; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>Kairos ops report: week of {w.week}</h1>
<p>Rebalance {w.rebalance_date} (signal {w.signal_date}); generated {generated_at:%Y-%m-%d %H:%M} UTC.</p>
<div class=cards>{card_html}</div>
<section id="runs"><h2>Runs of the week</h2>{table(runs, list(RUN_COLUMNS), row_class="_c")}</section>
<section id="freshness"><h2>Data freshness</h2>
<p>Latest date per warehouse table against the signal date {w.signal_date}; a market or feature table more than one
session behind is stale (CRITICAL: it blocks the rebalance).</p>
{table(fresh, ["table", "latest", "rows", "sessions_behind", "daily", "stale"], max_rows=200, row_class="_c")}</section>
<section id="checks"><h2>Failed and warned checks and gates</h2>
<h3>Asset checks</h3>{table(w.checks, list(CHECK_COLUMNS))}
<h3>Rebalance gates not passed</h3>{table(gates, ["gate", "blocking", "severity", "message", "evaluated_at"])}</section>
<section id="picks"><h2>The picks</h2>
<p>{port.get("n_positions", w.picks.height)} positions, total weight {_cell("weight", port.get("total_weight"))},
top 5 {_cell("weight", port.get("top_5_weight"))}, estimated volatility {_cell("weight", port.get("estimated_vol"))},
turnover vs the prior week {_cell("weight", turnover)}.</p>
{_img(pngs, "sector_chart", "no picks this week")}
{table(w.sectors, ["sector", "weight", "cap", "headroom"])}
<h3>Top positions</h3>{table(top, ["rank", "ticker", "sector", "weight", "alpha_z", "price", "shares"])}</section>
<section id="execution"><h2>Trades and their execution</h2>
{table(counts.rename({"len": "orders"}))}
<p>Implementation shortfall (fills against the rebalance date's open, notional-weighted):
{"&ndash;" if shortfall is None else f"{shortfall:+.1f} bps"}.</p>
<h3>Orders not filled in full</h3>{table(not_filled, ["side", "ticker", "qty", "status", "outcome", "filled_qty", "reason"])}
</section>
<section id="performance"><h2>Performance</h2>
{table(perf_table)}
{_img(pngs, "performance_chart", "no executed rebalance measured yet")}
<h3>The last rebalances</h3>{table(perf_rows, ["date", "next_date", "status", "held_return", "picks_return",
                                                "backtest_return", "market_return", "excess_vs_market", "shortfall_bps",
                                                "max_drift", "note"])}</section>
<section id="kill_switches"><h2>Kill switches</h2>{table(switches, switch_cols, row_class="_c")}</section>
<section id="model_health"><h2>Model health</h2>
<p>Mean out-of-sample rank IC of each model's last {IC_WINDOWS[0]} and {IC_WINDOWS[1]} scored weeks (labels
realized by the signal date), with its ICIR.</p>
{table(ic)}
{_img(pngs, "ic_chart", "no out-of-sample IC yet")}</section>
</body></html>
"""
