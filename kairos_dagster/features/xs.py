"""Cross-sectional verbs (Zipline-style) as polars expressions.

Every verb works per date by default (``by=("date",)``) and optionally per group as well (e.g.
``by=("date", "sector")``). Conventions shared by all verbs:

- NaN and ±inf are treated as missing: they become null, stay null and are not counted in means,
  standard deviations, ranks or bucket sizes.
- Standard deviations are population (ddof=0) unless ``ddof`` says otherwise.
- A group whose standard deviation is 0, or within float rounding of its scale (``is_flat``:
  std <= FLAT_RTOL * max(1, |mean|)), or which has a single value, gives a null z-score rather than ±inf
  or rounding noise scaled up to ±1: there is no cross-sectional information in it. (Two names equal up
  to 1e-17 would otherwise get z = ±1, and a run with one more week of history could flip them.)
- Rows whose group key is null form no group: their result is null (a null sector is not a sector).
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

By = str | Sequence[str]
# Relative spread below which a group is flat: float64 rounding of sums and means is ~1e-16 relative, and
# inputs computed along different paths (a longer history, another chunking) agree to ~1e-15; real
# cross-sectional spreads are many orders of magnitude above this.
FLAT_RTOL = 1e-12


def spread_ok(sd: pl.Expr, mean: pl.Expr) -> pl.Expr:
    """True where a standard deviation is real information, not rounding (see FLAT_RTOL)."""
    return sd > FLAT_RTOL * pl.max_horizontal(pl.lit(1.0), mean.abs())


def _keys(by: By) -> list[str]:
    return [by] if isinstance(by, str) else list(by)


def clean(col: str | pl.Expr) -> pl.Expr:
    """The column as Float64 with NaN/±inf turned into null (missing)."""
    e = pl.col(col) if isinstance(col, str) else col
    e = e.cast(pl.Float64)
    return pl.when(e.is_finite()).then(e).otherwise(None)


def _null_if_key_null(e: pl.Expr, keys: list[str]) -> pl.Expr:
    cond = pl.all_horizontal(pl.col(k).is_not_null() for k in keys)
    return pl.when(cond).then(e).otherwise(None)


def _name(col: str | pl.Expr) -> str | None:
    return col if isinstance(col, str) else None


def _alias(e: pl.Expr, col: str | pl.Expr) -> pl.Expr:
    n = _name(col)
    return e.alias(n) if n is not None else e


def demean(col: str | pl.Expr, by: By = ("date",)) -> pl.Expr:
    """x minus the mean of x over its group (nulls ignored)."""
    keys = _keys(by)
    x = clean(col)
    return _alias(_null_if_key_null(x - x.mean().over(keys), keys), col)


def zscore(col: str | pl.Expr, by: By = ("date",), ddof: int = 0) -> pl.Expr:
    """(x - mean) / std over the group; population std (ddof=0); null where the group is flat (std 0 or
    within rounding of its scale) or std is undefined."""
    keys = _keys(by)
    x = clean(col)
    sd, mean = x.std(ddof=ddof).over(keys), x.mean().over(keys)
    z = pl.when(spread_ok(sd, mean)).then((x - mean) / sd).otherwise(None)
    return _alias(_null_if_key_null(z, keys), col)


def winsorize(col: str | pl.Expr, lower: float = -3.0, upper: float = 3.0) -> pl.Expr:
    """Clip x into [lower, upper] (for z-scores: at ±3 standard deviations). Nulls stay null."""
    if lower > upper:
        raise ValueError(f"winsorize: lower bound {lower} is above upper bound {upper}")
    return _alias(clean(col).clip(lower, upper), col)


def winsorize_quantile(
    col: str | pl.Expr, lower_q: float = 0.01, upper_q: float = 0.99, by: By = ("date",)
) -> pl.Expr:
    """Clip x at its group's lower/upper quantiles (linear interpolation), per date by default."""
    if not 0.0 <= lower_q <= upper_q <= 1.0:
        raise ValueError(f"winsorize_quantile: need 0 <= lower_q <= upper_q <= 1, got {lower_q}, {upper_q}")
    keys = _keys(by)
    x = clean(col)
    lo = x.quantile(lower_q, "linear").over(keys)
    hi = x.quantile(upper_q, "linear").over(keys)
    return _alias(_null_if_key_null(pl.min_horizontal(pl.max_horizontal(x, lo), hi), keys), col)


