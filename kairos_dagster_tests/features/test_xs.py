import datetime as dt
import math

import polars as pl
import pytest

from kairos_dagster.features import xs

D1, D2 = dt.date(2024, 1, 2), dt.date(2024, 1, 3)


def frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "date": [D1, D1, D1, D1, D2, D2, D2],
            "ticker": ["A", "B", "C", "D", "A", "B", "C"],
            "sector": ["T", "T", "E", "E", "T", "T", None],
            "x": [1.0, 2.0, 3.0, None, 10.0, float("nan"), 30.0],
        }
    )


def test_zscore_population_std_and_nulls():
    out = frame().with_columns(z=xs.zscore("x"))["z"].to_list()
    # D1: values 1,2,3 (null not counted): mean 2, population std sqrt(2/3)
    s = math.sqrt(2 / 3)
    assert out[0] == pytest.approx(-1 / s) and out[1] == pytest.approx(0.0) and out[2] == pytest.approx(1 / s)
    assert out[3] is None
    # D2: NaN is missing; values 10, 30 -> mean 20, std 10
    assert out[4] == pytest.approx(-1.0) and out[5] is None and out[6] == pytest.approx(1.0)


def test_zscore_ddof1_and_constant_group_is_null():
    df = pl.DataFrame({"date": [D1] * 3 + [D2] * 2, "x": [1.0, 2.0, 3.0, 5.0, 5.0]})
    z = df.with_columns(z=xs.zscore("x", ddof=1))["z"].to_list()
    assert z[0] == pytest.approx(-1.0) and z[2] == pytest.approx(1.0)
    assert z[3] is None and z[4] is None


def test_grouped_zscore_and_neutralize_null_group_is_null():
    df = frame().with_columns(zs=xs.zscore("x", by=["date", "sector"]), n=xs.neutralize("x", "sector"))
    zs = df["zs"].to_list()
    assert zs[0] == pytest.approx(-1.0) and zs[1] == pytest.approx(1.0)
    assert zs[2] is None  # sector E on D1 has a single non-null value: std 0
    n = df["n"].to_list()
    assert n[0] == pytest.approx(-0.5) and n[1] == pytest.approx(0.5) and n[2] == pytest.approx(0.0)
    assert n[6] is None  # null sector


def test_demean_and_winsorize():
    df = frame().with_columns(d=xs.demean("x"), w=xs.winsorize("x", 1.5, 2.5))
    assert df["d"].to_list()[:3] == pytest.approx([-1.0, 0.0, 1.0])
    assert df["w"].to_list()[:3] == pytest.approx([1.5, 2.0, 2.5])
    assert df["w"][3] is None
    with pytest.raises(ValueError, match="lower bound"):
        xs.winsorize("x", 3, 1)


def test_zscore_clipped_at_3():
    df = pl.DataFrame({"date": [D1] * 11, "x": [0.0] * 10 + [100.0]})
    z = df.with_columns(z=xs.zscore_clipped("x"))["z"]
    # the outlier's raw z is sqrt(10) = 3.16 > 3
    assert z.max() == pytest.approx(3.0)
    assert z[0] == pytest.approx(-1 / math.sqrt(10))


def test_winsorize_quantile():
    df = pl.DataFrame({"date": [D1] * 5, "x": [1.0, 2.0, 3.0, 4.0, 100.0]})
    w = df.with_columns(w=xs.winsorize_quantile("x", 0.25, 0.75))["w"].to_list()
    assert w == pytest.approx([2.0, 2.0, 3.0, 4.0, 4.0])


def test_rank_pct_ties_and_nulls():
    df = pl.DataFrame({"date": [D1] * 5, "x": [3.0, 1.0, 3.0, None, 2.0]})
    r = df.with_columns(r=xs.rank_pct("x"))["r"].to_list()
    assert r[0] == pytest.approx(0.875) and r[1] == pytest.approx(0.25) and r[4] == pytest.approx(0.5)
    assert r[3] is None


def test_quantile_bucket():
    df = pl.DataFrame({"date": [D1] * 10 + [D2] * 3, "x": [float(i) for i in range(10)] + [1.0, None, 2.0]})
    b = df.with_columns(b=xs.quantile_bucket("x", 5))["b"].to_list()
    assert b[:10] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert b[10:] == [2, None, 4]  # two names in five buckets: symmetric
    four = pl.DataFrame({"date": [D1] * 4, "x": [4.0, 3.0, 2.0, 1.0]}).with_columns(b=xs.quantile_bucket("x", 5))
    assert four["b"].to_list() == [5, 4, 2, 1]
    with pytest.raises(ValueError):
        xs.quantile_bucket("x", 0)


