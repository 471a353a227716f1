"""The synthetic SHARADAR market: determinism, schemas, price consistency, point-in-time fundamentals
and the planted signal, all on small real markets (no mocks)."""

from __future__ import annotations

import datetime as dt
import os

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from kairos_dagster.calendar import sessions_array
from kairos_dagster.sources.schemas import SECTORS, TABLES
from kairos_dagster.sources.synthetic import SIGNAL_DOC, SyntheticMarket
from kairos_dagster.sources.synthetic import panel as sp

D = dt.date
RANGED = ("SEP", "DAILY", "SF1", "SF2", "SF3", "ACTIONS")
SMALL = (11, 60)  # seed, tickers


def _fresh() -> None:
    """Drop cached panels so a call really regenerates (the cache must not hide non-determinism)."""
    sp._CACHE.clear()


@pytest.fixture(scope="module")
def small() -> SyntheticMarket:
    return SyntheticMarket(*SMALL)


@pytest.fixture(scope="module")
def big() -> SyntheticMarket:
    """300 tickers over 2006-2015: enough cross-section and time for the IC, splits and delistings."""
    return SyntheticMarket(seed=7, n_tickers=300)


@pytest.fixture(scope="module")
def big_sep(big: SyntheticMarket) -> pl.DataFrame:
    return big.table("SEP", D(2006, 1, 1), D(2015, 12, 31))


def test_same_seed_same_frames_and_other_seed_differs() -> None:
    lo, hi = D(2016, 1, 1), D(2016, 12, 31)
    _fresh()
    a = {n: SyntheticMarket(*SMALL).table(n, lo, hi) for n in (*RANGED, "TICKERS")}
    _fresh()
    b = {n: SyntheticMarket(*SMALL).table(n, lo, hi) for n in (*RANGED, "TICKERS")}
    for n in a:
        assert a[n].height > 0, n
        assert_frame_equal(a[n], b[n])
    other = SyntheticMarket(SMALL[0] + 1, SMALL[1]).table("SEP", lo, hi)
    assert not other.equals(a["SEP"])


def test_signal_strength_scales_the_planted_alpha_only() -> None:
    lo, hi = D(2016, 1, 1), D(2016, 12, 31)
    base = SyntheticMarket(*SMALL)
    double = SyntheticMarket(*SMALL, signal=2.0)
    none = SyntheticMarket(*SMALL, signal=0)
    assert_frame_equal(SyntheticMarket(*SMALL, signal=1.0).table("SEP", lo, hi), base.table("SEP", lo, hi))
    a1, a2, a0 = (m.oracle(lo, hi)["alpha_5d"].to_numpy() for m in (base, double, none))
    assert np.abs(a1).max() > 0 and (a0 == 0).all()
    # On the market's first session the characteristics are the same, so alpha is exactly proportional
    # (later, prices and with them momentum and value drift apart).
    e0, e1 = sp.EPOCH, sp.EPOCH + dt.timedelta(days=3)
    np.testing.assert_allclose(double.oracle(e0, e1)["alpha_5d"].to_numpy(),
                               2 * base.oracle(e0, e1)["alpha_5d"].to_numpy(), rtol=1e-9)
    assert not double.table("SEP", lo, hi).equals(base.table("SEP", lo, hi))  # the drift is in the prices
    with pytest.raises(ValueError, match="signal"):
        SyntheticMarket(*SMALL, signal=-1)


def test_week_by_week_equals_one_call(small: SyntheticMarket) -> None:
    lo, hi = D(2016, 1, 4), D(2016, 6, 26)  # Mondays .. Sunday
    weeks = [(lo + dt.timedelta(days=7 * k), lo + dt.timedelta(days=7 * k + 6)) for k in range(25)]
    for name in RANGED:  # one feed snapshot: every piece as served on the same evening
        whole = small.table(name, lo, hi, as_of=hi)
        pieces = pl.concat([small.table(name, a, b, as_of=hi) for a, b in weeks])
        assert_frame_equal(pieces.sort(list(TABLES[name].key)), whole.sort(list(TABLES[name].key)))


