import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest

from kairos_dagster.portfolio import outputs
from kairos_dagster.portfolio.config import ML_CONFIG
from kairos_dagster.portfolio.outputs import (
    PICKS_CSV_COLUMNS,
    OutputFileError,
    picks_csv_frame,
    read_picks_csv,
    write_picks_csv,
    write_rebalance_outputs,
)
from kairos_dagster.portfolio.risk4 import build_portfolio
from kairos_dagster.portfolio.trades import TRADES_COLUMNS, TRADES_SCHEMA, plan_trades
from kairos_dagster_tests.fixtures.portfolio_frames import make_frame, make_returns

REBAL = dt.date(2026, 1, 16)
GEN = dt.datetime(2026, 1, 16, 8, 0, 0)


@pytest.fixture(scope="module")
def built():
    f = make_frame(400, seed=2)
    res = build_portfolio(f, None, make_returns(f.get_column("ticker").to_list()), ML_CONFIG)
    return res, plan_trades(res.picks, pl.DataFrame({"ticker": ["OLD"], "shares": [5], "price": [12.0]}))


def _write(tmp_path, built, **kw):
    res, trades = built
    return write_rebalance_outputs(tmp_path / "2026-01-16", res, trades, REBAL, GEN,
                                   regime={"date": dt.date(2026, 1, 15), "regime": "normal_vol_bull",
                                           "vol_regime": "normal_vol", "trend_regime": "bull"},
                                   data_freshness={"feat_matrix_v2": dt.date(2026, 1, 15)}, **kw)


def test_files_schemas_and_round_trip(tmp_path, built):
    res, trades = built
    out = _write(tmp_path, built)
    assert sorted(p.name for p in out.iterdir()) == ["picks.csv", "portfolio_summary.json", "schedule.json", "trades.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2026-01-16"]  # no temp folder left behind
    assert (out / "picks.csv").read_text().splitlines()[0] == ",".join(PICKS_CSV_COLUMNS)
    assert (out / "trades.csv").read_text().splitlines()[0] == ",".join(TRADES_COLUMNS)
    assert read_picks_csv(out / "picks.csv").equals(picks_csv_frame(res.picks))
    assert pl.read_csv(out / "trades.csv", schema=TRADES_SCHEMA).equals(trades)
    assert trades.filter(pl.col("ticker") == "OLD").get_column("reason").to_list() == ["exit_position"]

    s = json.loads((out / "portfolio_summary.json").read_text())
    assert list(s)[:7] == ["generated_at", "rebalance_date", "signal_date", "is_rebalance_day", "next_rebalance",
                           "regime", "portfolio"]
    assert (s["generated_at"], s["rebalance_date"], s["is_rebalance_day"], s["next_rebalance"]) == (
        "2026-01-16T08:00:00", "2026-01-16", True, "2026-01-23")
    assert s["regime"] == {"date": "2026-01-15", "regime": "normal_vol_bull", "vol_regime": "normal_vol",
                           "trend_regime": "bull"}
    p = s["portfolio"]
    assert p["n_positions"] == res.picks.height and p["top_n_target"] == 75
    assert p["total_weight"] == pytest.approx(res.picks["weight"].sum())
    assert p["top_5_weight"] == pytest.approx(res.picks["weight"].sort(descending=True).head(5).sum())
    assert p["estimated_vol"] == pytest.approx(res.est_vol_final) and sum(p["sector_weights"].values()) == pytest.approx(p["total_weight"])
    assert set(p["sector_weights"]) <= set(p["sector_caps"])
    assert all(p["sector_weights"][k] <= p["sector_caps"][k] + 1e-6 for k in p["sector_weights"])
    assert s["parameters"]["alpha_column"] == "alpha_ml_v2_tuned_clf"
    assert s["parameters"]["rebalance_rule"] == "Last trading day of each week"
    assert s["metrics"]["avg_adv"] == pytest.approx(res.picks["adv_20"].mean())
    assert s["data_freshness"] == {"feat_matrix_v2": "2026-01-15"}

    sch = json.loads((out / "schedule.json").read_text())
    assert sch["rule"] == "Last trading day of each week" and len(sch["next_rebalances"]) == 10
    # Good Friday 2026-04-03 is closed: that week rebalances on Thursday.
    sch = outputs.schedule_dict(GEN, dt.date(2026, 3, 20))
    assert sch["next_rebalances"][:3] == ["2026-03-27", "2026-04-02", "2026-04-10"]


