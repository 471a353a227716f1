import datetime as dt
import math

import numpy as np
import polars as pl
import pytest
import xgboost as xgb

from kairos_dagster.calendar import rebalance_dates_between, sessions_between, sessions_offset
from kairos_dagster.ml.dataset import (
    DatasetError,
    feature_matrix,
    fit_categories,
    label_end_dates,
    training_rows,
)
from kairos_dagster.ml.train import predict_proba, train_classifier
from kairos_dagster_tests.fixtures.ml_market import FEATURES, make_market

LABEL = "label_top_quintile_5d"
START, END = dt.date(2020, 1, 6), dt.date(2020, 12, 31)


@pytest.fixture(scope="module")
def market():
    return make_market(START, END, n_tickers=40, seed=3)


@pytest.fixture(scope="module")
def rows(market):
    f, t = market
    out, stats = training_rows(f, t, FEATURES, LABEL, start=START, end=dt.date(2020, 9, 30),
                               label_end=dt.date(2020, 10, 7))
    return out


def test_label_end_dates_match_calendar():
    days = sessions_between(dt.date(2020, 11, 20), dt.date(2021, 1, 8))
    got = label_end_dates(pl.Series(days)).to_list()
    assert got == [sessions_offset(d, 5) for d in days]


def test_training_rows_are_weekly_rebalance_dates_inside_the_horizon(market, rows):
    assert set(rows["date"].unique()) == set(rebalance_dates_between(START, dt.date(2020, 9, 30)))
    assert rows["label_end_date"].max() <= dt.date(2020, 10, 7)
    assert rows.height == 40 * rows["date"].n_unique()
    daily, _ = training_rows(*market, FEATURES, LABEL, start=START, end=dt.date(2020, 3, 31),
                             label_end=dt.date(2020, 4, 8), rows="daily")
    assert daily["date"].n_unique() == len(sessions_between(START, dt.date(2020, 3, 31)))


@pytest.mark.parametrize("features, match", [
    (["f_signal_a", "ret_5d_f"], "feat_targets"),
    (["f_signal_a", "label_top_quintile_5d"], "feat_targets"),
    (["f_signal_a", "ret_21d_f"], "feat_targets"),
    (["f_signal_a", "nope"], r"features is missing columns \['nope'\]"),
])
def test_targets_can_never_be_features(market, features, match):
    f, t = market
    f = f.with_columns(pl.lit(0.0).alias("ret_21d_f"))
    with pytest.raises(DatasetError, match=match):
        training_rows(f, t, features, LABEL, start=START, end=dt.date(2020, 6, 30), label_end=dt.date(2020, 7, 8))


def test_bad_input_is_named(market):
    f, t = market
    kw = dict(start=START, end=dt.date(2020, 6, 30), label_end=dt.date(2020, 7, 8))
    dup = pl.concat([f, f.filter((pl.col("ticker") == "T007") & (pl.col("date") == dt.date(2020, 3, 6)))])
    with pytest.raises(DatasetError, match="ticker=T007 date=2020-03-06"):
        training_rows(dup, t, FEATURES, LABEL, **kw)
    inf = f.with_columns(pl.when((pl.col("ticker") == "T003") & (pl.col("date") == dt.date(2020, 2, 14)))
                         .then(np.inf).otherwise(pl.col("f_noise_2")).alias("f_noise_2"))
    rows_, _ = training_rows(inf, t, FEATURES, LABEL, **kw)
    with pytest.raises(DatasetError, match=r"\['f_noise_2'\] at ticker=T003 date=2020-02-14"):
        feature_matrix(rows_, FEATURES, fit_categories(rows_, FEATURES))
    with pytest.raises(DatasetError, match="no rows on 1 training dates.*2020-05-15"):
        training_rows(f.filter(pl.col("date") != dt.date(2020, 5, 15)), t, FEATURES, LABEL, **kw)
    with pytest.raises(DatasetError, match="look-ahead"):
        training_rows(f, t, FEATURES, LABEL, start=START, end=dt.date(2020, 6, 30), label_end=dt.date(2020, 7, 1))
    bad = t.with_columns(pl.when(pl.col("ticker") == "T001").then(2).otherwise(pl.col(LABEL)).alias(LABEL))
    with pytest.raises(DatasetError, match="must be 0/1.*ticker=T001"):
        training_rows(f, bad, FEATURES, LABEL, **kw)


