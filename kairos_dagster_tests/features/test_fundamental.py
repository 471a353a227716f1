import datetime as dt
import math

import numpy as np
import polars as pl
import pytest

from kairos_dagster import calendar
from kairos_dagster.features import fundamental as fu
from kairos_dagster.features import pit
from kairos_dagster.sources import schemas

d = dt.date


def sf1(*rows: dict) -> pl.DataFrame:
    base = {c: None for c in schemas.SF1.columns}
    return pl.DataFrame([{**base, **r} for r in rows], schema=schemas.SF1.polars_schema)


def art(ticker, cal, datekey, dim="ART", **vals) -> dict:
    return {"ticker": ticker, "dimension": dim, "calendardate": cal, "datekey": datekey, "reportperiod": cal, **vals}


def rows(ticker: str, *dates: dt.date) -> pl.DataFrame:
    return pl.DataFrame({"ticker": [ticker] * len(dates), "date": list(dates)})


def daily(ticker: str, start: dt.date, end: dt.date, mcap: float, ev: float) -> pl.DataFrame:
    dates = calendar.sessions_between(start, end)
    return pl.DataFrame(
        {"ticker": ticker, "date": dates, "marketcap": [mcap] * len(dates), "ev": [ev] * len(dates)}
    )


# --- SF1 point in time -------------------------------------------------------------------------------


def _fund_sf1() -> pl.DataFrame:
    return sf1(
        art("A", d(2023, 3, 31), d(2023, 5, 1), revenue=100.0, eps=1.0),
        art("A", d(2024, 3, 31), d(2024, 5, 1), revenue=121.0, eps=2.0),
        # restatement of Q1-2023 filed after Q1-2024: must not change growth known earlier
        art("A", d(2023, 3, 31), d(2024, 6, 1), revenue=110.0, eps=1.0),
        # amendment of the current period Q1-2024
        art("A", d(2024, 3, 31), d(2024, 6, 15), revenue=132.0, eps=2.0),
        # a late amendment of an old period must not displace the newer period
        art("A", d(2023, 12, 31), d(2024, 7, 1), revenue=1.0, eps=1.0),
        # MR rows (restated, dated by period end) are never used
        art("A", d(2024, 6, 30), d(2024, 6, 30), dim="MRT", revenue=999.0, eps=9.0),
        art("A", d(2024, 3, 31), d(2024, 3, 31), dim="MRT", revenue=999.0, eps=9.0),
    )


def test_sf1_row_after_d_not_visible_and_mr_ignored():
    r = rows("A", d(2023, 4, 30), d(2023, 5, 1), d(2024, 4, 30), d(2024, 5, 1))
    out = pit.pit_sf1(r, _fund_sf1(), ["revenue"]).sort("date")
    assert out["revenue"].to_list() == [None, 100.0, 100.0, 121.0]


def test_restatements_do_not_leak_and_old_amendments_do_not_displace():
    r = rows("A", d(2024, 5, 15), d(2024, 6, 14), d(2024, 6, 15), d(2024, 7, 2))
    out = fu.feat_fundamental(r, _fund_sf1())
    assert out["date"].to_list() == r["date"].to_list()
    # growth at 2024-05-15 uses the 2023 value as known then (100), not the later restatement (110)
    g = out["revenue_growth_yoy"].to_list()
    assert g[0] == pytest.approx(0.21) and g[1] == pytest.approx(0.21)
    # from 2024-06-15 the amended Q1-2024 (132) is current; year-ago known at its datekey is the 110 version
    assert g[2] == pytest.approx(0.2)
    # 2024-07-01 is a late amendment of Q4-2023: the Q1-2024 snapshot stays current
    assert g[3] == pytest.approx(0.2)
    assert out["reportperiod"].to_list()[3] == d(2024, 3, 31)
    assert out["eps_growth_yoy"].to_list()[0] == pytest.approx(1.0)


def test_mr_dimension_refused():
    with pytest.raises(ValueError, match="MRT"):
        pit.pit_sf1(rows("A", d(2024, 1, 2)), _fund_sf1(), ["revenue"], dimension="MRT")