def test_later_end_leaves_earlier_rows_unchanged() -> None:
    lo, cut = D(2015, 10, 1), D(2016, 3, 31)
    _fresh()
    m = SyntheticMarket(*SMALL)
    served = D(2019, 6, 30)  # one feed snapshot (SEP's adjustment depends on the serving day)
    early = {n: m.table(n, lo, cut, as_of=served) for n in RANGED}
    early_oracle = m.oracle(lo, cut, as_of=served)  # keyed by the symbols of the serving day
    _fresh()  # the next call builds a panel three years longer from scratch
    late = {n: m.table(n, lo, served, as_of=served) for n in RANGED}
    for n in RANGED:
        pit = TABLES[n].pit_column
        assert_frame_equal(late[n].filter(pl.col(pit) <= cut), early[n])
    assert_frame_equal(m.oracle(lo, served, as_of=served).filter(pl.col("date") <= cut), early_oracle)


@pytest.mark.parametrize("name", [*RANGED, "TICKERS"])
def test_schema_key_and_range(small: SyntheticMarket, name: str) -> None:
    spec = TABLES[name]
    lo, hi = D(2016, 2, 1), D(2016, 11, 30)
    df = small.table(name, lo, hi)
    assert df.schema == spec.polars_schema
    assert df.height > 0
    assert df.select(spec.key).is_duplicated().sum() == 0, f"{name} key not unique"
    if spec.pit_column:
        assert df.get_column(spec.pit_column).min() >= lo
        assert df.get_column(spec.pit_column).max() <= hi
    assert small.table(name, hi, lo).schema == spec.polars_schema  # empty range, same schema


def test_tickers_table(small: SyntheticMarket) -> None:
    big = SyntheticMarket(7, 400).table("TICKERS")
    t = big.filter(pl.col("table") == "SEP")
    assert t.height == 400
    cats = t.get_column("category").value_counts()
    assert set(cats.get_column("category")) >= {"Domestic Common Stock", "ADR Common Stock", "ETF"}
    assert (t.get_column("category") == "Domestic Common Stock").mean() > 0.8
    assert set(t.get_column("sector").drop_nulls()) == set(SECTORS)
    assert t.filter(pl.col("category") == "ETF").get_column("sector").null_count() == t.filter(
        pl.col("category") == "ETF").height
    assert set(big.get_column("table")) == {"SEP", "SF1"}
    assert (t.get_column("firstpricedate") <= t.get_column("lastpricedate")).all()
    assert set(t.get_column("isdelisted")) == {"Y", "N"}
    assert t.get_column("scalemarketcap").n_unique() >= 4


def test_ohlc_volume_and_only_sessions(big_sep: pl.DataFrame) -> None:
    df = big_sep
    bad = df.filter((pl.col("low") > pl.min_horizontal("open", "close")) | (pl.col("high") < pl.max_horizontal(
        "open", "close")) | (pl.col("volume") < 0) | (pl.col("low") <= 0))
    assert bad.height == 0, bad.head()
    sessions = set(sessions_array(D(2006, 1, 1), D(2015, 12, 31)).astype("datetime64[D]").astype(dt.date).tolist())
    assert set(df.get_column("date").unique().to_list()) == sessions
    # Liquidity and price cross-sections wide enough for filters to bite.
    per = df.group_by("ticker").agg((pl.col("close") * pl.col("volume")).median().alias("dv"),
                                    pl.col("closeunadj").median().alias("px"))
    assert per.get_column("dv").min() < 1e6 < 2e6 < per.get_column("dv").max()
    assert per.get_column("px").min() < 5 and per.get_column("px").max() > 100