def test_a_ticker_horizon_past_the_label_end_is_purged_and_counted(market):
    """A halted name's 5 own sessions end later than the calendar's: that row must not train a model
    whose labels end before its horizon does, and the purge uses the later end."""
    f, t = market
    d, label_end = dt.date(2020, 9, 25), dt.date(2020, 10, 7)  # calendar horizon of d ends 2020-10-02
    t = t.with_columns(pl.col("date").map_batches(label_end_dates).alias("label_end_date")).with_columns(
        pl.when((pl.col("ticker") == "T001") & (pl.col("date") == d)).then(pl.lit(dt.date(2020, 10, 9)))
        .otherwise(pl.col("label_end_date")).alias("label_end_date"))
    out, stats = training_rows(f, t, FEATURES, LABEL, start=START, end=dt.date(2020, 9, 30), label_end=label_end)
    assert stats["rows_horizon_after_label_end"] == 1
    assert out.filter((pl.col("ticker") == "T001") & (pl.col("date") == d)).height == 0
    assert out.filter(pl.col("date") == d).height == 39 and out["label_end_date"].max() <= label_end
    # with a later label end the row trains, carrying its own (later) horizon end for every purge
    out2, stats2 = training_rows(f, t, FEATURES, LABEL, start=START, end=dt.date(2020, 9, 30),
                                 label_end=dt.date(2020, 10, 9))
    row = out2.filter((pl.col("ticker") == "T001") & (pl.col("date") == d))
    assert stats2["rows_horizon_after_label_end"] == 0 and row["label_end_date"].to_list() == [dt.date(2020, 10, 9)]
    assert out2.filter((pl.col("ticker") == "T000") & (pl.col("date") == d))["label_end_date"].to_list() == [
        sessions_offset(d, 5)]


def test_null_labels_are_dropped_and_counted(market):
    f, t = market
    t = t.with_columns(pl.when(pl.col("ticker") == "T000").then(None).otherwise(pl.col(LABEL)).alias(LABEL))
    out, stats = training_rows(f, t, FEATURES, LABEL, start=START, end=dt.date(2020, 6, 30),
                               label_end=dt.date(2020, 7, 8))
    assert "T000" not in out["ticker"].to_list()
    assert stats["rows_null_label"] == out["date"].n_unique()


def test_categoricals_are_encoded_by_sorted_vocabulary_unseen_is_missing(rows):
    cats = fit_categories(rows, FEATURES)
    assert cats == {"sector": ["Energy", "Health", "Tech"]}
    frame = rows.head(3).with_columns(pl.Series("sector", ["Tech", "Utilities", None]))
    x = feature_matrix(frame, FEATURES, cats)
    col = x[:, FEATURES.index("sector")]
    assert col[0] == 2.0 and math.isnan(col[1]) and math.isnan(col[2])


def test_training_is_deterministic_byte_for_byte(market, rows):
    f, _ = market
    params = {"num_boost_round": 80}
    a = train_classifier(rows, FEATURES, LABEL, params, seed=11)
    b = train_classifier(rows, FEATURES, LABEL, params, seed=11)
    score = f.filter(pl.col("date") >= dt.date(2020, 10, 12))
    pa, pb = predict_proba(a, score, FEATURES), predict_proba(b, score, FEATURES)
    assert pa.to_numpy().tobytes() == pb.to_numpy().tobytes()
    assert bytes(a.booster.save_raw("ubj")) == bytes(b.booster.save_raw("ubj"))
    c = train_classifier(rows, FEATURES, LABEL, params, seed=12)
    assert predict_proba(c, score).to_numpy().tobytes() != pa.to_numpy().tobytes()
    assert pa.min() > 0 and pa.max() < 1 and pa.len() == score.height


def test_early_stopping_on_purged_time_tail(rows):
    m = train_classifier(rows, FEATURES, LABEL, {"num_boost_round": 400, "early_stopping_rounds": 10,
                                                 "learning_rate": 0.3}, seed=1)
    assert m.booster.num_boosted_rounds() == m.best_iteration + 1 < 400
    n_dates = rows["date"].n_unique()
    assert m.n_valid_rows == 40 * round(0.2 * n_dates)
    assert m.n_fit_rows == 40 * (n_dates - round(0.2 * n_dates) - 1)  # one week purged before the tail
    assert {"auc", "rank_ic", "icir"} <= set(m.valid_metrics)
    assert m.feature_gain[0][0] in ("f_signal_a", "f_signal_b")
    no_stop = train_classifier(rows, FEATURES, LABEL, {"num_boost_round": 25, "valid_fraction": 0}, seed=1)
    assert no_stop.booster.num_boosted_rounds() == 25 and no_stop.n_valid_rows == 0


def test_scoring_with_other_features_is_refused(rows):
    m = train_classifier(rows, FEATURES, LABEL, {"num_boost_round": 5}, seed=1)
    with pytest.raises(DatasetError, match="differ from the model"):
        predict_proba(m, rows, FEATURES[::-1])


