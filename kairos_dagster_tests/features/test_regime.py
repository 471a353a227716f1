import datetime as dt

import numpy as np
import polars as pl
import pytest

from kairos_dagster import calendar
from kairos_dagster.features import regime as rg


def market(start: dt.date, returns: np.ndarray) -> pl.DataFrame:
    sess = calendar.sessions_between(start, calendar.sessions_offset(start, 2 * len(returns) + 10))[: len(returns)]
    return pl.DataFrame({"date": sess, "mkt_ret": returns})


def hand_built() -> np.ndarray:
    # 1000 calm sessions rising (vol slowly easing), then 150 turbulent falling ones, then 300 calm rising ones
    alt = np.where(np.arange(1450) % 2 == 0, 1.0, -1.0)
    calm_up = 0.001 + np.linspace(0.006, 0.003, 1000) * alt[:1000]
    crash = -0.004 + 0.03 * alt[1000:1150]
    recover = 0.002 + 0.003 * alt[1150:]
    return np.concatenate([calm_up, crash, recover])


def test_bull_bear_flips_and_vol_regime():
    h = rg.regime_history(market(dt.date(2015, 1, 2), hand_built()))
    assert h.height == 1450
    r = h["regime"].to_list()
    assert r[100] is None  # 200-session average not yet available
    assert r[999] == "normal_vol_bull"
    assert h["vol_pct"][999] is not None
    # deep in the crash: index below its average, drawdown > 20%, 20-day vol at the top of its history
    assert r[1149] == "high_vol_bear"
    assert h["drawdown"][1149] < -0.2 and h["vol_pct"][1149] == pytest.approx(1.0)
    # long after the recovery started the vol regime is normal again; trend turns bull once above the SMA
    assert h["vol_regime"][1449] == "normal_vol"
    flips = h.filter(pl.col("trend_regime").is_not_null())["trend_regime"]
    assert (flips != flips.shift(1)).sum() >= 2  # bull -> bear -> bull
    assert h["trend_regime"][1449] == "bull"
    # the numbers behind it, hand-checked on the last row
    lvl = np.cumprod(1 + hand_built())
    assert h["sma_200"][1449] == pytest.approx(lvl[-200:].mean())
    assert h["drawdown"][1449] == pytest.approx(lvl[-1] / lvl[-252:].max() - 1)
    assert h["vol_20"][1449] == pytest.approx(np.std(hand_built()[-20:], ddof=1) * np.sqrt(252))


def test_trailing_percentile_hand_case():
    v = np.array([np.nan, 1.0, 3.0, 2.0, 5.0, 0.0])
    out = rg.trailing_percentile(v, window=3, min_count=2)
    assert np.isnan(out[0]) and np.isnan(out[1])  # fewer than 2 finite values
    assert out[2:] == pytest.approx([1.0, 2 / 3, 1.0, 1 / 3])


def test_no_dependence_on_history_start():
    rng = np.random.default_rng(7)
    rets = rng.normal(0.0004, 0.011, 2300)
    full = rg.regime_history(market(dt.date(2012, 1, 3), rets))
    later = rg.regime_history(pl.DataFrame(full.select("date", "mkt_ret").tail(2300 - 252)))
    ok_from = full["date"][252 + rg.lookback_sessions()]
    a = full.filter(pl.col("date") >= ok_from)
    b = later.filter(pl.col("date") >= ok_from)
    assert a.height == b.height > 200
    for c in ("trend_regime", "vol_regime", "regime"):
        assert a[c].to_list() == b[c].to_list()
    for c in ("index_to_sma_200", "drawdown", "vol_20", "vol_pct"):
        assert np.max(np.abs(a[c].to_numpy() - b[c].to_numpy())) < 1e-9
    assert a["regime"].n_unique() >= 2


def test_bad_market_series_named():
    m = market(dt.date(2020, 1, 2), np.zeros(30))
    with pytest.raises(ValueError, match="missing"):
        rg.regime_history(m.filter(pl.col("date") != m["date"][10]))
    with pytest.raises(ValueError, match="non-finite"):
        rg.regime_history(m.with_columns(mkt_ret=pl.when(pl.col("date") == m["date"][3]).then(float("nan")).otherwise(0.0)))