def test_stale_snapshot_is_missing():
    r = rows("A", d(2023, 5, 1) + dt.timedelta(days=pit.SF1_STALE_DAYS + 1))
    s = sf1(art("A", d(2023, 3, 31), d(2023, 5, 1), revenue=100.0))
    assert pit.pit_sf1(r, s, ["revenue"])["revenue"].to_list() == [None]


def test_bad_input_named():
    s = _fund_sf1()
    with pytest.raises(ValueError, match="sf1 \\(ART\\).*share a key"):
        fu.feat_fundamental(rows("A", d(2024, 5, 1)), pl.concat([s, s.head(1)]))
    with pytest.raises(ValueError, match="rows: .*share a key"):
        fu.feat_fundamental(rows("A", d(2024, 5, 1), d(2024, 5, 1)), s)
    with pytest.raises(ValueError, match="sf1: missing columns \\['revenue'\\]"):
        fu.feat_fundamental(rows("A", d(2024, 5, 1)), s.drop("revenue"))


# --- value and quality -------------------------------------------------------------------------------


def test_value_yields_use_daily_units_and_pit():
    s = sf1(
        art("A", d(2023, 12, 31), d(2024, 2, 15), netinccmn=50e6, equity=400e6, revenue=1e9, ebitda=120e6, fcf=-10e6),
        art("B", d(2023, 12, 31), d(2024, 2, 15), netinccmn=10e6, equity=-5.0, revenue=1e6, ebitda=1e6, fcf=1e6),
    )
    dl = pl.concat([daily("A", d(2024, 1, 2), d(2024, 3, 1), 1000.0, 1200.0),
                    daily("B", d(2024, 1, 2), d(2024, 3, 1), -1.0, 10.0)])
    r = pl.DataFrame({"ticker": ["A", "A", "B"], "date": [d(2024, 2, 14), d(2024, 2, 15), d(2024, 2, 15)]})
    out = fu.feat_value_v2(r, s, dl)
    a0, a1, b = out.rows(named=True)
    assert a0["earnings_yield"] is None
    assert a1["earnings_yield"] == pytest.approx(0.05) and a1["book_yield"] == pytest.approx(0.4)
    assert a1["sales_yield"] == pytest.approx(1.0) and a1["ebitda_ev"] == pytest.approx(0.1)
    assert a1["fcf_yield"] == pytest.approx(-0.01)
    assert b["earnings_yield"] is None and b["ebitda_ev"] == pytest.approx(0.1)  # negative market cap


def test_quality_and_fscore():
    prev = dict(netinc=5.0, assets=100.0, debt=40.0, currentratio=1.0, shareswa=10.0, gp=30.0, revenue=100.0,
                equity=50.0, ncfo=4.0)
    cur = dict(netinc=10.0, assets=100.0, debt=30.0, currentratio=1.5, shareswa=10.0, gp=40.0, revenue=120.0,
               equity=50.0, ncfo=12.0)
    s = sf1(art("A", d(2023, 3, 31), d(2023, 5, 1), **prev), art("A", d(2024, 3, 31), d(2024, 5, 1), **cur),
            art("B", d(2024, 3, 31), d(2024, 5, 1), **cur))
    r = pl.DataFrame({"ticker": ["A", "A", "B"], "date": [d(2023, 6, 1), d(2024, 6, 3), d(2024, 6, 3)]})
    out = fu.feat_quality_v2(r, s).rows(named=True)
    first, a, b = out
    assert a["roe"] == pytest.approx(0.2) and a["roa"] == pytest.approx(0.1)
    assert a["gross_margin"] == pytest.approx(40 / 120) and a["leverage"] == pytest.approx(0.3)
    assert a["accruals"] == pytest.approx(-0.02)
    assert a["f_score"] == 9 and a["f_score_n"] == 9
    # the 2023 snapshot has no year-ago filing: only the 3 level signals, F-score undefined
    assert first["f_score"] is None and first["f_score_n"] == 3
    assert b["f_score"] is None and b["f_score_n"] == 3
    s2 = sf1(art("A", d(2023, 3, 31), d(2023, 5, 1), **cur), art("A", d(2024, 3, 31), d(2024, 5, 1), **prev))
    worse = fu.feat_quality_v2(rows("A", d(2024, 6, 3)), s2).row(0, named=True)
    # roa>0, cfo>0, no dilution hold; everything else deteriorated; cfo 4 < ni 5 -> accrual fails
    assert worse["f_score"] == 3


