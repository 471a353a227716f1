import datetime as dt

import numpy as np
import polars as pl
import pytest

from kairos_dagster import calendar
from kairos_dagster.features import composites as co
from kairos_dagster.features import xs

SECTORS = ["Technology", "Energy"]
REGIMES_CYCLE = ["normal_vol_bull", "high_vol_bull", "normal_vol_bear", "high_vol_bear", None]


def panel(n_tickers: int = 12, start=dt.date(2023, 1, 3), end=dt.date(2023, 3, 31), seed: int = 0) -> pl.DataFrame:
    """Every input column of every composite, random, on a session grid; plus sector and regime."""
    rng = np.random.default_rng(seed)
    dates = calendar.sessions_between(start, end)
    n = n_tickers * len(dates)
    cols = {c for s in co.COMPOSITES.values() for c in s.inputs() if c not in co.COMPOSITES}
    df = pl.DataFrame(
        {
            "ticker": np.repeat([f"T{i:02d}" for i in range(n_tickers)], len(dates)),
            "date": dates * n_tickers,
            "sector": np.repeat([SECTORS[i % 2] for i in range(n_tickers)], len(dates)),
            **{c: rng.normal(size=n) for c in sorted(cols)},
        }
    )
    reg = pl.DataFrame({"date": dates, "regime": [REGIMES_CYCLE[i % 5] for i in range(len(dates))]})
    return df.join(reg, on="date", how="left")



def test_weights_declared_once_and_sum_to_one():
    for name, spec in co.COMPOSITES.items():
        if spec.smooth_source is None:
            for reg, w in spec.tables().items():
                assert sum(abs(v) for v in w.values()) == pytest.approx(1.0), (name, reg)
    assert set(co.COMPOSITES["feat_composite_v33_regime"].tables()) >= {"normal_vol_bull", "high_vol_bear", "default"}


def test_build_all_composites_standardized_per_date():
    out = co.build_composites(panel())
    for name in co.COMPOSITES:
        if name == "feat_composite_v31_smooth":
            continue
        g = out.group_by("date").agg(m=pl.col(name).mean(), s=pl.col(name).std(ddof=0), mx=pl.col(name).abs().max())
        assert g["m"].abs().max() < 1e-9 and g["s"].min() > 0.8 and g["mx"].max() <= 3.0 + 1e-12, name
    v8 = co.alpha_composite_v8(out)
    assert v8.columns == ["ticker", "date", "alpha_composite_v8"] and v8.height == out.height


def test_sign_and_scale_behaviour():
    df = panel()
    pos = co.compute_composite(df, "x", co.CompositeSpec({"mom_12_1": 0.5, "vol_blend": 0.5}))
    neg = co.compute_composite(df, "x", co.CompositeSpec({"mom_12_1": -0.5, "vol_blend": -0.5}))
    big = co.compute_composite(df, "x", co.CompositeSpec({"mom_12_1": 5.0, "vol_blend": 5.0}))
    assert np.allclose(pos["x"].to_numpy(), -neg["x"].to_numpy())
    assert np.allclose(pos["x"].to_numpy(), big["x"].to_numpy())
    # a single positive factor: the composite ranks like the factor; a negative weight reverses it
    one = co.compute_composite(df, "x", co.CompositeSpec({"mom_12_1": 1.0})).with_columns(
        r1=xs.rank_pct("x"), r2=xs.rank_pct("mom_12_1")
    )
    assert one["r1"].to_list() == one["r2"].to_list()
    flip = co.compute_composite(df, "x", co.CompositeSpec({"mom_12_1": -1.0}))
    assert np.allclose(flip["x"].to_numpy(), -one["x"].to_numpy())
    assert (one["x"].to_numpy() != 0).all()


def test_hand_computed_composite_missing_factor_and_coverage():
    d = dt.date(2024, 1, 2)
    df = pl.DataFrame({"ticker": list("ABCD"), "date": [d] * 4, "f": [1.0, 2.0, 3.0, 4.0], "g": [4.0, 3.0, 2.0, None]})
    out = co.compute_composite(df, "c", co.CompositeSpec({"f": 0.75, "g": 0.25}, min_coverage=0.5))
    zf = (np.array([1, 2, 3, 4.0]) - 2.5) / np.std([1, 2, 3, 4.0])
    zg = (np.array([4, 3, 2.0]) - 3) / np.std([4, 3, 2.0])
    raw = np.append(0.75 * zf[:3] + 0.25 * zg, zf[3])  # D: g missing -> weight renormalized to f alone
    exp = (raw - raw.mean()) / raw.std()
    assert np.allclose(out["c"].to_numpy(), exp)
    strict = co.compute_composite(df, "c", co.CompositeSpec({"f": 0.25, "g": 0.75}, min_coverage=0.5))
    assert strict["c"][3] is None


