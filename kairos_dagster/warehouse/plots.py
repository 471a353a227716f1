"""Pictures of frames (no dagster): PNG bytes from matplotlib's object API (no pyplot: runs execute in worker
threads), for the reports and the assets' metadata. Each function takes plain polars frames and returns
None when there is nothing to draw, so a caller never shows an empty axis as if it were a result.
"""

from __future__ import annotations

import base64
import io

import polars as pl

DPI = 90


def figure(width: float = 9.0, height: float = 3.8, rows: int = 1, sharex: bool = True):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    axes = fig.subplots(rows, 1, sharex=sharex, squeeze=False)[:, 0]
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig, axes


def png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def data_uri(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


def markdown_image(image: bytes, alt: str) -> str:
    """The picture as Markdown (Dagster's UI renders a base64 image in a Markdown metadata entry)."""
    return f"![{alt}]({data_uri(image)})"


def pct_formatter():
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0, decimals=1)


# ------------------------------------------------------------------------------------------ charts
def sector_weights_png(sectors: pl.DataFrame, title: str = "Sector weights against their caps") -> bytes | None:
    """sector, weight, cap (cap may be null): bars of the weights, a red tick at each cap."""
    if not sectors.height:
        return None
    s = sectors.sort("sector")
    fig, (ax,) = figure(height=3.4)
    x = list(range(s.height))
    ax.bar(x, s["weight"].to_list(), label="weight", color="#3b78b5")
    if "cap" in s.columns and s["cap"].null_count() < s.height:
        ax.scatter(x, s["cap"].to_list(), marker="_", s=400, color="#c0392b", label="cap", zorder=3)
    ax.set_xticks(x, s["sector"].to_list(), rotation=30, ha="right", fontsize=8)
    ax.yaxis.set_major_formatter(pct_formatter())
    ax.legend(fontsize=8)
    ax.set_title(title)
    return png(fig)


def weight_distribution_png(weights: pl.Series, cap: float | None = None,
                            title: str = "Position weights") -> bytes | None:
    w = weights.drop_nulls()
    if not w.len():
        return None
    fig, (ax,) = figure(height=3.0)
    ax.hist(w.to_list(), bins=min(30, max(5, w.len() // 3)), color="#3b78b5")
    if cap is not None:
        ax.axvline(cap, color="#c0392b", linestyle="--", label=f"cap {cap:.1%}")
        ax.legend(fontsize=8)
    ax.xaxis.set_major_formatter(pct_formatter())
    ax.set_xlabel("weight")
    ax.set_ylabel("positions")
    ax.set_title(title)
    return png(fig)


def ic_series_png(ic: pl.DataFrame, factors: list[str] | None = None,
                  title: str = "Rank IC per week and cumulative") -> bytes | None:
    """factor, date, ic: each factor's weekly rank IC (top) and its running sum (bottom)."""
    ic = ic.filter(pl.col("ic").is_not_null())
    if factors is not None:
        ic = ic.filter(pl.col("factor").is_in(factors))
    if not ic.height:
        return None
    fig, (top, bottom) = figure(height=5.2, rows=2)
    for (name,), part in ic.sort("date").group_by("factor", maintain_order=True):
        dates = part["date"].to_list()
        top.plot(dates, part["ic"].to_list(), linewidth=0.8, label=str(name))
        bottom.plot(dates, part["ic"].cum_sum().to_list(), linewidth=1.4, label=str(name))
    top.axhline(0.0, color="#888", linewidth=0.8)
    top.set_ylabel("rank IC")
    top.set_title(title)
    bottom.set_ylabel("cumulative IC")
    bottom.legend(fontsize=7, ncol=2)
    fig.autofmt_xdate()
    return png(fig)


def bars_png(frame: pl.DataFrame, label: str, value: str, title: str, *, horizontal: bool = False,
             percent: bool = False) -> bytes | None:
    f = frame.filter(pl.col(value).is_not_null())
    if not f.height:
        return None
    fig, (ax,) = figure(height=max(3.0, 0.22 * f.height + 1.0) if horizontal else 3.4)
    labels, values = [str(v) for v in f[label].to_list()], f[value].to_list()
    colors = ["#3b78b5" if v >= 0 else "#c0392b" for v in values]
    if horizontal:
        ax.barh(labels[::-1], values[::-1], color=colors[::-1])
        ax.tick_params(axis="y", labelsize=7)
        if percent:
            ax.xaxis.set_major_formatter(pct_formatter())
    else:
        ax.bar(labels, values, color=colors)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        if percent:
            ax.yaxis.set_major_formatter(pct_formatter())
    ax.set_title(title)
    return png(fig)


def regime_timeline_png(regimes: pl.DataFrame, market: pl.DataFrame,
                        title: str = "Regimes over the market's equity curve") -> bytes | None:
    """regimes: date, regime; market: date, mkt_ret. The equity curve with each regime's sessions shaded."""
    m = market.filter(pl.col("mkt_ret").is_not_null()).sort("date")
    r = regimes.filter(pl.col("regime").is_not_null()).sort("date")
    if not m.height or not r.height:
        return None
    m = m.filter(pl.col("date") >= r["date"].min()).with_columns(equity=(1.0 + pl.col("mkt_ret")).cum_prod())
    if not m.height:
        return None
    fig, (ax,) = figure(height=3.6)
    ax.plot(m["date"].to_list(), m["equity"].to_list(), color="#222", linewidth=1.2, label="market")
    names = sorted(r["regime"].unique().to_list())
    palette = ["#d8e9f6", "#fbe3e1", "#fff4d6", "#e3f4e1", "#eadcf4", "#f0f0f0"]
    runs = r.with_columns(block=(pl.col("regime") != pl.col("regime").shift(1)).fill_null(True).cum_sum()) \
        .group_by("block", maintain_order=True).agg(pl.col("regime").first(), pl.col("date").min().alias("start"),
                                                    pl.col("date").max().alias("end"))
    seen: set[str] = set()
    for row in runs.iter_rows(named=True):  # one span per run of equal regimes (a few dozen)
        color = palette[names.index(row["regime"]) % len(palette)]
        ax.axvspan(row["start"], row["end"], color=color, alpha=0.9, linewidth=0,
                   label=row["regime"] if row["regime"] not in seen else None)
        seen.add(row["regime"])
    ax.set_ylabel("market (growth of 1)")
    ax.legend(fontsize=7, ncol=min(4, len(names) + 1), loc="upper left")
    ax.set_title(title)
    fig.autofmt_xdate()
    return png(fig)


def rows_per_week_png(counts: pl.DataFrame, title: str) -> bytes | None:
    """week, rows: a bar per week."""
    if not counts.height:
        return None
    c = counts.sort("week")
    fig, (ax,) = figure(height=3.0)
    ax.bar(c["week"].to_list(), c["rows"].to_list(), width=5, color="#3b78b5")
    ax.set_ylabel("rows")
    ax.set_title(title)
    fig.autofmt_xdate()
    return png(fig)