def test_split_and_dividend_adjustments(big: SyntheticMarket, big_sep: pl.DataFrame) -> None:
    acts = big.table("ACTIONS", D(2006, 1, 1), D(2015, 12, 31))
    splits = acts.filter(pl.col("action") == "split").select("ticker", "date", pl.col("value").alias("ratio"))
    divs = acts.filter(pl.col("action") == "dividend").select("ticker", "date", pl.col("value").alias("div"))
    assert splits.height >= 3 and divs.height > 100
    df = big_sep.sort("ticker", "date").with_columns(
        (pl.col("close") / pl.col("closeunadj")).alias("sf"),
        (pl.col("closeadj") / pl.col("close")).alias("df"),
        pl.col("closeunadj").shift(1).over("ticker").alias("prev_raw"),
    ).with_columns(
        (pl.col("sf") / pl.col("sf").shift(1).over("ticker")).alias("sf_jump"),
        (pl.col("df") / pl.col("df").shift(1).over("ticker")).alias("df_jump"),
    ).drop_nulls("sf_jump")
    j = df.join(splits, on=["ticker", "date"], how="left").join(divs, on=["ticker", "date"], how="left")
    # close/closeunadj moves only on split dates, by exactly the split ratio.
    moved = j.filter((pl.col("sf_jump") - 1).abs() > 1e-9)
    assert moved.height == splits.height
    assert moved.get_column("ratio").null_count() == 0
    assert np.allclose(moved.get_column("sf_jump"), moved.get_column("ratio"))
    # closeadj/close moves only on ex-dates, by 1 / (1 - dividend / previous raw close).
    moved = j.filter((pl.col("df_jump") - 1).abs() > 1e-9)
    assert moved.get_column("div").null_count() == 0
    expect = 1 / (1 - moved.get_column("div") / moved.get_column("prev_raw"))
    assert np.allclose(moved.get_column("df_jump"), expect, rtol=1e-3)


def test_delisted_tickers_keep_history(big: SyntheticMarket, big_sep: pl.DataFrame) -> None:
    tick = big.table("TICKERS").filter((pl.col("table") == "SEP") & (pl.col("isdelisted") == "Y")
                                       & (pl.col("lastpricedate") < D(2015, 12, 31)))
    assert tick.height >= 5
    last = big_sep.group_by("ticker").agg(pl.col("date").max().alias("last_seen"))
    j = tick.join(last, on="ticker", how="left")
    assert (j.get_column("last_seen") == j.get_column("lastpricedate")).all()
    acts = big.table("ACTIONS", D(2005, 1, 1), D(2015, 12, 31)).filter(pl.col("action") == "delisted")
    assert set(tick.get_column("ticker")) <= set(acts.get_column("ticker"))


def test_sf1_point_in_time(small: SyntheticMarket) -> None:
    sf1 = small.table("SF1", D(2012, 1, 1), D(2016, 12, 31))
    assert set(sf1.get_column("dimension")) == {"ARQ", "ART", "MRQ"}
    ar = sf1.filter(pl.col("dimension").is_in(["ARQ", "ART"]))
    lag = (ar.get_column("datekey") - ar.get_column("reportperiod")).dt.total_days()
    assert lag.min() >= 20 and lag.max() <= 75
    mr = sf1.filter(pl.col("dimension") == "MRQ")
    assert (mr.get_column("datekey") == mr.get_column("reportperiod")).all()
    # Restatements show only in MR rows: some MRQ values differ from the as-reported ARQ ones.
    both = mr.join(ar.filter(pl.col("dimension") == "ARQ"), on=["ticker", "reportperiod"], suffix="_ar")
    assert both.height > 0
    restated = (both.get_column("netinc") != both.get_column("netinc_ar")).mean()
    assert 0 < restated < 0.15
    # ART flows are trailing sums of four ARQ quarters.
    q = ar.filter(pl.col("dimension") == "ARQ").sort("ticker", "reportperiod").with_columns(
        pl.col("revenue").rolling_sum(4).over("ticker").alias("rev4"),
        (pl.col("reportperiod").dt.offset_by("-9mo").dt.month_end() == pl.col("reportperiod").shift(3).over(
            "ticker")).alias("contiguous"))
    t = q.filter(pl.col("contiguous")).join(ar.filter(pl.col("dimension") == "ART"), on=["ticker", "reportperiod"],
                                           suffix="_t")
    assert t.height > 0 and np.allclose(t.get_column("rev4"), t.get_column("revenue_t"))


