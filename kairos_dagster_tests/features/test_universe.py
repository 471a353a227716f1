"""Phase 1: point-in-time universe and cap-weighted market return."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from kairos_dagster import calendar as cal
from kairos_dagster.features.universe import market_index, market_returns, universe

DATES = [d for d in cal.sessions_between(dt.date(2020, 1, 2), dt.date(2020, 3, 31))]


def _ticker(name: str, close: list[float] | float, volume: float, n: int | None = None,
            closeunadj: float | None = None) -> pl.DataFrame:
    n = n or len(DATES)
    c = close if isinstance(close, list) else [close] * n
    return pl.DataFrame({
        "ticker": name, "date": DATES[:n], "open": c, "high": c, "low": c, "close": c,
        "volume": float(volume), "closeadj": c, "closeunadj": closeunadj or c,
    }).with_columns(pl.col("date").cast(pl.Date), pl.col("closeunadj").cast(pl.Float64))


TICKERS = pl.DataFrame({
    "table": ["SEP", "SEP", "SEP", "SEP", "SEP", "SF1"],
    "ticker": ["AAA", "ADR", "DEAD", "PENNY", "SPLIT", "ADR"],
    "category": ["Domestic Common Stock", "ADR Common Stock", "Domestic Common Stock Primary Class",
                 "Domestic Common Stock", "Domestic Common Stock", "Domestic Common Stock"],
    "isdelisted": ["N", "N", "Y", "N", "N", "N"],
})


def _prices() -> pl.DataFrame:
    return pl.concat([
        _ticker("AAA", 50.0, 100_000),            # $5M ADV: in from the 20th session
        _ticker("ADR", 50.0, 100_000),            # liquid but an ADR: never in
        _ticker("DEAD", 10.0, 100_000, n=30),     # delisted after 30 sessions: in while it traded
        _ticker("PENNY", 1.5, 10_000_000),        # liquid but under $2: never in
        # split-adjusted close $1 (after a later 10:1 split) but traded at $10: in
        _ticker("SPLIT", 1.0, 1_000_000, closeunadj=10.0),
    ])


def test_universe_rules_and_warm_up() -> None:
    out = universe(_prices(), TICKERS)
    assert out.columns == ["ticker", "date", "adv_20", "closeunadj", "category", "in_universe"]
    by = out.group_by("ticker").agg(pl.len(), pl.col("date").min()).sort("ticker")
    assert by["ticker"].to_list() == ["AAA", "DEAD", "SPLIT"]
    # 20 sessions of history needed (window ending at d): first in on the 20th session
    assert by["date"].to_list() == [DATES[19]] * 3
    assert by["len"].to_list() == [len(DATES) - 19, 30 - 19, len(DATES) - 19]
    assert out.filter(pl.col("ticker") == "AAA")["adv_20"].to_list() == pytest.approx([5_000_000.0] * (len(DATES) - 19))
    assert out["in_universe"].all()


def test_universe_thresholds_use_trailing_data_only() -> None:
    # volume jumps on session 40: ADV crosses $500K only once enough high-volume days are in the window
    vol = [1_000.0] * 40 + [50_000.0] * (len(DATES) - 40)  # $10 * 50k = $500K per day
    p = _ticker("AAA", 10.0, 0).with_columns(pl.Series("volume", vol))
    out = universe(p, TICKERS)
    assert out["date"].min() == DATES[59]  # all 20 days of the window at $500K: >= min_adv
    # a later change (future data) does not move past decisions
    later = p.with_columns(pl.when(pl.col("date") > DATES[45]).then(0.0).otherwise(pl.col("volume")).alias("volume"))
    assert universe(later, TICKERS).height == 0
    assert universe(p.head(61), TICKERS)["date"].to_list() == [DATES[59], DATES[60]]
    assert universe(p, TICKERS, min_adv=600_000).height == 0
    assert universe(p, TICKERS, min_price=10.5).height == 0


def test_universe_bad_input_is_named() -> None:
    dup_tickers = pl.concat([TICKERS, TICKERS.head(1)])
    with pytest.raises(ValueError, match="ticker 'AAA' appears more than once"):
        universe(_prices(), dup_tickers)
    with pytest.raises(ValueError, match="sep_base: rows must be strictly sorted"):
        universe(_prices().reverse(), TICKERS)


def test_market_return_is_cap_weighted_with_previous_session_caps() -> None:
    d = DATES[:4]
    prices = pl.DataFrame({
        "ticker": ["A"] * 4 + ["B"] * 4,
        "date": d * 2,
        "closeadj": [10.0, 11.0, 11.0, 12.1, 20.0, 20.0, 22.0, 22.0],
    }).with_columns(pl.col("date").cast(pl.Date))
    caps = prices.select("ticker", "date", pl.Series("marketcap", [100.0, 300.0, 300.0, 1.0, 100.0, 100.0, 100.0, 9.0]))
    uni = prices.select("ticker", "date").filter(~((pl.col("ticker") == "B") & (pl.col("date") == d[2])))
    out = market_returns(prices, caps, uni)
    assert out["date"].to_list() == d[1:]
    # d1: A +10% (cap 100 on d0), B 0% (cap 100) -> 5%
    # d2: A 0% (cap 300 on d1), B +10% (cap 100) -> 2.5%
    # d3: A +10% (cap 300 on d2); B not in the universe on d2 -> 10%; the caps ON d3 play no part
    np.testing.assert_allclose(out["mkt_ret"].to_numpy(), [0.05, 0.025, 0.10], rtol=1e-12)
    assert out["n_constituents"].to_list() == [2, 2, 1]
    idx = market_index(out)
    np.testing.assert_allclose(idx["mkt_index"].to_numpy(), 100 * np.cumprod([1.05, 1.025, 1.10]), rtol=1e-12)
    # caps missing on a weighting date is an error naming the ticker and date
    with pytest.raises(ValueError, match=rf"ticker='B' date={d[1]}"):
        market_returns(prices, caps.filter(~((pl.col("ticker") == "B") & (pl.col("date") == d[1]))), uni)
