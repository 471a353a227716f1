"""The backtest's pictures, its HTML report (rendered in headless Chromium) and the capacity rows."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest

from kairos_dagster import calendar as cal
from kairos_dagster.backtest import capacity, report, stats
from kairos_dagster_tests.fixtures.browser import IMAGES_JS, SECTIONS_JS, needs_browser, open_page


def _daily(name: str, r: np.ndarray, days: list[dt.date], turnover: float = 0.1) -> pl.DataFrame:
    cost = np.where([d.weekday() == 0 for d in days], 5.0, 0.0)
    equity = 1e5 * np.cumprod(1.0 + r)
    return pl.DataFrame({"strategy": name, "date": days, "equity": equity, "ret_net": r,
                         "ret_gross": r + cost / equity, "cost": cost,
                         "turnover": [turnover if d.weekday() == 0 else 0.0 for d in days],
                         "gross_exposure": 1.0, "n_positions": [75] * len(days)})


@pytest.fixture(scope="module")
def world():
    days = cal.sessions_between(dt.date(2022, 1, 3), dt.date(2024, 6, 28))
    rng = np.random.default_rng(3)
    m = rng.normal(0.0004, 0.01, len(days))
    daily = pl.concat([_daily("ml", 0.0003 + m + rng.normal(0, 0.004, len(days)), days),
                       _daily("universe_ew", m + rng.normal(0, 0.002, len(days)), days),
                       _daily("market", m, days, turnover=0.0)])
    regimes = pl.DataFrame({"date": days, "regime": ["normal_vol_bull" if i % 50 < 35 else "high_vol_bear"
                                                     for i in range(len(days))]})
    table = stats.strategy_stats(daily, regimes)
    sweep = capacity.capacity_rows(
        {v: daily.filter(pl.col("strategy") == "ml").with_columns(pl.col("ret_net") - k * 1e-4)
         for k, v in enumerate(capacity.CAPACITY_VALUES)},
        {1e5: (1e6, 0.0), 1e7: (1e8, 1e6), 1e9: (1e10, 4e9)})
    return daily, table, sweep


def test_rolling_sharpe_is_the_annualized_sharpe_of_the_last_52_weeks(world):
    daily = world[0]
    rs = report.rolling_sharpe(daily).filter(pl.col("strategy") == "ml")
    ml = daily.filter(pl.col("strategy") == "ml").sort("date")
    assert rs["rolling_sharpe"][: report.ROLLING_SESSIONS - 1].null_count() == report.ROLLING_SESSIONS - 1
    k = 400
    window = ml["ret_net"].to_numpy()[k - report.ROLLING_SESSIONS + 1: k + 1]
    assert rs["rolling_sharpe"][k] == pytest.approx(stats.sharpe(window), rel=1e-9)


def test_weekly_turnover_and_cost_sum_each_week(world):
    daily = world[0]
    w = report.weekly_turnover_cost(daily)
    assert "market" not in set(w["strategy"])
    ml = w.filter(pl.col("strategy") == "ml")
    assert ml["turnover"].max() == pytest.approx(0.1)
    first = daily.filter((pl.col("strategy") == "ml") & (pl.col("date").dt.truncate("1w") == ml["week"][0]))
    assert ml["cost_bps"][0] == pytest.approx(1e4 * float((first["cost"] / first["equity"]).sum()))


def test_capacity_rows(world):
    sweep = world[2]
    assert sweep["config_id"].to_list() == ["default", "capacity-1e7", "capacity-1e9"]
    assert sweep["unfilled_share"].to_list() == [0.0, 0.01, 0.4]
    assert sweep["sharpe_vs_smallest"][0] == 1.0
    assert sweep["sharpe"][2] < sweep["sharpe"][1] < sweep["sharpe"][0]
    assert sweep["sharpe_vs_smallest"][2] == pytest.approx(sweep["sharpe"][2] / sweep["sharpe"][0])
    assert all(g > n for g, n in zip(sweep["sharpe_gross"], sweep["sharpe"], strict=True))
    assert capacity.config_id_for(2.5e7) == "capacity-2.5e7" and capacity.config_id_for(1e5) == "default"
    with pytest.raises(ValueError, match="finite number > 0"):
        capacity.config_id_for(-1.0)


def test_pictures_are_pngs_and_the_report_holds_them(world, tmp_path):
    daily, table, sweep = world
    pngs = report.pictures(daily, table, sweep)
    assert list(pngs) == ["equity_curves", "drawdowns", "rolling_sharpe_52w", "returns_by_year_and_regime",
                          "turnover_and_cost", "capacity_curve"]
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") and len(p) > 5_000 for p in pngs.values())
    assert "capacity_curve" not in report.pictures(daily, table, None)
    text = report.render_html(table, pngs, sweep, config_id="default", first=daily["date"].min(),
                              last=daily["date"].max(), notes=["oracle: <not> available"])
    path = report.write_report(tmp_path / "backtest", report.report_name("default"), text)
    assert path.name == "backtest_report.html" and not list(path.parent.glob(".*.tmp"))
    assert text.count("<img alt=") == 6 and "&lt;not&gt;" in text and "<not>" not in text
    assert "$10,000,000" in text and "40.00%" in text  # the sweep's value and unfilled share, formatted
    assert report.report_name("cli-x/y") == "backtest_report_cli-x_y.html"


@needs_browser
def test_the_report_renders_in_headless_chromium(world, tmp_path):
    daily, table, sweep = world
    pngs = report.pictures(daily, table, sweep)
    text = report.render_html(table, pngs, sweep, config_id="default", first=daily["date"].min(),
                              last=daily["date"].max())
    path = report.write_report(tmp_path, "backtest_report.html", text)
    with open_page(path.as_uri()) as page:
        images = page.evaluate(IMAGES_JS)
        sections = page.evaluate(SECTIONS_JS)
        summary_rows = page.locator("#summary tbody tr").count()
        shot = page.screenshot(full_page=True)
    assert [alt for alt, *_ in images] == list(pngs)
    assert all(done and w > 300 and h > 100 for _, done, w, h in images), images
    assert {"summary", "years", "capacity_table", *pngs} <= set(sections)
    assert summary_rows == 3
    assert shot.startswith(b"\x89PNG") and len(shot) > 50_000
    assert not math.isnan(float(table.filter(pl.col("period") == "full")["sharpe"][0]))