def test_daily_consistent_with_prices_and_sf1(small: SyntheticMarket) -> None:
    lo, hi = D(2016, 1, 1), D(2016, 12, 31)
    daily = small.table("DAILY", lo, hi)
    sep = small.table("SEP", lo, hi)
    sf1 = small.table("SF1", D(2014, 1, 1), hi).filter(pl.col("dimension") == "ART")
    j = daily.join(sep, on=["ticker", "date"])
    assert j.height == daily.height == sep.height
    # marketcap / closeunadj = raw shares outstanding: constant between splits, so nearly constant here.
    sh = j.with_columns((pl.col("marketcap") / pl.col("closeunadj")).alias("sh")).group_by("ticker").agg(
        (pl.col("sh").max() / pl.col("sh").min()).alias("spread"), pl.col("sh").n_unique().alias("k"))
    assert (sh.get_column("spread") < 1.0 + 1e-6).mean() > 0.8
    # pe / ps / pb from the latest ART row filed on or before the day.
    pit = j.sort("date").join_asof(sf1.sort("datekey").select("ticker", "datekey", "netinc", "revenue", "equity"),
                                   left_on="date", right_on="datekey", by="ticker", strategy="backward", check_sortedness=False)
    pit = pit.drop_nulls(["netinc", "pe"])
    assert pit.height > 0.5 * daily.height
    assert np.allclose(pit.get_column("pe"), pit.get_column("marketcap") * 1e6 / pit.get_column("netinc"))
    assert np.allclose(pit.get_column("ps"), pit.get_column("marketcap") * 1e6 / pit.get_column("revenue"))


def test_sf2_and_sf3_shapes(small: SyntheticMarket) -> None:
    sf2 = small.table("SF2", D(2016, 1, 1), D(2016, 12, 31))
    assert set(sf2.get_column("transactioncode")) == {"P", "S", "A"}
    assert (sf2.get_column("filingdate") >= sf2.get_column("transactiondate")).all()
    sells = sf2.filter(pl.col("transactioncode") == "S")
    assert (sells.get_column("transactionshares") < 0).all()
    assert set(sf2.get_column("isdirector")) == {"Y", "N"}
    sf3 = small.table("SF3", D(2016, 1, 1), D(2016, 12, 31))
    assert set(sf3.get_column("calendardate").dt.month()) == {3, 6, 9, 12}
    assert np.allclose(sf3.get_column("value"), sf3.get_column("units") * sf3.get_column("price"))


def test_characteristics_observable_from_tables(big: SyntheticMarket, big_sep: pl.DataFrame) -> None:
    lo, hi = D(2014, 1, 1), D(2014, 6, 30)
    orc = big.oracle(lo, hi)
    # 12-1 momentum from past closeadj only.
    mom = big_sep.sort("ticker", "date").with_columns(
        (pl.col("closeadj").shift(21).over("ticker") / pl.col("closeadj").shift(252).over("ticker")).log()
        .alias("mom")).filter(pl.col("date").is_between(lo, hi))
    j = orc.join(mom, on=["ticker", "date"]).drop_nulls(["mom", "mom_12_1"])
    assert j.height > 1000 and np.allclose(j.get_column("mom"), j.get_column("mom_12_1"))
    # Quality: roe of the latest ART row with datekey <= date.
    art = big.table("SF1", D(2012, 1, 1), hi).filter(pl.col("dimension") == "ART")
    q = orc.sort("date").join_asof(art.sort("datekey").select("ticker", "datekey", "roe"), left_on="date",
                                   right_on="datekey", by="ticker", strategy="backward", check_sortedness=False).drop_nulls("quality_roe")
    assert q.height > 1000 and np.allclose(q.get_column("roe"), q.get_column("quality_roe"))
    # Insider buying: P rows of SF2 filed in the last 63 sessions.
    sessions = pl.DataFrame({"date": sessions_array(D(2013, 6, 1), hi)}).with_columns(pl.col("date").cast(pl.Date))
    start = sessions.with_columns(pl.col("date").shift(62).alias("from")).filter(pl.col("date").is_between(lo, hi))
    buys = big.table("SF2", D(2013, 6, 1), hi).filter(pl.col("transactioncode") == "P")
    counted = (orc.select("ticker", "date", "insider_buys_63d").join(start, on="date")
               .join(buys.select("ticker", "filingdate"), on="ticker", how="left")
               .group_by("ticker", "date", "insider_buys_63d")
               .agg(pl.col("filingdate").is_between(pl.col("from"), pl.col("date")).sum().alias("n")))
    assert counted.height == orc.height
    assert (counted.get_column("n") == counted.get_column("insider_buys_63d")).all()
    assert counted.get_column("n").max() >= 1