# --- SF3 lag --------------------------------------------------------------------------------------------


def test_institutional_known_45_days_after_quarter():
    def holdings(cal, investors, units):
        return [{"ticker": "A", "investorname": i, "securitytype": "SHR", "calendardate": cal,
                 "value": u * 10.0, "units": u, "price": 10.0} for i, u in zip(investors, units, strict=True)]
    s3 = pl.DataFrame(
        holdings(d(2023, 12, 31), ["X", "Y"], [100.0, 100.0])
        + holdings(d(2024, 3, 31), ["X", "Y", "Z"], [100.0, 150.0, 50.0])
        + [{"ticker": "A", "investorname": "W", "securitytype": "CLL", "calendardate": d(2024, 3, 31),
            "value": 1e9, "units": 1e9, "price": 1.0}],
        schema=schemas.SF3.polars_schema,
    )
    known = d(2024, 3, 31) + dt.timedelta(days=schemas.SF3_KNOWN_LAG_DAYS)
    out = fu.feat_institutional(rows("A", d(2024, 2, 13), d(2024, 2, 14), known - dt.timedelta(days=1), known), s3)
    rs = out.rows(named=True)
    assert rs[0]["inst_holders"] is None  # 2023-12-31 + 45 = 2024-02-14
    assert rs[1]["inst_holders"] == 2 and rs[1]["inst_holders_chg"] is None
    assert rs[2]["inst_holders"] == 2 and rs[2]["inst_calendardate"] == d(2023, 12, 31)
    assert rs[3]["inst_holders"] == 3 and rs[3]["inst_holders_chg"] == 1
    assert rs[3]["inst_shares"] == pytest.approx(300.0) and rs[3]["inst_shares_chg"] == pytest.approx(0.5)


# --- insider windows ----------------------------------------------------------------------------------


def test_insider_windows_by_filingdate():
    def tx(filed, owner, code, value, officer="N", traded=None):
        return {"ticker": "A", "filingdate": filed, "ownername": owner, "transactioncode": code,
                "transactionvalue": value, "isofficer": officer, "transactiondate": traded or filed, "rownum": 1}
    s2 = pl.DataFrame(
        [
            tx(d(2024, 1, 10), "alice", "P", 1000.0, "Y"),
            tx(d(2024, 2, 1), "bob", "S", -300.0),
            tx(d(2024, 3, 1), "alice", "P", 500.0, "Y", traded=d(2023, 6, 1)),
            tx(d(2024, 3, 5), "carol", "P", 200.0),
            tx(d(2024, 3, 5), "dave", "A", 1e9),  # awards are not open-market buys
            tx(d(2024, 5, 1), "erin", "P", 7.0),  # filed after every row date below
        ],
        schema={c: t for c, t in schemas.SF2.columns.items()},
        strict=False,
    )
    dl = daily("A", d(2024, 1, 2), d(2024, 4, 30), 1e-3, 1e-3)  # market cap $1,000
    r = rows("A", d(2024, 1, 9), d(2024, 1, 10), d(2024, 4, 8), d(2024, 4, 9), d(2024, 4, 10), d(2024, 4, 30))
    out = fu.feat_insider(r, s2, dl).rows(named=True)
    net90 = [x["insider_net_value_90d"] for x in out]
    # 2024-04-09 - 90 days = 2024-01-10: the window (d-90, d] excludes the 2024-01-10 filing
    assert net90 == pytest.approx([0.0, 1000.0, 1400.0, 400.0, 400.0, 400.0])
    assert [x["insider_buyers_90d"] for x in out] == [0, 1, 2, 2, 2, 2]
    assert [x["insider_officer_buys_90d"] for x in out] == [0, 1, 2, 1, 1, 1]
    assert out[2]["insider_officer_buy_value_90d"] == pytest.approx(1500.0)
    assert out[4]["insider_net_value_180d"] == pytest.approx(1400.0)
    assert out[4]["insider_buyers_180d"] == 2 and out[4]["insider_net_mcap_180d"] == pytest.approx(1.4)
    # 2024-01-10 + 90 days: alice's earlier spell ended, but her 2024-03-01 buy keeps her counted once
    assert out[3]["insider_buyers_90d"] == 2


