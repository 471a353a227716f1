"""Rounding is never amplified: every input of the feature graph perturbed by 1e-13 relative moves no
continuous output by more than 1e-9 (of its value, or of the column's typical size for values near 0).

The market is small (40 tickers: several sectors hold 1-3 names, where a cross-sectional spread of
equal values is pure rounding) and the comparison covers every feature table of Phases 1-5. The
discontinuities Kairos has by design are kept away by the construction: the perturbation is far below
any threshold gap (ADV and price filters, regime cut-offs), and ranks and labels of exactly tied
values do not arise from continuous inputs perturbed independently.
"""

import shutil

import polars as pl
import pytest
from dagster import AssetSelection, DagsterInstance

from kairos_dagster.definitions import build_definitions
from kairos_dagster.defs.features.automation import FEATURE_GROUPS
from kairos_dagster.instance.runner import run_selection
from kairos_dagster.settings import load_settings
from kairos_dagster.warehouse import store

N_TICKERS = 40
AS_OF = "2023-12-02"  # one feed snapshot, whatever the day the test runs
HISTORY = ("2022-06-06", "2023-11-27")
WEEKS = ("2023-10-30", "2023-11-27")
SYNC = AssetSelection.groups("sync")
MARKET = AssetSelection.assets("universe", "market_returns")
FEATURES = AssetSelection.groups(*[g for g in FEATURE_GROUPS if not g.startswith(("phase6", "phase7", "reports"))])
SOURCE_TABLES = ("sep_base", "daily", "sf1", "sf2", "sf3")
PERTURBATION = 1e-13
TOLERANCE = 1e-9


def _defs(path):
    return build_definitions(load_settings({
        "KAIROS_DUCKDB_PATH": str(path), "KAIROS_SYNTHETIC_TICKERS": str(N_TICKERS), "KAIROS_AS_OF": AS_OF,
        "KAIROS_START_DATE": HISTORY[0]}))


def _perturb(path) -> int:
    """Multiply every float of every source table by 1 +- 1e-13, the sign drawn per cell from a hash."""
    cells = 0
    with store.connect(path) as con:
        for table in SOURCE_TABLES:
            cols = [c for c, t in store.table_columns(con, table).items() if t in ("DOUBLE", "FLOAT")]
            sets = ", ".join(
                f"{store.ident(c)} = {store.ident(c)} * (1 + {PERTURBATION} * "
                f"(CASE WHEN hash(ticker, rowid, '{c}') % 2 = 0 THEN 1 ELSE -1 END))" for c in cols)
            con.execute(f"UPDATE {table} SET {sets}")
            cells += len(cols) * con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return cells


def _feature_tables(path) -> dict[str, pl.DataFrame]:
    with store.connect(path, read_only=True) as con:
        names = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        keep = [t for t in names if t.startswith(("feat_", "alpha_", "universe", "regime_", "market_returns"))]
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").pl() for t in keep}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("float_noise")
    base, noisy = root / "base.duckdb", root / "noisy.duckdb"
    with DagsterInstance.ephemeral() as instance:
        assert run_selection(_defs(base), SYNC, partition_range=HISTORY, instance=instance).success
        shutil.copy(base, noisy)
        cells = _perturb(noisy)
        for path in (base, noisy):
            defs = _defs(path)
            assert run_selection(defs, MARKET, partition_range=HISTORY, instance=instance).success
            assert run_selection(defs, FEATURES, partition_range=WEEKS, instance=instance).success
    return base, noisy, cells


def test_the_market_has_sectors_of_one_to_three_names(pair):
    base, _, _ = pair
    with store.connect(base, read_only=True) as con:
        sizes = con.execute(
            "SELECT u.date, t.sector, count(*) n FROM universe u JOIN tickers t ON t.ticker = u.ticker "
            "AND t.\"table\" = 'SEP' WHERE u.date >= ? GROUP BY ALL", [WEEKS[0]]).pl()
    assert sizes.filter(pl.col("n") <= 3).height > 0


def test_no_continuous_output_moves_beyond_rounding(pair):
    base, noisy, cells = pair
    assert cells > 50_000
    a, b = _feature_tables(base), _feature_tables(noisy)
    assert set(a) == set(b) and {"feat_composite_v31", "alpha_composite_v8", "feat_trend"} <= set(a)
    moved = {}
    for name in sorted(a):
        x, y = a[name], b[name]
        assert x.columns == y.columns and x.height == y.height, name
        for c in x.columns:
            u, v = x.get_column(c), y.get_column(c)
            if not (u.is_null() == v.is_null()).all():
                moved[f"{name}.{c}"] = "nulls differ"
                continue
            if not u.dtype.is_float():
                if not u.equals(v):
                    moved[f"{name}.{c}"] = f"{(u != v).sum()} values differ"
                continue
            scale = u.drop_nulls().abs().median() or 1.0
            limit = pl.max_horizontal(u.abs(), v.abs(), pl.lit(scale)) * TOLERANCE
            frame = pl.DataFrame({"u": u, "v": v, "limit": pl.select(limit).to_series()}).drop_nulls()
            worst = frame.select(((pl.col("u") - pl.col("v")).abs() / pl.col("limit")).max()).item()
            if worst is not None and worst > 1.0:
                moved[f"{name}.{c}"] = worst * TOLERANCE
    assert not moved, f"moved beyond {TOLERANCE} relative by a {PERTURBATION} perturbation: {moved}"