def test_planted_signal_rank_ic(big: SyntheticMarket, big_sep: pl.DataFrame) -> None:
    assert "expected_ret_5d" in SIGNAL_DOC and SyntheticMarket.SIGNAL_DOC == SIGNAL_DOC
    orc = big.oracle(D(2006, 1, 1), D(2015, 12, 31))
    fwd = big_sep.sort("ticker", "date").with_columns(
        (pl.col("closeadj").shift(-5).over("ticker") / pl.col("closeadj") - 1).alias("fwd"))
    j = orc.join(fwd.select("ticker", "date", "fwd"), on=["ticker", "date"]).drop_nulls(["fwd"])
    ic = j.group_by("date").agg(pl.corr("expected_ret_5d", "fwd", method="spearman").alias("ic"),
                                pl.first("regime_vol")).drop_nans("ic")
    mean_ic = ic.get_column("ic").mean()
    assert 0.015 < mean_ic < 0.08, mean_ic
    # Noisy: many single dates have a negative IC; weaker in high-volatility regimes.
    assert 0.2 < (ic.get_column("ic") < 0).mean() < 0.5
    by_vol = dict(ic.group_by("regime_vol").agg(pl.col("ic").mean()).iter_rows())
    assert by_vol[1] < by_vol[0]
    # A shuffled oracle has no skill (the test would notice a leak through the join).
    shuffled = j.with_columns(pl.col("expected_ret_5d").shuffle(seed=1).over("date"))
    sic = shuffled.group_by("date").agg(pl.corr("expected_ret_5d", "fwd", method="spearman")).drop_nans()
    assert abs(sic.get_column("expected_ret_5d").mean()) < 0.01


def test_bad_input_is_a_clear_error(small: SyntheticMarket) -> None:
    with pytest.raises(KeyError, match="unknown SHARADAR table 'NOPE'"):
        small.table("NOPE")
    with pytest.raises(TypeError, match="end must be a datetime.date"):
        small.table("SEP", D(2016, 1, 1), dt.datetime(2016, 2, 1))
    with pytest.raises(ValueError, match="horizon"):
        small.table("SEP", D(2016, 1, 1), D(2041, 1, 1))
    with pytest.raises(ValueError, match="n_tickers"):
        SyntheticMarket(7, 0)


def _split(market: SyntheticMarket, after: dt.date) -> tuple[str, dt.date, float]:
    """The first split after `after` of a ticker listed for a year before it."""
    p = sp.panel(market.seed, market.n_tickers, 2024)
    st = sp.static(market.seed, market.n_tickers)
    sess = sp.all_sessions()
    for j, i, r in sorted(zip(p.split_idx, p.split_tick, p.split_ratio, strict=True)):
        if sess[j].item() > after and st.first_idx[i] < j - 260:
            return str(st.ticker[i]), sess[j].item(), float(r)
    raise AssertionError("no split")