def test_insider_missing_value_is_an_error():
    s2 = pl.DataFrame(
        [{"ticker": "A", "filingdate": d(2024, 1, 10), "ownername": "x", "transactioncode": "P", "rownum": 1}],
        schema={c: t for c, t in schemas.SF2.columns.items()}, strict=False,
    )
    with pytest.raises(ValueError, match="sf2: 1 P/S transactions without value.*'A'"):
        fu.feat_insider(rows("A", d(2024, 2, 1)), s2, daily("A", d(2024, 1, 2), d(2024, 2, 1), 1.0, 1.0))


# --- momentum -------------------------------------------------------------------------------------------


def _prices(tickers_growth: dict[str, float], start: dt.date, end: dt.date) -> pl.DataFrame:
    sess = calendar.sessions_between(start, end)
    i = np.arange(len(sess))
    return pl.concat(
        pl.DataFrame({"ticker": t, "date": sess, "closeadj": np.exp(g * i)}) for t, g in tickers_growth.items()
    )


def test_momentum_session_lags_industry_relative_and_52w_high():
    p = _prices({"A": 0.001, "B": 0.003, "C": -0.001}, d(2022, 1, 3), d(2023, 12, 29))
    # C peaks then falls: 52-week-high ratio below 1
    tk = pl.DataFrame({"table": "SEP", "ticker": ["A", "B", "C"], "industry": ["I1", "I1", "I2"]})
    last = d(2023, 12, 29)
    out = fu.feat_momentum_v2(rows("A", last).vstack(rows("B", last)).vstack(rows("C", last)), p, tk)
    a, b, c = out.rows(named=True)
    assert a["mom_12_1"] == pytest.approx(math.exp(0.001 * 231) - 1)
    assert a["mom_6_1"] == pytest.approx(math.exp(0.001 * 105) - 1)
    mean_i1 = (a["mom_12_1"] + b["mom_12_1"]) / 2
    assert a["mom_12_1_ind_rel"] == pytest.approx(a["mom_12_1"] - mean_i1)
    assert c["mom_12_1_ind_rel"] == pytest.approx(0.0)
    assert a["high_52w_ratio"] == pytest.approx(1.0)
    assert c["high_52w_ratio"] == pytest.approx(math.exp(-0.001 * 251))


def test_momentum_gap_gives_null_not_shift_and_history_start_independent():
    p = _prices({"A": 0.002}, d(2021, 1, 4), d(2023, 12, 29))
    last = d(2023, 12, 29)
    lag252 = calendar.sessions_offset(last, -252)
    tk = pl.DataFrame({"ticker": ["A"], "industry": ["I"]})
    gap = fu.feat_momentum_v2(rows("A", last), p.filter(pl.col("date") != lag252), tk)
    assert gap["mom_12_1"][0] is None and gap["mom_6_1"][0] is not None
    # history starting a year later (but covering the lookback) gives the same values
    dates = calendar.sessions_between(d(2023, 6, 1), last)
    r = pl.DataFrame({"ticker": "A", "date": dates})
    full = fu.feat_momentum_v2(r, p, tk)
    short = fu.feat_momentum_v2(r, p.filter(pl.col("date") >= d(2022, 5, 1)), tk)
    assert full.equals(short)
    with pytest.raises(ValueError, match="prices: 1 rows dated on non-sessions"):
        fu.feat_momentum_v2(r, pl.concat([p, pl.DataFrame({"ticker": "A", "date": d(2023, 12, 25), "closeadj": 1.0})]), tk)
