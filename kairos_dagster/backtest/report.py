"""The backtest's pictures and its self-contained HTML report (no dagster): equity curves (log scale),
drawdowns, rolling 52-week Sharpe, returns by year and by regime, turnover and cost per week, and the
capacity curve. Each picture is a PNG (matplotlib's object API, no pyplot: runs execute in worker threads);
the report embeds them as data URIs, so the one file is all an operator needs to open or send.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from kairos_dagster.backtest.costs import TRADING_DAYS
from kairos_dagster.warehouse.plots import data_uri
from kairos_dagster.warehouse.plots import figure as _figure
from kairos_dagster.warehouse.plots import png as _png

ROLLING_SESSIONS = 252  # 52 weeks of sessions for the rolling Sharpe
# Columns of the report's tables and how each reads.
_PCT = {"total_return", "annual_return", "annual_volatility", "max_drawdown", "weekly_hit_rate",
        "avg_weekly_turnover", "annual_cost_drag", "alpha", "tracking_error", "unfilled_share",
        "annual_return_gross"}
SUMMARY_COLUMNS = ("strategy", "annual_return", "annual_volatility", "sharpe", "sortino", "max_drawdown",
                   "max_drawdown_trough", "calmar", "weekly_hit_rate", "avg_weekly_turnover", "annual_cost_drag",
                   "beta", "alpha", "information_ratio", "avg_positions")
CAPACITY_COLUMNS = ("portfolio_value", "sharpe", "sharpe_gross", "annual_return", "annual_cost_drag",
                    "avg_weekly_turnover", "unfilled_share", "sharpe_vs_smallest")


def _by_strategy(daily: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
    return [(name, part) for (name,), part in daily.sort("strategy", "date").group_by("strategy", maintain_order=True)]


def equity_png(daily: pl.DataFrame) -> bytes:
    fig, (ax,) = _figure()
    for name, part in _by_strategy(daily):
        ax.plot(part["date"].to_list(), part["equity"].to_list(), label=name, linewidth=1.2)
    ax.set_yscale("log")
    ax.set_title("Equity, net of costs (log scale)")
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def drawdown_png(daily: pl.DataFrame) -> bytes:
    fig, (ax,) = _figure()
    for name, part in _by_strategy(daily):
        eq = part["equity"].to_numpy()
        ax.plot(part["date"].to_list(), 100 * (eq / np.maximum.accumulate(eq) - 1.0), label=name, linewidth=1.0)
    ax.set_title("Drawdown from the running peak (%)")
    ax.legend(loc="lower left", fontsize=8)
    return _png(fig)


def rolling_sharpe(daily: pl.DataFrame, window: int = ROLLING_SESSIONS) -> pl.DataFrame:
    """strategy, date, rolling_sharpe: the annualized Sharpe of the last `window` sessions' net returns
    (null until a full window has passed)."""
    r = pl.col("ret_net").cast(pl.Float64)
    return daily.sort("strategy", "date").select(
        "strategy", "date",
        (r.rolling_mean(window).over("strategy") / r.rolling_std(window).over("strategy") * math.sqrt(TRADING_DAYS)
         ).alias("rolling_sharpe"))


def rolling_sharpe_png(daily: pl.DataFrame) -> bytes:
    fig, (ax,) = _figure()
    rs = rolling_sharpe(daily).drop_nulls("rolling_sharpe")
    for name, part in _by_strategy(rs):
        ax.plot(part["date"].to_list(), part["rolling_sharpe"].to_list(), label=name, linewidth=1.0)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_title("Rolling 52-week Sharpe (net)" + ("" if rs.height else ": fewer than 52 weeks so far"))
    if rs.height:
        ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def _grouped_bars(ax, frame: pl.DataFrame, group: str, value: str) -> None:
    groups = sorted(set(frame[group].to_list()))
    names = sorted(set(frame["strategy"].to_list()))
    width = 0.8 / max(1, len(names))
    x = np.arange(len(groups))
    for k, name in enumerate(names):
        part = dict(frame.filter(pl.col("strategy") == name).select(group, value).iter_rows())
        ax.bar(x + k * width - 0.4 + width / 2, [np.nan if part.get(g) is None else 100 * part[g] for g in groups], width, label=name)
    ax.set_xticks(x, groups, fontsize=8)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.legend(fontsize=7, ncols=min(len(names), 6))


def returns_by_period_png(stats: pl.DataFrame) -> bytes:
    """Total return of each calendar year, and annualized return in each market regime."""
    fig, (top, bottom) = _figure(height=6.4, rows=2, sharex=False)
    years = stats.filter(pl.col("period").str.contains(r"^\d{4}$"))
    regimes = stats.filter(pl.col("period").str.starts_with("regime:")).with_columns(
        pl.col("period").str.strip_prefix("regime:"))
    _grouped_bars(top, years, "period", "total_return")
    top.set_title("Return by calendar year (%)")
    _grouped_bars(bottom, regimes, "period", "annual_return")
    bottom.set_title("Annualized return by market regime (%)")
    return _png(fig)


def weekly_turnover_cost(daily: pl.DataFrame) -> pl.DataFrame:
    """strategy, week, turnover (one-way, share of equity), cost_bps (cost / equity): per traded week."""
    return (daily.filter(pl.col("strategy") != "market")
            .with_columns(pl.col("date").dt.truncate("1w").alias("week"))
            .group_by("strategy", "week")
            .agg(pl.col("turnover").sum(), (pl.col("cost") / pl.col("equity")).sum().alias("cost_share"))
            .with_columns((pl.col("cost_share") * 1e4).alias("cost_bps")).drop("cost_share").sort("strategy", "week"))


def turnover_cost_png(daily: pl.DataFrame) -> bytes:
    fig, (top, bottom) = _figure(height=6.0, rows=2)
    w = weekly_turnover_cost(daily)
    for (name,), part in w.group_by("strategy", maintain_order=True):
        top.plot(part["week"].to_list(), (100 * part["turnover"]).to_list(), label=name, linewidth=0.9)
        bottom.plot(part["week"].to_list(), part["cost_bps"].to_list(), label=name, linewidth=0.9)
    top.set_title("One-way turnover per week (% of equity)")
    bottom.set_title("Trading cost per week (bps of equity)")
    top.legend(fontsize=7, ncols=5)
    return _png(fig)


def capacity_png(capacity: pl.DataFrame) -> bytes:
    fig, (ax,) = _figure()
    c = capacity.sort("portfolio_value")
    x = c["portfolio_value"].to_list()
    ax.plot(x, c["sharpe"].to_list(), marker="o", label="net Sharpe")
    ax.plot(x, c["sharpe_gross"].to_list(), marker="s", linestyle="--", label="gross Sharpe")
    for v, s, u in c.select("portfolio_value", "sharpe", "unfilled_share").iter_rows():
        if s is not None and u is not None and math.isfinite(u):
            ax.annotate(f"unfilled {100 * u:.1f}%", (v, s), textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("portfolio value ($)")
    ax.set_title(f"Capacity of `{c['strategy'][0] if c.height else 'ml'}`: Sharpe against portfolio size")
    ax.legend(fontsize=8)
    return _png(fig)


def pictures(daily: pl.DataFrame, stats: pl.DataFrame, capacity: pl.DataFrame | None) -> dict[str, bytes]:
    """Every picture of the report, by name (the capacity curve only once the sweep has rows)."""
    out = {"equity_curves": equity_png(daily), "drawdowns": drawdown_png(daily),
           "rolling_sharpe_52w": rolling_sharpe_png(daily), "returns_by_year_and_regime": returns_by_period_png(stats),
           "turnover_and_cost": turnover_cost_png(daily)}
    if capacity is not None and capacity.height:
        out["capacity_curve"] = capacity_png(capacity)
    return out


def _cell(column: str, value: object) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "&ndash;"
    if isinstance(value, float):
        if column in _PCT:
            return f"{100 * value:.2f}%"
        if column == "portfolio_value":
            return f"${value:,.0f}"
        return f"{value:.3f}"
    return html.escape(str(value))


def html_table(frame: pl.DataFrame, columns: Sequence[str]) -> str:
    cols = [c for c in columns if c in frame.columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c, row[c])}</td>" for c in cols) + "</tr>"
                   for row in frame.select(cols).iter_rows(named=True))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_TITLES = {"equity_curves": "Equity curves", "drawdowns": "Drawdowns", "rolling_sharpe_52w": "Rolling 52-week Sharpe",
           "returns_by_year_and_regime": "Returns by year and by regime", "turnover_and_cost": "Turnover and cost",
           "capacity_curve": "Capacity"}


def render_html(stats: pl.DataFrame, pngs: dict[str, bytes], capacity: pl.DataFrame | None, *, config_id: str,
                first: object, last: object, notes: Sequence[str] = ()) -> str:
    """The self-contained report: the full-period table, every picture, the per-year table, the sweep."""
    full = stats.filter(pl.col("period") == "full").sort("sharpe", descending=True, nulls_last=True)
    years = stats.filter(pl.col("period").str.contains(r"^\d{4}$")).sort("period", "strategy")
    sections = [f'<section id="{name}"><h2>{_TITLES.get(name, name)}</h2>'
                f'<img alt="{html.escape(name)}" src="{data_uri(png)}"></section>' for name, png in pngs.items()]
    cap = ("" if capacity is None or not capacity.height else
           f'<section id="capacity_table"><h2>Capacity sweep</h2>{html_table(capacity, CAPACITY_COLUMNS)}</section>')
    note = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Kairos backtest ({html.escape(config_id)})</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>Kairos backtest</h1>
<p>Configuration <code>{html.escape(config_id)}</code>, sessions {html.escape(str(first))} to {html.escape(str(last))}.
Net of costs (half-spread, square-root impact, commission); the live rebalance code replayed week by week.</p>
{f"<ul>{note}</ul>" if note else ""}
<section id="summary"><h2>Full period</h2>{html_table(full, SUMMARY_COLUMNS)}</section>
{"".join(sections)}
<section id="years"><h2>By calendar year</h2>{html_table(years, ("period", *SUMMARY_COLUMNS))}</section>
{cap}
</body></html>
"""


def write_report(folder: Path, name: str, text: str) -> Path:
    """Write the report atomically (a reader never sees half a file)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def report_name(config_id: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_.=+" else "_" for ch in config_id)
    return "backtest_report.html" if config_id == "default" else f"backtest_report_{safe}.html"