def test_sep_is_served_split_adjusted_as_of_the_serving_day(big: SyntheticMarket) -> None:
    ticker, day, ratio = _split(big, D(2012, 1, 1))
    before, after = day - dt.timedelta(days=1), day + dt.timedelta(days=3)
    lo = day - dt.timedelta(days=60)
    old = big.table("SEP", lo, before, as_of=before).filter(pl.col("ticker") == ticker)
    new = big.table("SEP", lo, before, as_of=after).filter(pl.col("ticker") == ticker)
    # The whole earlier history is rewritten by the split ratio, with lastupdated moved to the split day.
    np.testing.assert_allclose((old["close"] / new["close"]).to_numpy(), ratio, rtol=1e-12)
    np.testing.assert_allclose((new["volume"] / old["volume"]).to_numpy(), ratio, rtol=1e-12)
    np.testing.assert_allclose(old["closeunadj"].to_numpy(), new["closeunadj"].to_numpy(), rtol=1e-15)
    assert (new["lastupdated"] == day).all() and (old["lastupdated"] < day).all()
    # Returns are the same either way; on the serving day close == closeunadj (and closeadj).
    np.testing.assert_allclose((old["closeadj"] / old["closeadj"].shift(1)).to_numpy()[1:],
                               (new["closeadj"] / new["closeadj"].shift(1)).to_numpy()[1:], rtol=1e-12)
    today = big.table("SEP", after, after, as_of=after)
    np.testing.assert_allclose(today["close"].to_numpy(), today["closeunadj"].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(today["closeadj"].to_numpy(), today["closeunadj"].to_numpy(), rtol=1e-12)
    # A row no event touched is bit-identical whatever the serving day.
    quiet = big.table("SEP", lo, before, as_of=before).join(
        big.table("SEP", lo, before, as_of=before + dt.timedelta(days=1)), on=["ticker", "date"], suffix="_b")
    same = quiet.filter(pl.col("lastupdated") == pl.col("lastupdated_b"))
    assert same.height > 0.9 * quiet.height
    for c in ("open", "high", "low", "close", "volume", "closeadj", "closeunadj"):
        assert (same[c] == same[f"{c}_b"]).all(), c


def test_a_bad_print_is_served_until_its_correction() -> None:
    m = SyntheticMarket(7, 150)
    bp = sp.bad_prints(7, 150, 2021)
    st = sp.static(7, 150)
    k = next(k for k in range(len(bp.t)) if st.first_idx[bp.i[k]] < bp.t[k] < st.last_idx[bp.i[k]] - 10)
    sess = sp.all_sessions()
    day, fixed_on = sess[bp.t[k]].item(), sess[bp.t[k] + bp.lag[k]].item()
    ticker = str(st.ticker[bp.i[k]])
    served = {a: m.table("SEP", day, day, as_of=a).filter(pl.col("ticker") == ticker)
              for a in (day, fixed_on - dt.timedelta(days=1), fixed_on)}
    wrong, late, right = served[day], served[fixed_on - dt.timedelta(days=1)], served[fixed_on]
    assert wrong["lastupdated"].item() == day and right["lastupdated"].item() == fixed_on
    assert wrong["closeunadj"].item() / right["closeunadj"].item() == pytest.approx(bp.factor[k], rel=1e-12)
    assert late["closeunadj"].item() == wrong["closeunadj"].item()  # still wrong the evening before
    assert abs(bp.factor[k] - 1) >= 0.02


def test_updated_is_exactly_the_rows_with_lastupdated_since(big: SyntheticMarket) -> None:
    since, as_of = D(2014, 3, 3), D(2014, 3, 14)
    whole = big.table("SEP", D(2010, 1, 1), as_of, as_of=as_of)
    expected = whole.filter(pl.col("lastupdated") >= since).sort("ticker", "date")
    got = big.updated("SEP", since, as_of, not_before=D(2010, 1, 1))
    assert_frame_equal(got, expected)
    assert got.filter(pl.col("date") < since).height > 0  # older rows rewritten by splits and dividends
    # SF1: MR rows are dated by their report period but appear at their filing
    key = ["ticker", "dimension", "datekey", "reportperiod"]
    sf1 = big.table("SF1", D(2010, 1, 1), as_of, as_of=as_of).filter(pl.col("lastupdated") >= since).sort(key)
    assert_frame_equal(big.updated("SF1", since, as_of, not_before=D(2010, 1, 1)).sort(key), sf1)


def test_a_ticker_change_rekeys_the_whole_history_under_the_new_symbol() -> None:
    """Seed 7, 150 tickers: MAFI (permaticker 100,072) trades as VCPDZ from 2020-11-23."""
    m = SyntheticMarket(7, 150)
    rn = sp.renames(7, 150)
    k = int(np.flatnonzero(sp.static(7, 150).ticker == "MAFI")[0])
    (t,) = rn.t[rn.i == k]
    assert sp.all_sessions()[t] == np.datetime64("2020-11-23") and rn.symbol[rn.i == k][0] == "VCPDZ"
    lo, hi = D(2020, 10, 1), D(2020, 11, 20)
    before = m.table("SEP", lo, hi, as_of=D(2020, 11, 20))
    after = m.table("SEP", lo, hi, as_of=D(2020, 11, 24))
    assert "MAFI" in before["ticker"] and "VCPDZ" not in before["ticker"]
    assert "MAFI" not in after["ticker"] and "VCPDZ" in after["ticker"]
    old = before.filter(pl.col("ticker") == "MAFI").drop("ticker", "lastupdated")
    new = after.filter(pl.col("ticker") == "VCPDZ")
    assert_frame_equal(new.drop("ticker", "lastupdated"), old)  # the same rows, re-keyed
    assert (new["lastupdated"] == D(2020, 11, 23)).all()  # rewritten on the change day
    assert after.select("ticker", "date").rows() == sorted(after.select("ticker", "date").rows())  # key order
    # Every table keys history by the symbol of the serving day.
    for name in ("DAILY", "SF1", "SF2", "SF3"):
        served = m.table(name, D(2019, 1, 1), D(2020, 11, 24), as_of=D(2020, 11, 24))
        assert "MAFI" not in served["ticker"] and "VCPDZ" in served["ticker"], name
    # TICKERS: the permaticker stays, the old symbol is a related ticker; ACTIONS records the change.
    tick = m.table("TICKERS", as_of=D(2020, 11, 24)).filter(pl.col("permaticker") == 100_000 + k)
    assert set(tick["ticker"]) == {"VCPDZ"} and set(tick["relatedtickers"]) == {"MAFI"}
    assert set(m.table("TICKERS", as_of=D(2020, 11, 20)).filter(pl.col("permaticker") == 100_000 + k)["ticker"]) == {
        "MAFI"}
    acts = m.table("ACTIONS", D(2020, 11, 23), D(2020, 11, 23), as_of=D(2020, 11, 24)).filter(
        pl.col("action").str.starts_with("tickerchange"))
    assert sorted(acts.select("action", "ticker", "contraticker").rows()) == [
        ("tickerchangefrom", "VCPDZ", "MAFI"), ("tickerchangeto", "MAFI", "VCPDZ")]
    # What `lastupdated.gte` returns after the change: the whole re-keyed history.
    got = m.updated("SEP", D(2020, 11, 23), D(2020, 11, 24), not_before=lo)
    assert got.filter((pl.col("ticker") == "VCPDZ") & (pl.col("date") <= hi)).height == new.height


def test_large_panels_are_kept_on_disk_and_mapped_back_unchanged(tmp_path, monkeypatch) -> None:
    """A panel stored by one process is what a later process serves, read-only and without regenerating;
    a stored file of another generator version or a torn one is never used."""
    monkeypatch.setattr(sp, "DISK_CACHE_MIN_TICKERS", 1)  # the small market stands in for a large one
    seed, n = SMALL
    _fresh()
    plain = SyntheticMarket(seed, n)
    stored = SyntheticMarket(seed, n, cache_dir=tmp_path)
    want = {name: plain.table(name, D(2016, 1, 1), D(2016, 3, 31), as_of=D(2016, 6, 30)) for name in RANGED}
    _fresh()
    built = sp.panel(seed, n, 2016, cache_dir=tmp_path)  # builds and stores
    (folder,) = tmp_path.glob("panel-*")
    assert folder.name.endswith("-through2016") and not isinstance(built.cum, np.memmap)

    _fresh()  # a new process: nothing in memory
    monkeypatch.setattr(sp, "_build", lambda *a: pytest.fail("regenerated a stored panel"))
    mapped = sp.panel(seed, n, 2015, cache_dir=tmp_path)  # an earlier year is served by the longer panel
    assert isinstance(mapped.cum, np.memmap) and mapped.last_year == 2016 and mapped.T == built.T
    for f in sp._PANEL_ARRAYS:
        np.testing.assert_array_equal(getattr(mapped, f), getattr(built, f), err_msg=f)
    for f in sp._INSIDER_ARRAYS:
        np.testing.assert_array_equal(getattr(mapped.insiders, f), getattr(built.insiders, f), err_msg=f)
    with pytest.raises(ValueError, match="read-only"):
        mapped.cum[0, 0] = 1.0
    for name in RANGED:
        assert_frame_equal(stored.table(name, D(2016, 1, 1), D(2016, 3, 31), as_of=D(2016, 6, 30)), want[name])
    monkeypatch.undo()
    monkeypatch.setattr(sp, "DISK_CACHE_MIN_TICKERS", 1)

    # Another generator version: ignored, then removed once the current one is stored.
    stale = tmp_path / f"{sp._disk_prefix(seed, n, 1.0)}0000000000000000-through2030"
    folder.rename(stale)
    _fresh()
    again = sp.panel(seed, n, 2016, cache_dir=tmp_path)
    assert not isinstance(again.cum, np.memmap) and not stale.exists()
    np.testing.assert_array_equal(again.cum, built.cum)
    # A torn file (a missing array) is rebuilt and stored anew.
    (current,) = tmp_path.glob("panel-*")
    (current / "cum.npy").unlink()
    _fresh()
    assert not isinstance(sp.panel(seed, n, 2016, cache_dir=tmp_path).cum, np.memmap)
    _fresh()
    assert isinstance(sp.panel(seed, n, 2016, cache_dir=tmp_path).cum, np.memmap)
    _fresh()


def test_a_panel_that_cannot_be_stored_is_still_served_and_said(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(sp, "DISK_CACHE_MIN_TICKERS", 1)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("x")  # the cache folder's path is a file: storing fails
    torn = tmp_path / "cache" / ".panel-seed11-n60-old"
    torn.mkdir(parents=True)
    os.utime(torn, (0, 0))  # a private folder a killed writer left long ago
    _fresh()
    with caplog.at_level("WARNING"):
        p = sp.panel(*SMALL, 2016, cache_dir=blocked)
    assert p.T > 0 and "panel not kept" in caplog.text and str(blocked) in caplog.text
    _fresh()
    sp.panel(*SMALL, 2016, cache_dir=tmp_path / "cache")
    assert not torn.exists() and len(list((tmp_path / "cache").glob("panel-*"))) == 1
    _fresh()


def test_small_panels_and_the_off_setting_keep_nothing_on_disk(tmp_path, monkeypatch) -> None:
    from kairos_dagster.resources.source import SharadarSource

    _fresh()
    sp.panel(*SMALL, 2016, cache_dir=tmp_path)  # 60 tickers < DISK_CACHE_MIN_TICKERS
    assert not any(tmp_path.iterdir())
    monkeypatch.setenv("KAIROS_DATA_SOURCE", "synthetic")
    monkeypatch.setenv("KAIROS_SYNTHETIC_CACHE_DIR", str(tmp_path / "panels"))
    assert SharadarSource().build().market.cache_dir == tmp_path / "panels"
    # Run config may name the folder or turn it off, whatever the settings say.
    assert SharadarSource(synthetic_cache_dir=str(tmp_path / "rc")).build().market.cache_dir == tmp_path / "rc"
    assert SharadarSource(synthetic_cache_dir="off").panel_cache_dir() is None
    assert SyntheticMarket.from_identity(SyntheticMarket(*SMALL).identity, cache_dir=tmp_path).cache_dir == tmp_path
    monkeypatch.setenv("KAIROS_SYNTHETIC_CACHE_DIR", "off")
    assert SharadarSource().build().market.cache_dir is None
    monkeypatch.delenv("KAIROS_SYNTHETIC_CACHE_DIR")
    monkeypatch.setenv("KAIROS_DUCKDB_PATH", str(tmp_path / "w" / "k.duckdb"))
    assert SharadarSource().build().market.cache_dir == tmp_path / "w" / "synthetic_cache"
    _fresh()