def test_sector_neutral_removes_sector_tilt_and_needs_sector():
    df = panel().with_columns(
        pl.when(pl.col("sector") == "Energy").then(pl.col("book_yield") + 10).otherwise(pl.col("book_yield"))
    )
    spec = co.CompositeSpec({"book_yield": 1.0}, sector_neutral=True)
    out = co.compute_composite(df, "c", spec)
    by_sector = out.group_by("date", "sector").agg(pl.col("c").mean())
    assert by_sector["c"].abs().max() < 1e-9
    plain = co.compute_composite(df, "c", co.CompositeSpec({"book_yield": 1.0}))
    assert plain.filter(pl.col("sector") == "Energy")["c"].min() > 0
    with pytest.raises(ValueError, match="without a sector.*T00"):
        co.compute_composite(df.with_columns(sector=pl.when(pl.col("ticker") == "T00").then(None).otherwise("sector")),
                             "c", spec)
    with pytest.raises(ValueError, match="missing columns \\['book_yield'\\]"):
        co.compute_composite(df.drop("book_yield"), "c", spec)


def test_regime_composite_uses_the_dates_table():
    df = co.build_composites(panel(), ["feat_composite_v31_smooth"])
    out = co.compute_composite(df, "feat_composite_v33_regime")
    tables = co.COMPOSITES["feat_composite_v33_regime"].tables()
    for reg in ["normal_vol_bull", "high_vol_bear", None]:
        sub = df.filter(pl.col("regime").is_null() if reg is None else pl.col("regime") == reg)
        exp = co.compute_composite(sub, "e", co.CompositeSpec(tables[reg or "default"]))
        got = out.join(exp.select("ticker", "date", "e"), on=["ticker", "date"])
        assert got.height == sub.height and np.allclose(got["feat_composite_v33_regime"], got["e"])
    with pytest.raises(ValueError, match="no weight table for regimes \\['sideways'\\]"):
        co.compute_composite(df.with_columns(regime=pl.lit("sideways")), "feat_composite_v33_regime")


def test_smoothed_composite_is_a_fixed_trailing_window():
    df = co.build_composites(panel(start=dt.date(2022, 1, 3), end=dt.date(2023, 6, 30)), ["feat_composite_v31"])
    full = co.compute_composite(df, "feat_composite_v31_smooth")
    later = co.compute_composite(df.filter(pl.col("date") >= dt.date(2023, 1, 3)), "feat_composite_v31_smooth")
    w = co.COMPOSITES["feat_composite_v31_smooth"].smooth_window
    ok_from = calendar.sessions_offset(dt.date(2023, 1, 3), w)
    a = full.filter(pl.col("date") >= ok_from).sort("ticker", "date")
    b = later.filter(pl.col("date") >= ok_from).sort("ticker", "date")
    assert a.height == b.height > 0
    assert np.max(np.abs(a["feat_composite_v31_smooth"].to_numpy() - b["feat_composite_v31_smooth"].to_numpy())) < 1e-9
    # hand check: the mean of the last w sessions of v31 for one ticker
    t = full.filter(pl.col("ticker") == "T03").sort("date")
    assert t["feat_composite_v31_smooth"][-1] == pytest.approx(t["feat_composite_v31"].tail(w).mean())
    # a missing day is skipped, not shifted
    gap = full.filter(~((pl.col("ticker") == "T03") & (pl.col("date") == t["date"][-2])))
    g = co.compute_composite(gap.drop("feat_composite_v31_smooth"), "feat_composite_v31_smooth")
    g3 = g.filter(pl.col("ticker") == "T03").sort("date")
    vals = t["feat_composite_v31"].tail(w).to_list()
    assert g3["feat_composite_v31_smooth"][-1] == pytest.approx(np.mean(vals[:-2] + vals[-1:]))