def test_bin_cuts_come_from_a_seeded_sample_of_the_fit_rows(rows, monkeypatch):
    from kairos_dagster.ml import train

    x = feature_matrix(rows, FEATURES, fit_categories(rows, FEATURES))
    y = rows[LABEL].to_numpy()
    full = train.quantized(x, y, FEATURES, 64, seed=5, n_threads=1)
    monkeypatch.setattr(train, "SKETCH_ROWS", 300)
    sampled = train.quantized(x, y, FEATURES, 64, seed=5, n_threads=1)
    picked = np.sort(np.random.default_rng(5).choice(len(x), 300, replace=False))
    own = xgb.QuantileDMatrix(x[picked], max_bin=64, nthread=1, feature_names=FEATURES)
    cuts = [c.tobytes() for c in sampled.get_quantile_cut()]
    assert cuts == [c.tobytes() for c in own.get_quantile_cut()]  # the sample's cuts, all rows binned with them
    assert cuts != [c.tobytes() for c in full.get_quantile_cut()]
    assert sampled.num_row() == len(x)
    assert cuts == [c.tobytes() for c in train.quantized(x, y, FEATURES, 64, seed=5, n_threads=1).get_quantile_cut()]
    # A sampled sketch still finds the planted signal and stays byte-for-byte deterministic.
    a = train_classifier(rows, FEATURES, LABEL, {"num_boost_round": 60}, seed=2)
    b = train_classifier(rows, FEATURES, LABEL, {"num_boost_round": 60}, seed=2)
    assert bytes(a.booster.save_raw("ubj")) == bytes(b.booster.save_raw("ubj"))
    assert a.feature_gain[0][0] in ("f_signal_a", "f_signal_b")


def test_a_prepared_matrix_boosts_like_a_plain_fit_and_early_stops_on_its_tail(rows):
    from kairos_dagster.ml.train import boost, booster_proba, fit_matrix

    for valid_fraction in (0.0, 0.2):
        params = {"num_boost_round": 300, "valid_fraction": valid_fraction, "max_bin": 64, "learning_rate": 0.3,
                  "early_stopping_rounds": 10}
        matrix = fit_matrix(rows, FEATURES, LABEL, max_bin=64, valid_fraction=valid_fraction, seed=3)
        plain = train_classifier(rows, FEATURES, LABEL, params, seed=3)
        booster, best = boost(matrix, params, seed=3)
        assert bytes(booster.save_raw("ubj")) == bytes(plain.booster.save_raw("ubj"))
        assert booster_proba(booster, rows, FEATURES, matrix.categories).equals(predict_proba(plain, rows))
        assert best == plain.best_iteration and booster.num_boosted_rounds() == best + 1
        assert (best < 299) == (valid_fraction > 0)  # the tail stops it; without one all rounds are kept
    with pytest.raises(ValueError, match="max_bin 256 differs"):
        boost(matrix, {**params, "max_bin": 256}, seed=3)


def test_a_feature_the_sketch_sample_barely_sees_gets_cuts_from_its_own_values(rows, monkeypatch):
    from kairos_dagster.ml import train

    x = feature_matrix(rows, FEATURES, fit_categories(rows, FEATURES)).copy()
    y = rows[LABEL].to_numpy()
    monkeypatch.setattr(train, "SKETCH_ROWS", 300)
    picked = np.sort(np.random.default_rng(5).choice(len(x), 300, replace=False))
    sparse = np.setdiff1d(np.arange(len(x)), picked)[:40]  # 40 values, none of them in the sample
    x[:, 0] = np.nan
    x[sparse, 0] = np.arange(40, dtype=np.float32)

    def cuts(m: xgb.QuantileDMatrix) -> list[bytes]:
        return [c.tobytes() for c in m.get_quantile_cut()]

    # the other features keep the row sample's cuts; feature 0 is sketched from its 40 values
    expected = x[picked].copy()
    expected[:, 0] = np.nan
    expected[:40, 0] = np.arange(40, dtype=np.float32)
    want = xgb.QuantileDMatrix(expected, max_bin=64, nthread=1, feature_names=FEATURES)
    got = train.quantized(x, y, FEATURES, 64, seed=5, n_threads=1)
    assert cuts(got) == cuts(want)
    row_sample_only = xgb.QuantileDMatrix(x[picked], max_bin=64, nthread=1, feature_names=FEATURES)
    assert cuts(got) != cuts(row_sample_only)  # which would have no cut for feature 0
    assert got.get_quantile_cut()[1][got.get_quantile_cut()[0][0]:got.get_quantile_cut()[0][1]].size > 10
    x[picked[:40], 0] = np.arange(40, dtype=np.float32)  # now the sample holds them all: the row sample alone
    own = xgb.QuantileDMatrix(x[picked], max_bin=64, nthread=1, feature_names=FEATURES)
    again = train.quantized(x, y, FEATURES, 64, seed=5, n_threads=1)
    assert cuts(again) == cuts(own)