def test_outputs_are_byte_identical_for_the_same_inputs(tmp_path, built):
    a = _write(tmp_path / "a", built)
    b = _write(tmp_path / "b", built)
    for name in ("picks.csv", "trades.csv", "portfolio_summary.json", "schedule.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_a_failed_write_leaves_nothing_half_written(tmp_path, built, monkeypatch):
    out = _write(tmp_path, built)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="already exists"):
        _write(tmp_path, built)
    real = Path.write_text

    def failing(self, text, *a, **k):
        if self.name == "portfolio_summary.json":
            raise OSError("disk full")
        return real(self, text, *a, **k)

    monkeypatch.setattr(Path, "write_text", failing)
    with pytest.raises(OSError, match="disk full"):
        _write(tmp_path, built, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old folder, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2026-01-16"]
    with pytest.raises(OSError, match="disk full"):
        _write(tmp_path / "fresh", built)
    assert not (tmp_path / "fresh" / "2026-01-16").exists() and list((tmp_path / "fresh").iterdir()) == []
    monkeypatch.undo()
    _write(tmp_path, built, overwrite=True)  # a later overwrite replaces the folder, leaving no temp folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2026-01-16", "fresh"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_read_picks_csv_errors_name_the_problem(tmp_path, built):
    res, _ = built
    good = picks_csv_frame(res.picks)
    write_picks_csv(tmp_path / "p.csv", good)

    def bad(frame, match):
        frame.write_csv(tmp_path / "bad.csv")
        with pytest.raises(OutputFileError, match=match):
            read_picks_csv(tmp_path / "bad.csv")

    bad(good.drop("shares"), "missing column.*shares")
    t1 = good.get_column("ticker")[1]
    bad(good.cast({"weight": pl.String}).with_columns(
        pl.when(pl.col("ticker") == t1).then(pl.lit("abc")).otherwise(pl.col("weight")).alias("weight")),
        rf"column weight row 3 \(ticker {t1}\): 'abc' is not a valid Float64")
    bad(good.with_columns(pl.when(pl.col("ticker") == t1).then(-1).otherwise(pl.col("shares")).alias("shares")),
        rf"column shares row 3 \(ticker {t1}\): -1 must be >= 0")
    bad(good.with_columns(pl.when(pl.col("ticker") == t1).then(None).otherwise(pl.col("price")).alias("price")),
        rf"column price row 3 \(ticker {t1}\) is empty")
    bad(pl.concat([good, good.head(1)]), "duplicate ticker")
    with pytest.raises(OutputFileError, match="does not exist"):
        read_picks_csv(tmp_path / "nope.csv")
    # Prior-only names have no rank or alpha_z: empty cells are accepted there.
    ok = good.with_columns(pl.lit(None, pl.Int64).alias("rank"), pl.lit(None, pl.Float64).alias("alpha_z"))
    write_picks_csv(tmp_path / "ok.csv", ok)
    assert read_picks_csv(tmp_path / "ok.csv").equals(ok)
    # A picks.csv is a valid prior: building with it smooths toward the new target.
    prior = read_picks_csv(tmp_path / "p.csv").select("ticker", "weight", "sector")
    f = make_frame(400, seed=7)
    res2 = build_portfolio(f, prior, make_returns(f.get_column("ticker").to_list()), ML_CONFIG)
    assert not res2.fresh_start and res2.turnover <= ML_CONFIG.max_turnover + 1e-9
