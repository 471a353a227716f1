"""Phase 2 technical tables: TA-Lib agreement, warm-up nulls, no look-ahead / history-start
independence, and forward targets."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
import talib

from kairos_dagster import calendar as cal
from kairos_dagster.features import targets as tg
from kairos_dagster.features import technical as T
from kairos_dagster.features.universe import market_returns


def make_prices(n_tickers: int = 3, n_sessions: int = 900, seed: int = 0,
                start: dt.date = dt.date(2012, 1, 3)) -> pl.DataFrame:
    """Random-walk OHLCV per ticker on real XNYS sessions, sorted by (ticker, date); price levels
    differ by ticker so a window leaking into the previous ticker shows."""
    rng = np.random.default_rng(seed)
    dates = cal.sessions_array(start, cal.sessions_offset(start, n_sessions + 5))[:n_sessions]
    frames = []
    for k in range(n_tickers):
        c = 10.0 * (k + 1) ** 2 * np.exp(np.cumsum(rng.normal(0.0003, 0.02, n_sessions)))
        o = c * np.exp(rng.normal(0, 0.01, n_sessions))
        h = np.maximum(o, c) * np.exp(np.abs(rng.normal(0, 0.01, n_sessions)))
        low = np.minimum(o, c) * np.exp(-np.abs(rng.normal(0, 0.01, n_sessions)))
        v = rng.integers(50_000, 2_000_000, n_sessions).astype(float)
        frames.append(pl.DataFrame({
            "ticker": f"T{k:02d}", "date": dates, "open": o, "high": h, "low": low, "close": c,
            "volume": v, "closeadj": c * np.exp(-0.0001 * np.arange(n_sessions)[::-1]), "closeunadj": c,
        }).with_columns(pl.col("date").cast(pl.Date)))
    return pl.concat(frames)


def make_daily(prices: pl.DataFrame) -> pl.DataFrame:
    # shares outstanding (millions) fixed per ticker: 50 * (k + 1) for ticker Tk
    k = pl.col("ticker").str.slice(1).cast(pl.Int64)
    return prices.select("ticker", "date", (pl.col("closeunadj") * (k + 1) * 50.0).alias("marketcap"))


def run_table(name: str, prices: pl.DataFrame) -> pl.DataFrame:
    if name == "feat_adv":
        return T.feat_adv(prices, daily=make_daily(prices))
    if name == "feat_beta":
        # the market return is an input: compute it once from the full frame
        return T.feat_beta(prices, MKT)
    return T.TECHNICAL_TABLES[name].fn(prices)


PRICES = make_prices(n_tickers=3, n_sessions=1300)
MKT = market_returns(PRICES, make_daily(PRICES), PRICES.select("ticker", "date"))


# ------------------------------------------------------------------------------------- TA-Lib agreement
def _talib_refs(s: pl.DataFrame) -> dict[str, np.ndarray]:
    o, h, low, c, v = (s[k].to_numpy() for k in ("open", "high", "low", "close", "volume"))
    macd, sig, hist = talib.MACD(c, 12, 26, 9)
    up, mid, lo = talib.BBANDS(c, 20, 2.0, 2.0, 0)
    aroon_down, aroon_up = talib.AROON(h, low, 25)
    return {
        "rsi_14": talib.RSI(c, 14), "macd": macd, "macd_signal": sig, "macd_hist": hist,
        "ema_12": talib.EMA(c, 12), "ema_26": talib.EMA(c, 26),
        "adx_14": talib.ADX(h, low, c, 14), "plus_di_14": talib.PLUS_DI(h, low, c, 14),
        "minus_di_14": talib.MINUS_DI(h, low, c, 14), "atr_14": talib.ATR(h, low, c, 14),
        "natr_14": talib.NATR(h, low, c, 14), "bb_upper_20": up, "bb_middle_20": mid, "bb_lower_20": lo,
        "aroon_up_25": aroon_up, "aroon_down_25": aroon_down, "aroon_osc_25": talib.AROONOSC(h, low, 25),
        "sma_ratio_50": c / talib.SMA(c, 50) - 1.0,
    }


def test_indicators_match_talib_for_every_ticker_in_one_frame() -> None:
    prices = PRICES.head(2 * 1300 + 800)  # 3 tickers, the last one shorter
    feats = T.feat_trend(prices).join(T.feat_vol_volatility(prices), on=["ticker", "date"])
    checked = 0
    for tk in ("T00", "T01", "T02"):
        s, f = prices.filter(pl.col("ticker") == tk), feats.filter(pl.col("ticker") == tk)
        for col, ref in _talib_refs(s).items():
            ours = f[col].to_numpy().astype(float)
            ok = ~np.isnan(ours)
            assert ok.sum() > 50, (tk, col)
            # after our warm-up TA-Lib has a value too, and the two agree to 1e-6
            assert not np.isnan(ref[ok]).any(), (tk, col)
            np.testing.assert_allclose(ours[ok], ref[ok], rtol=0, atol=1e-6, err_msg=f"{tk} {col}")
            checked += 1
        # OBV is a trailing 252-session sum: exactly TA-Lib's cumulative OBV differenced 252 rows apart
        obv_ref = talib.OBV(s["close"].to_numpy(), s["volume"].to_numpy())
        ours = f["obv"].to_numpy().astype(float)
        np.testing.assert_array_equal(ours[252:], obv_ref[252:] - obv_ref[:-252])
        assert np.isnan(ours[:252]).all()
    assert checked == 3 * 18


def test_warm_up_rows_are_null_and_the_next_row_is_not() -> None:
    prices = PRICES
    for name, spec in T.TECHNICAL_TABLES.items():
        if name == "feat_targets":
            continue
        out = run_table(name, prices)
        assert out.height == prices.height and out.columns == ["ticker", "date", *spec.columns], name
        assert out.select("ticker", "date").equals(prices.select("ticker", "date"))
        feats = {f.name: f.lookback for f in getattr(T, name.removeprefix("feat_").upper())}
        # T00 starts the frame: nothing before it, not even another ticker's rows
        for tk in ("T00", "T01"):
            first = out.filter(pl.col("ticker") == tk)
            for col, lb in feats.items():
                values = first[col]
                # rows before the lookback are null; the first row with full history has a value
                assert values.head(lb).null_count() == lb, (name, col)
                if name == "feat_beta":
                    continue  # the first market-return date has no prior constituents
                assert values[lb] is not None, (name, tk, col, lb)
        assert spec.lookback_sessions == max(feats.values()) <= T.MAX_LOOKBACK


# ------------------------------------------------------------------------------------- no look-ahead
def _close(a: pl.DataFrame, b: pl.DataFrame, what: str) -> None:
    assert a.select("ticker", "date").equals(b.select("ticker", "date")), what
    for col in a.columns[2:]:
        x, y = a[col].to_numpy().astype(float), b[col].to_numpy().astype(float)
        assert np.array_equal(np.isnan(x), np.isnan(y)), (what, col)
        ok = ~np.isnan(x)
        np.testing.assert_allclose(x[ok], y[ok], rtol=1e-9, atol=1e-9, err_msg=f"{what} {col}")


def _history(prices: pl.DataFrame, first: int, last: int) -> pl.DataFrame:
    """Rows of each ticker with in-ticker index in [first, last]."""
    i = pl.int_range(pl.len()).over("ticker")
    return prices.filter((i >= first) & (i <= last))


@pytest.mark.parametrize("name", [n for n in T.TECHNICAL_TABLES if n != "feat_targets"])
def test_values_depend_only_on_a_fixed_trailing_window(name: str) -> None:
    lb = T.TECHNICAL_TABLES[name].lookback_sessions
    n_last = 15
    end = 1150  # in-ticker index of the last date we check
    start = end - n_last - lb - 5  # just enough history for the checked dates
    assert start >= 252 + 1 and end + 100 < 1300

    base = _history(PRICES, start, end)
    ref = run_table(name, base).filter(pl.int_range(pl.len()).over("ticker") >= pl.len().over("ticker") - n_last)
    keys = ref.select("ticker", "date")
    assert ref.height == 3 * n_last and ref.drop("ticker", "date").null_count().sum_horizontal()[0] == 0

    def on_keys(frame: pl.DataFrame) -> pl.DataFrame:
        return keys.join(run_table(name, frame), on=["ticker", "date"], how="left", maintain_order="left")

    # more later data appended: the checked dates do not change (no look-ahead)
    _close(ref, on_keys(_history(PRICES, start, end + 100)), f"{name}: later data appended")
    # history starting a year earlier or later (still >= the window): identical
    _close(ref, on_keys(_history(PRICES, start - 252, end)), f"{name}: history a year earlier")
    later = end - n_last - lb + 1  # the latest start that still holds the window
    _close(ref, on_keys(_history(PRICES, later, end)), f"{name}: history starts as late as possible")
    # another ticker removed from the frame (no leakage between adjacent tickers)
    _close(ref.filter(pl.col("ticker") != "T00"),
           on_keys(_history(PRICES, start, end).filter(pl.col("ticker") != "T00")).filter(pl.col("ticker") != "T00"),
           f"{name}: neighbour ticker removed")


def test_one_session_less_history_than_the_window_nulls_the_first_checked_date() -> None:
    lb = T.TECHNICAL_TABLES["feat_trend"].lookback_sessions
    out = T.feat_trend(_history(PRICES, 300, 300 + lb))
    last = out.filter(pl.col("ticker") == "T00").tail(2)
    assert last["adx_14"][0] is None and last["adx_14"][1] is not None


# ------------------------------------------------------------------------------------- other definitions
def test_slope_drawdown_beta_and_shape_against_direct_numpy() -> None:
    s = PRICES.filter(pl.col("ticker") == "T01")
    ca, c, o = s["closeadj"].to_numpy(), s["close"].to_numpy(), s["open"].to_numpy()
    trend, stat = T.feat_trend(PRICES), T.feat_statistical(PRICES)
    trend, stat = (f.filter(pl.col("ticker") == "T01") for f in (trend, stat))
    shape = T.feat_price_shape(PRICES).filter(pl.col("ticker") == "T01")
    vol = T.feat_vol_volatility(PRICES).filter(pl.col("ticker") == "T01")
    for t in (300, 777, 1299):
        slope = np.polyfit(np.arange(60), np.log(ca[t - 59: t + 1]), 1)[0]
        assert trend["slope_60"][t] == pytest.approx(slope, abs=1e-12)
        for w in (63, 252):
            win = ca[t - w + 1: t + 1]
            mdd = np.min(win / np.maximum.accumulate(win)) - 1.0
            assert stat[f"mdd_{w}"][t] == pytest.approx(mdd, abs=1e-14)
        r = ca[t - 20: t + 1] / ca[t - 21: t] - 1
        assert stat["ret_std_21"][t] == pytest.approx(np.std(r, ddof=1), rel=1e-9)
        # lag-1 autocorrelation over 63 sessions: corr(r_t, r_{t-1}) of the window's pairs
        r = ca[t - 63: t + 1] / ca[t - 64: t] - 1
        assert stat["autocorr_1_63"][t] == pytest.approx(np.corrcoef(r[1:], r[:-1])[0, 1], abs=1e-12)
        for w in (10, 60):  # realized vol: annualized sample std of the window's daily returns
            r = ca[t - w + 1: t + 1] / ca[t - w: t] - 1
            assert vol[f"vol_{w}"][t] == pytest.approx(np.std(r, ddof=1) * np.sqrt(252), rel=1e-9)
        assert trend["sma_ratio_200"][t] == pytest.approx(c[t] / c[t - 199: t + 1].mean() - 1, abs=1e-12)
        assert shape["kmid_mean_5"][t] == pytest.approx(np.mean((c - o)[t - 4: t + 1] / o[t - 4: t + 1]), rel=1e-9)

    # beta to a market that IS the stock is 1 with zero idiosyncratic vol; 2x the market gives beta 0.5
    r = s.select("date", (pl.col("closeadj") / pl.col("closeadj").shift(1) - 1).alias("mkt_ret")).drop_nulls()
    b = T.feat_beta(s, r)
    assert b["beta_252"].drop_nulls().to_numpy() == pytest.approx(1.0, abs=1e-9)
    assert b["idio_vol_63"].drop_nulls().max() < 1e-6
    b2 = T.feat_beta(s, r.with_columns(pl.col("mkt_ret") * 2))
    assert b2["beta_63"].drop_nulls().to_numpy() == pytest.approx(0.5, abs=1e-9)
    assert b2["corr_63"].drop_nulls().to_numpy() == pytest.approx(1.0, abs=1e-9)


def test_vol_blend_is_floored_and_adv_and_turnover_are_dollar_volume_based() -> None:
    flat = PRICES.filter(pl.col("ticker") == "T00").with_columns(
        pl.lit(5.0).alias("closeadj"), pl.lit(5.0).alias("close")
    )
    vs = T.feat_vol_sizing(flat)["vol_blend"].drop_nulls()
    assert vs.len() > 0 and (vs == T.VOL_FLOOR).all()
    adv = T.feat_adv(PRICES, daily=make_daily(PRICES)).filter(pl.col("ticker") == "T02")
    s = PRICES.filter(pl.col("ticker") == "T02")
    dv = (s["close"] * s["volume"]).to_numpy()
    assert adv["adv_20"][500] == pytest.approx(dv[481:501].mean(), rel=1e-12)
    # marketcap = closeunadj * 150 ($M) -> turnover = volume / 150e6 shares
    assert adv["turnover_20"][500] == pytest.approx(s["volume"].to_numpy()[481:501].mean() / 150e6, rel=1e-9)
    with pytest.raises(ValueError, match="feat_adv: pass"):
        T.feat_adv(PRICES)
    # DAILY not row-aligned with the prices (other order, a missing day, an extra ticker): joined by key
    daily = make_daily(PRICES)
    hole = daily.filter((pl.col("ticker") == "T02") & (pl.col("date") == s["date"][490]))
    other = pl.concat([daily.join(hole, on=["ticker", "date"], how="anti").reverse(),
                       daily.head(5).with_columns(pl.lit("ZZZ").alias("ticker"))])
    joined = T.feat_adv(PRICES, daily=other)
    aligned = T.feat_adv(PRICES, daily=daily)
    assert joined.drop("turnover_20").equals(aligned.drop("turnover_20"))
    t2 = joined.filter(pl.col("ticker") == "T02")["turnover_20"]
    # the missing marketcap nulls exactly the 20 windows that contain that day
    assert t2.slice(490, 20).null_count() == 20 and t2[489] is not None and t2[510] is not None
    assert joined.filter(pl.col("ticker") != "T02")["turnover_20"].equals(
        aligned.filter(pl.col("ticker") != "T02")["turnover_20"])


# ------------------------------------------------------------------------------------- targets
def test_targets_forward_returns_label_and_end_date() -> None:
    prices = PRICES.head(1300 + 600)  # T00 full, T01 shorter
    out = tg.feat_targets(prices)
    assert out.columns == ["ticker", "date", *T.TECHNICAL_TABLES["feat_targets"].columns]
    for tk in ("T00", "T01"):
        s, f = prices.filter(pl.col("ticker") == tk), out.filter(pl.col("ticker") == tk)
        ca, d = s["closeadj"].to_numpy(), s["date"]
        for h in (1, 5, 21):
            got = f[f"ret_{h}d_f"]
            np.testing.assert_allclose(got.head(len(ca) - h).to_numpy(), ca[h:] / ca[:-h] - 1, rtol=1e-14)
            assert got.tail(h).null_count() == h  # incomplete horizon: null, never filled
        assert f["label_end_date"].head(len(ca) - 5).equals(d.tail(len(ca) - 5), check_names=False)
        assert f["label_end_date"].tail(5).null_count() == 5
    # label: top 20% of the date's cross-section; here 2 tickers -> only the best one when n >= 2
    cnt = out.group_by("date").agg(pl.col("ret_5d_f").count().alias("n"), pl.col("label_top_quintile_5d").sum())
    assert (cnt.filter(pl.col("n") == 2)["label_top_quintile_5d"] == 1).all()
    assert out.filter(pl.col("ret_5d_f").is_null())["label_top_quintile_5d"].null_count() == out.filter(
        pl.col("ret_5d_f").is_null()).height
    # calendar helper gives the same session when the ticker has no gaps
    lab = out.filter(pl.col("label_end_date").is_not_null()).head(50)
    assert tg.label_end_dates(lab["date"]).equals(lab["label_end_date"], check_names=False)


def test_targets_ml_label_is_the_market_residual_above_the_median() -> None:
    prices = make_prices(n_tickers=12, n_sessions=80, seed=5)
    dates = prices["date"].unique().sort()
    mkt = pl.DataFrame({"date": dates, "mkt_ret": np.linspace(-0.01, 0.012, dates.len())})
    keys = prices.select("ticker", "date")
    rng = np.random.default_rng(0)
    risk = keys.with_columns(
        pl.Series("beta_252", rng.uniform(0.5, 1.5, keys.height)),
        pl.Series("beta_63", rng.uniform(0.5, 1.5, keys.height)),
    ).with_columns(  # younger listings: beta_252 (and beta_63) missing -> the documented fallbacks
        pl.when(pl.col("ticker").is_in(["T00", "T02"])).then(None).otherwise(pl.col("beta_252")).alias("beta_252"),
        pl.when(pl.col("ticker") == "T02").then(None).otherwise(pl.col("beta_63")).alias("beta_63"),
    )
    out = tg.feat_targets(prices, keys, mkt, risk)
    assert out.columns == ["ticker", "date", *T.TECHNICAL_TABLES["feat_targets"].columns]
    d = dates[30]
    m = mkt["mkt_ret"].to_numpy()
    mkt_5d = np.prod(1 + m[31:36]) - 1  # the five sessions after d
    one = out.filter(pl.col("date") == d).join(risk, on=["ticker", "date"]).sort("ticker")
    np.testing.assert_allclose(one["mkt_ret_5d_f"].to_numpy(), mkt_5d, rtol=1e-12)
    beta = one["beta_252"].fill_null(one["beta_63"]).fill_null(1.0).to_numpy()
    assert beta[2] == 1.0 and beta[0] == one["beta_63"][0]
    resid = one["ret_5d_f"].to_numpy() - beta * mkt_5d
    np.testing.assert_allclose(one["ret_5d_resid_f"].to_numpy(), resid, rtol=1e-9, atol=1e-15)
    # above the median of 12 names: exactly the 6 best residual returns
    assert one[tg.ML_LABEL].to_list() == [int(v > np.median(resid)) for v in resid] and one[tg.ML_LABEL].sum() == 6
    # the last 5 sessions have no complete horizon: every forward column is null, never filled
    tail = out.filter(pl.col("date") > dates[-6])
    assert tail.select(pl.col("mkt_ret_5d_f", "ret_5d_resid_f", tg.ML_LABEL).null_count()).row(0) == (
        tail.height, tail.height, tail.height)
    # without market and risk inputs the residual columns are unknown (null), not invented
    bare = tg.feat_targets(prices, keys)
    assert bare.columns == out.columns and bare[tg.ML_LABEL].null_count() == bare.height
    # bad inputs name what is wrong, nothing is computed from them
    with pytest.raises(ValueError, match="feat_beta: duplicate key ticker='T03'"):
        tg.feat_targets(prices, keys, mkt, pl.concat([risk, risk.filter(pl.col("ticker") == "T03").head(1)]))
    with pytest.raises(ValueError, match="market_returns: duplicate date"):
        tg.feat_targets(prices, keys, pl.concat([mkt, mkt.head(1)]), risk)
    for bad in (-1.5, float("nan")):
        with pytest.raises(ValueError, match="is not a return above -100%"):
            tg.feat_targets(prices, keys, mkt.with_columns(pl.when(pl.col("date") == d).then(bad)
                                                          .otherwise(pl.col("mkt_ret")).alias("mkt_ret")), risk)


def test_targets_cross_section_is_the_universe_rows_given() -> None:
    prices = make_prices(n_tickers=10, n_sessions=60, seed=3)
    uni = prices.select("ticker", "date").filter(pl.col("ticker") != "T09")
    out = tg.feat_targets(prices, universe=uni)
    assert out.height == uni.height and "T09" not in out["ticker"].to_list()
    one = out.filter(pl.col("date") == out["date"][10])
    # 9 names: average rank / 9 > 0.8 -> the top 1 (8/9 = 0.889) and 2 (> 7.2/9); exactly ranks 8 and 9
    top = one.sort("ret_5d_f").tail(2)["ticker"].to_list()
    assert sorted(one.filter(pl.col("label_top_quintile_5d") == 1)["ticker"].to_list()) == sorted(top)
    # forward returns still span the ticker's own sessions, not only universe rows
    full = tg.feat_targets(prices).join(uni, on=["ticker", "date"], how="semi", maintain_order="left")
    assert out["ret_21d_f"].equals(full["ret_21d_f"])


# ------------------------------------------------------------------------------------- bad input
def test_bad_input_is_named() -> None:
    unsorted = PRICES.head(50).reverse()
    with pytest.raises(ValueError, match=r"feat_trend: rows must be strictly sorted.*ticker='T00'"):
        T.feat_trend(unsorted)
    dup = pl.concat([PRICES.head(10), PRICES.slice(9, 5)])
    with pytest.raises(ValueError, match="no duplicates"):
        T.feat_price_action(dup)
    with pytest.raises(ValueError, match="feat_statistical: missing required column"):
        T.feat_statistical(PRICES.drop("closeadj"))
    holed = PRICES.with_columns(pl.when(pl.int_range(pl.len()) == 1400).then(None).otherwise(pl.col("high"))
                                .alias("high"))
    with pytest.raises(ValueError, match=r"'high' has 1 null.*ticker='T01'"):
        T.feat_vol_volatility(holed)


# ------------------------------------------------------------------------------------- numpy kernels
def test_rolling_argmax_age_and_max_drawdown_match_brute_force_exactly_with_ties() -> None:
    from numpy.lib.stride_tricks import sliding_window_view

    from kairos_dagster.features.ops import rolling_argmax_age, rolling_max_drawdown_values

    rng = np.random.default_rng(7)
    x = np.round(np.cumsum(rng.normal(0, 1, 700)), 0)  # coarse rounding: many tied maxima
    for w in (1, 2, 3, 7, 26, 64, 100):
        win = sliding_window_view(x, w)
        # brute force: first index of the max in the reversed window = rows back to the latest max
        np.testing.assert_array_equal(rolling_argmax_age(x, w)[w - 1:], win[:, ::-1].argmax(axis=1))
        p = np.exp(x / 20)
        pw = sliding_window_view(p, w)
        brute = (pw / np.maximum.accumulate(pw, axis=1)).min(axis=1) - 1.0
        got = rolling_max_drawdown_values(p, w)
        np.testing.assert_array_equal(got[w - 1:], brute)
        assert np.isnan(got[: w - 1]).all()
    assert rolling_max_drawdown_values(np.array([1.0, 2.0]), 5).shape == (2,)


def test_block_mean_and_ticker_row_index() -> None:
    from kairos_dagster.features.ops import block_mean, ticker_row_index

    df = pl.DataFrame({"ticker": ["A"] * 7 + ["B"] * 3 + ["C"] * 5, "x": np.arange(15, dtype=float) ** 2})
    out = df.with_columns(pl.col("x").rolling_mean(2).alias("m2")).select(
        ticker_row_index().alias("i"),
        block_mean(pl.col("m2"), 2, 3).alias("m6"),
        pl.col("x").rolling_mean(6).alias("ref"),
    )
    assert out["i"].to_list() == [*range(7), *range(3), *range(5)]
    np.testing.assert_allclose(out["m6"].to_numpy()[5:], out["ref"].to_numpy()[5:], rtol=1e-14)
    assert out["m6"].head(5).null_count() == 5


@pytest.mark.parametrize("name", [n for n in T.TECHNICAL_TABLES if n != "feat_targets"])
def test_batches_of_whole_tickers_change_nothing(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from kairos_dagster.features import ops

    prices = _history(PRICES, 0, 999)  # 3 tickers x 1000 rows
    whole = run_table(name, prices)
    # 700-row batches: cut at ticker starts (0, 1000, 2000), never inside a ticker
    assert ops.ticker_batches(np.array([0, 1000, 2000]), 3000, 700) == [(0, 1000), (1000, 1000), (2000, 1000)]
    monkeypatch.setattr(ops, "BATCH_ROWS", 700)
    batched = run_table(name, prices)
    assert batched.columns == whole.columns
    _close(whole, batched, f"{name}: batched")