def zscore_clipped(col: str | pl.Expr, by: By = ("date",), limit: float = 3.0) -> pl.Expr:
    """The z-score over the group, winsorized at ±limit (the standard way factors enter composites)."""
    return winsorize(zscore(col, by), -limit, limit)


def rank_pct(col: str | pl.Expr, by: By = ("date",)) -> pl.Expr:
    """Average rank / number of non-null values in the group: in (0, 1], ties share a rank."""
    keys = _keys(by)
    x = clean(col)
    r = x.rank("average").over(keys) / x.count().over(keys)
    return _alias(_null_if_key_null(r, keys), col)


def neutralize(col: str | pl.Expr, group: str = "sector", by: By = ("date",)) -> pl.Expr:
    """Remove the group mean per date (e.g. sector-neutral): demean over (date, group)."""
    return demean(col, [*_keys(by), group])


def quantile_bucket(col: str | pl.Expr, n: int = 5, by: By = ("date",)) -> pl.Expr:
    """Bucket 1..n by rank within the group (n=5: quintiles, 5 = highest): floor((rank - 0.5) * n / count) + 1,
    ranks averaged over ties (ties share a bucket)."""
    if n < 1:
        raise ValueError(f"quantile_bucket: n must be >= 1, got {n}")
    keys = _keys(by)
    x = clean(col)
    # midpoint rule: symmetric for any group size (4 names in 5 buckets -> 1, 2, 4, 5)
    pos = (x.rank("average").over(keys) - 0.5) * n / x.count().over(keys)
    b = (pos.floor() + 1).clip(1, n).cast(pl.Int32)
    return _alias(_null_if_key_null(b, keys), col)


def add_zscores_clipped(
    frame: pl.DataFrame, columns: Sequence[str], by: By = ("date",), limit: float = 3.0, prefix: str = "_z_"
) -> pl.DataFrame:
    """`frame` plus `prefix + c` = zscore_clipped(c, by, limit) for every column, in one group-by pass.

    The same values as the expression verbs (population std, NaN/inf missing, null for a zero-spread
    group or a null key), but one aggregation over all columns joined back instead of one window
    expression per column: on 12M rows x 8 factors it is the difference between seconds and minutes.
    """
    keys = _keys(by)
    cols = list(dict.fromkeys(columns))
    if not cols:
        return frame
    clean_cols = [clean(c).alias(f"_x_{i}") for i, c in enumerate(cols)]
    lf = frame.lazy().with_columns(clean_cols)
    stats = lf.select(*keys, *[pl.col(f"_x_{i}") for i in range(len(cols))]).group_by(keys).agg(
        *[pl.col(f"_x_{i}").mean().alias(f"_m_{i}") for i in range(len(cols))],
        *[pl.col(f"_x_{i}").std(ddof=0).alias(f"_s_{i}") for i in range(len(cols))],
    )
    out = lf.join(stats, on=keys, how="left", maintain_order="left").with_columns(
        pl.when(spread_ok(pl.col(f"_s_{i}"), pl.col(f"_m_{i}")))
        .then(((pl.col(f"_x_{i}") - pl.col(f"_m_{i}")) / pl.col(f"_s_{i}")).clip(-limit, limit))
        .otherwise(None)
        .alias(f"{prefix}{c}")
        for i, c in enumerate(cols)
    )
    helpers = [f"_{k}_{i}" for i in range(len(cols)) for k in ("x", "m", "s")]
    return out.drop(helpers).collect(engine="in-memory")
