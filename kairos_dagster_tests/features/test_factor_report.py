import datetime as dt

import numpy as np
import polars as pl
import pytest

from kairos_dagster import calendar
from kairos_dagster.features import composites as co
from kairos_dagster.features import factor_report as fr
from kairos_dagster.features import fundamental as fu


def planted(n_tickers: int = 60, seed: int = 3) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    dates = calendar.sessions_between(dt.date(2023, 1, 2), dt.date(2023, 12, 29))
    n = n_tickers * len(dates)
    good = rng.normal(size=n)
    noise = rng.normal(size=n)
    y = 0.01 * good + 0.03 * rng.normal(size=n)
    return pl.DataFrame(
        {"ticker": np.tile([f"T{i}" for i in range(n_tickers)], len(dates)), "date": [d for d in dates for _ in range(n_tickers)],
         "good": good, "noise": noise, "bad": -good, "ret_5d_f": y}
    )


def test_planted_factor_positive_noise_zero():
    ic, summary = fr.factor_report(planted(), ["good", "noise", "bad"])
    s = {r["factor"]: r for r in summary.iter_rows(named=True)}
    assert s["good"]["mean_ic"] > 0.2 and s["good"]["t_stat"] > 10 and s["good"]["q5_minus_q1"] > 0.01
    assert abs(s["noise"]["mean_ic"]) < 0.05 and abs(s["noise"]["t_stat"]) < 3
    assert s["bad"]["mean_ic"] == pytest.approx(-s["good"]["mean_ic"])
    # rebalance dates only: one period per trading week
    assert s["good"]["n_periods"] == len(calendar.rebalance_dates_between(dt.date(2023, 1, 2), dt.date(2023, 12, 29)))
    assert set(ic.columns) == {"factor", "date", "week", "ic", "q5_minus_q1", "n"}
    assert (ic["week"].dt.weekday() == 1).all() and (ic["n"] == 60).all()
    md = fr.to_markdown(summary)
    assert md.splitlines()[0].startswith("| factor | mean_ic") and "| good |" in md
    assert md.index("| good |") < md.index("| noise |")


def test_hand_computed_ic_spread_and_stats():
    d1, d2 = dt.date(2024, 1, 5), dt.date(2024, 1, 12)  # Fridays: rebalance dates
    f = [1.0, 2.0, 3.0, 4.0, 5.0]
    df = pl.DataFrame({
        "ticker": list("ABCDE") * 2, "date": [d1] * 5 + [d2] * 5, "f": f + f,
        "ret_5d_f": [0.01, 0.02, 0.03, 0.05, 0.04] + [0.05, 0.04, 0.03, 0.02, float("nan")],
    })
    ic, s = fr.factor_report(df, ["f"], min_names=4)
    assert ic["ic"].to_list() == pytest.approx([0.9, -1.0])
    assert ic["n"].to_list() == [5, 4]  # NaN target is missing, not counted
    assert ic["q5_minus_q1"].to_list() == pytest.approx([0.03, -0.03])
    row = s.row(0, named=True)
    assert row["mean_ic"] == pytest.approx(-0.05) and row["std_ic"] == pytest.approx(np.std([0.9, -1.0], ddof=1))
    assert row["t_stat"] == pytest.approx(-0.05 / row["std_ic"] * np.sqrt(2)) and row["n_periods"] == 2
    # too few names: no IC, but the factor still appears in the summary
    ic5, s5 = fr.factor_report(df, ["f"], min_names=6)
    assert ic5["ic"].null_count() == 2 and s5["n_periods"].to_list() == [None]


def test_sessions_mode_and_errors():
    df = planted(n_tickers=20).filter(pl.col("date") <= dt.date(2023, 1, 31))
    ic = fr.factor_ic(df, ["good"], periods="sessions")
    assert ic.height == df["date"].n_unique()
    with pytest.raises(ValueError, match="missing columns \\['nope'\\]"):
        fr.factor_ic(df, ["nope"])
    with pytest.raises(ValueError, match="periods"):
        fr.factor_ic(df, ["good"], periods="monthly")


# --- integration-ish: Phase 3 factors on the synthetic market recover its planted signal -------------

@pytest.fixture(scope="module")
def synthetic_report() -> pl.DataFrame:
    synthetic = pytest.importorskip("kairos_dagster.sources.synthetic")
    m = synthetic.SyntheticMarket(seed=11, n_tickers=300)
    s, e = dt.date(2018, 1, 1), dt.date(2022, 3, 31)
    sep, daily = m.table("SEP", s, e), m.table("DAILY", s, e)
    sf1, sf2, tk = m.table("SF1", s, e), m.table("SF2", s, e), m.table("TICKERS", as_of=e)
    sep = sep.sort("ticker", "date").with_columns(
        ret_5d_f=(pl.col("closeadj").shift(-5) / pl.col("closeadj") - 1).over("ticker")
    )
    reb = calendar.rebalance_dates_between(dt.date(2019, 3, 1), dt.date(2021, 12, 20))
    rows = sep.filter(pl.col("date").is_in(reb)).select("ticker", "date", "ret_5d_f")
    f = rows
    for t in (fu.feat_momentum_v2(rows, sep, tk), fu.feat_quality_v2(rows, sf1), fu.feat_value_v2(rows, sf1, daily),
              fu.feat_insider(rows, sf2, daily)):
        f = f.join(t, on=["ticker", "date"])
    spec = co.CompositeSpec({"mom_12_1": 0.25, "roe": 0.25, "book_yield": 0.25, "insider_buyers_90d": 0.25},
                            min_coverage=0.25)
    f = co.compute_composite(f, "combo", spec)
    noise = f.select(pl.col("ret_5d_f").shuffle(seed=5).over("date").alias("shuffled_target"))
    f = f.with_columns(noise)
    _, summary = fr.factor_report(f, ["mom_12_1", "roe", "book_yield", "insider_buyers_90d", "combo", "shuffled_target"])
    return summary


def test_planted_characteristics_have_positive_ic(synthetic_report):
    s = {r["factor"]: r for r in synthetic_report.iter_rows(named=True)}
    for factor in ("mom_12_1", "roe", "insider_buyers_90d"):
        assert s[factor]["mean_ic"] > 0.01 and s[factor]["t_stat"] > 2, factor
    assert s["book_yield"]["mean_ic"] > 0
    assert s["combo"]["t_stat"] > 4 and s["combo"]["q5_minus_q1"] > 0
    # the target shuffled within each date carries no information
    assert abs(s["shuffled_target"]["t_stat"]) < 3