def test_add_zscores_clipped_equals_the_expression_verbs():
    """The one-pass frame version gives the same values as zscore_clipped per column: NaN/inf missing,
    null for zero-spread groups and null keys, clipping at ±3."""
    import numpy as np

    rng = np.random.default_rng(5)
    n = 4_000
    a = rng.standard_t(3, n) * 10
    a[::97] = np.nan
    a[::211] = np.inf
    b = rng.normal(size=n)
    df = pl.DataFrame({
        "date": rng.integers(0, 40, n),
        "sector": pl.Series(rng.choice(["x", "y", "z", None], n).tolist(), dtype=pl.String),
        "a": a, "b": b, "flat": np.ones(n),
    }).with_columns(pl.when(pl.int_range(pl.len()) % 13 == 0).then(None).otherwise(pl.col("b")).alias("b"))
    for by in (["date"], ["date", "sector"]):
        fast = xs.add_zscores_clipped(df, ["a", "b", "flat"], by, 3.0)
        for c in ("a", "b", "flat"):
            slow = df.select(xs.zscore_clipped(c, by, 3.0)).to_series()
            got = fast.get_column(f"_z_{c}")
            assert (got.is_null() == slow.is_null()).all(), (by, c)
            diff = (got - slow).abs().max()
            assert diff is None or diff < 1e-12, (by, c, diff)
        assert fast.get_column("_z_flat").null_count() == n  # zero spread: no information
        assert fast.columns[:5] == df.columns  # the input is untouched, z columns appended


def test_duplicate_keys_fast_path_and_fallback():
    import datetime as dt

    from kairos_dagster.defs.features.checks import duplicate_keys

    d = [dt.date(2024, 1, 2), dt.date(2024, 1, 3)]
    ok = pl.DataFrame({"ticker": ["A", "A", "B", "B"], "date": d * 2})
    assert duplicate_keys(ok) == 0
    assert duplicate_keys(ok.reverse()) == 0  # unsorted but unique: the hash path
    dup = pl.concat([ok, ok.tail(1)])
    assert duplicate_keys(dup) == 1
    assert duplicate_keys(dup.sort("ticker", "date")) == 1  # sorted with a repeat: not strictly increasing


def test_a_group_flat_up_to_rounding_is_flat():
    """The reported case: two Real Estate names 1e-17 apart had z = +-1 (noise scaled to a full std)."""
    df = pl.DataFrame({"date": [1] * 5, "sector": ["RE", "RE", "Tech", "Tech", "Tech"],
                       "x": [-0.017071, -0.017071 + 1e-17, 1.0, 2.0, 3.0]})
    out = df.with_columns(xs.zscore("x", ("date", "sector")).alias("z"))
    assert out["z"].to_list()[:2] == [None, None]
    assert out["z"].to_list()[2:] == pytest.approx([-1.2247448714, 0.0, 1.2247448714])
    big = pl.DataFrame({"date": [1, 1], "x": [1e9, 1e9 * (1 + 1e-15)]})  # relative, not absolute
    assert big.with_columns(xs.zscore("x"))["x"].to_list() == [None, None]
    stacked = xs.add_zscores_clipped(df, ["x"], by=("date", "sector"))
    assert stacked["_z_x"].to_list()[:2] == [None, None]


def test_rounding_noise_is_never_amplified():
    """Metamorphic: every input perturbed by up to 1e-13 relative moves no z-score (plain, clipped, stacked,
    per date and per sector) by more than 1e-9, on cross-sections with 1-3 names in some sectors and
    groups that are flat up to rounding."""
    import numpy as np

    rng = np.random.default_rng(3)
    n = 4000
    sector = rng.choice(["A", "B", "C", "D", "E"], n, p=[0.6, 0.3, 0.05, 0.03, 0.02])
    x = rng.standard_normal(n)
    flat = rng.random(n) < 0.3
    x[flat & (sector == "D")] = 0.25  # a sector flat except for rounding
    df = pl.DataFrame({"date": rng.integers(0, 40, n), "sector": sector, "x": x})
    df = df.with_columns(pl.when(pl.col("x") == 0.25).then(0.25 + rng.standard_normal(n) * 1e-17)
                         .otherwise(pl.col("x")).alias("x"))
    noisy = df.with_columns(pl.col("x") * (1 + pl.Series(rng.uniform(-1e-13, 1e-13, n))))

    def scores(frame: pl.DataFrame) -> pl.DataFrame:
        out = frame.with_columns(xs.zscore("x").alias("z_date"), xs.zscore("x", ("date", "sector")).alias("z_sec"),
                                 xs.zscore_clipped("x", ("date", "sector")).alias("z_clip"))
        return xs.add_zscores_clipped(out, ["x"], by=("date", "sector"))

    a, b = scores(df), scores(noisy)
    for col in ("z_date", "z_sec", "z_clip", "_z_x"):
        assert a[col].is_null().to_list() == b[col].is_null().to_list(), col
        diff = (a[col] - b[col]).abs().max()
        assert diff is None or diff <= 1e-9, (col, diff)
