import datetime as dt
import json

import duckdb
import numpy as np
import polars as pl
import pytest

from kairos_dagster.calendar import rebalance_dates_between, signal_date_for, week_sessions
from kairos_dagster.ml.metrics import ML_METRICS_SCHEMA, ic_stats, rank_ic_by_date
from kairos_dagster.ml.predict import TunerConfig, walk_forward_predict
from kairos_dagster_tests.fixtures.ml_market import FEATURES, make_market

ANCHOR = dt.date(2020, 1, 6)
PARAMS = {"num_boost_round": 40, "max_depth": 3}
KW = dict(features=FEATURES, anchor=ANCHOR, params=PARAMS, retrain_weeks=8, n_threads=1, seed=3,
          label="label_top_quintile_5d")  # the synthetic fixture's label column


@pytest.fixture(scope="module")
def market():
    return make_market(ANCHOR, dt.date(2021, 3, 31), n_tickers=40, seed=9, strength=0.15)


def mondays(first: dt.date, n: int) -> list[dt.date]:
    return [first + dt.timedelta(weeks=i) for i in range(n)]


def test_span_equals_week_by_week_and_models_are_reused(market, tmp_path):
    f, t = market
    weeks = mondays(dt.date(2020, 9, 28), 6)  # crosses the retrain point 2020-10-12 (anchor + 5 * 8 weeks)
    span = walk_forward_predict(f, t, weeks, model_name="m", models_dir=tmp_path / "a", **KW)
    single = pl.concat([
        walk_forward_predict(f, t, [w], model_name="m", models_dir=tmp_path / "b", **KW).predictions
        for w in reversed(weeks)
    ]).sort(["date", "ticker"])
    assert span.predictions.equals(single)
    assert span.predictions["model_version"].n_unique() == 2
    # every session of every requested week, every ticker given
    sessions = [d for w in weeks for d in week_sessions(w)]
    assert sorted(span.predictions["date"].unique().to_list()) == sessions
    assert span.predictions.height == 40 * len(sessions)
    assert span.predictions.columns == ["ticker", "date", "alpha_ml_v2_clf", "model_version"]
    # a rerun reuses the saved models: it needs no training history at all
    only_scored = f.filter(pl.col("date") >= weeks[0])
    again = walk_forward_predict(only_scored, t, weeks, model_name="m", models_dir=tmp_path / "a", **KW)
    assert again.predictions.equals(span.predictions)
    assert again.registry.equals(span.registry)
    # ... whereas a fresh registry refuses to train on truncated history
    with pytest.raises(ValueError, match="features has no rows on .* training dates"):
        walk_forward_predict(only_scored, t, weeks, model_name="m", models_dir=tmp_path / "c", **KW)


def test_no_look_ahead_future_data_does_not_change_predictions(market, tmp_path):
    f, t = market
    week = dt.date(2020, 10, 19)  # model retrained at 2020-10-12 from labels ending by 2020-10-02
    base = walk_forward_predict(f, t, [week], model_name="m", models_dir=tmp_path / "a", **KW)
    plan = base.plans[week]
    assert plan.label_end == dt.date(2020, 10, 2)
    rng = np.random.default_rng(0)
    # scramble every label and return whose row date is after train_end, and all later features
    t2 = t.with_columns(
        pl.when(pl.col("date") > plan.train_end).then(pl.lit(rng.integers(0, 2, t.height)))
        .otherwise(pl.col("label_top_quintile_5d")).cast(pl.Int8).alias("label_top_quintile_5d"),
        pl.when(pl.col("date") > plan.train_end).then(pl.col("ret_5d_f") * -1).otherwise(pl.col("ret_5d_f")),
    )
    in_week = pl.col("date").is_between(week, week + dt.timedelta(days=6))
    f2 = f.with_columns(pl.when((pl.col("date") > plan.train_end) & ~in_week).then(-pl.col("f_signal_a"))
                        .otherwise(pl.col("f_signal_a")).alias("f_signal_a"))
    moved = walk_forward_predict(f2, t2, [week], model_name="m", models_dir=tmp_path / "b", **KW)
    assert moved.predictions.equals(base.predictions)
    # sanity: the same scramble before train_end does change the model
    t3 = t.with_columns((1 - pl.col("label_top_quintile_5d")).alias("label_top_quintile_5d"))
    flipped = walk_forward_predict(f, t3, [week], model_name="m", models_dir=tmp_path / "c", **KW)
    assert not flipped.predictions["alpha_ml_v2_clf"].equals(base.predictions["alpha_ml_v2_clf"])


def test_metrics_frame_loads_into_duckdb(market, tmp_path):
    f, t = market
    res = walk_forward_predict(f, t, mondays(dt.date(2020, 10, 12), 2), model_name="m", models_dir=tmp_path, **KW)
    m = res.metrics
    assert dict(m.schema) == ML_METRICS_SCHEMA
    assert {"train", "valid", "oos", "plan"} == set(m["split"].unique())
    assert {"rows", "train_seconds", "auc", "rank_ic", "icir", "gain_total"} <= set(m["metric"].unique())
    gains = m.filter(pl.col("metric") == "gain_total")
    assert gains["feature"].null_count() == 0 and gains.height <= 20
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE TABLE ml_metrics AS SELECT * FROM m")
    assert con.execute("SELECT count(*) FROM ml_metrics WHERE split = 'oos' AND metric = 'auc'").fetchone() == (2,)


def test_tuned_model_uses_stored_tune_and_is_reproducible(market, tmp_path):
    f, t = market
    weeks = [dt.date(2020, 10, 19)]
    tuner = TunerConfig(n_trials=3, n_folds=2)
    kw = {**KW, "params": {"num_boost_round": 30}, "retrain_weeks": 13}  # first tune point 2020-04-06
    a = walk_forward_predict(f, t, weeks, model_name="tuned", models_dir=tmp_path, tuner=tuner,
                             alpha_column="alpha_ml_v2_tuned_clf", **kw)
    assert list((tmp_path / "tuned" / "tuning").glob("tune_2020-04-06_*.json"))
    # the same tuning in a fresh registry, its study in a database (the parallel-workers storage)
    (tmp_path / "fresh").mkdir()
    url = f"sqlite:///{tmp_path / 'fresh' / 'optuna.db'}"
    b = walk_forward_predict(f, t, weeks, model_name="tuned", models_dir=tmp_path / "fresh",
                             tuner=TunerConfig(n_trials=3, n_folds=2, storage_url=url),
                             alpha_column="alpha_ml_v2_tuned_clf", **kw)
    assert a.predictions.equals(b.predictions)
    import optuna

    studies = optuna.get_all_study_summaries(storage=url)
    assert [s.study_name.startswith("tune_2020-04-06_") for s in studies] == [True]
    assert studies[0].n_trials == 3
    assert '"tune"' in a.registry["metrics_json"][0]


def test_planted_signal_gives_positive_oos_weekly_rank_ic(tmp_path):
    f, t = make_market(ANCHOR, dt.date(2021, 6, 30), n_tickers=80, seed=21, strength=0.12)
    weeks = mondays(dt.date(2020, 6, 1), 52)
    res = walk_forward_predict(f, t, weeks, model_name="sig", models_dir=tmp_path,
                               **{**KW, "retrain_weeks": 13})
    signal_days = [signal_date_for(r) for r in rebalance_dates_between(weeks[0], weeks[-1] + dt.timedelta(days=6))]
    scored = res.predictions.join(t, on=["ticker", "date"]).filter(pl.col("date").is_in(signal_days))
    stats = ic_stats(rank_ic_by_date(scored, "alpha_ml_v2_clf", "ret_5d_f")["rank_ic"])
    assert stats["n_dates"] >= 50
    assert stats["rank_ic"] > 0 and stats["rank_ic_t"] >= 2.0, stats  # strength 0 gives t ~ 0.2


def test_short_tuning_window_uses_fewer_folds_and_records_it(market, tmp_path):
    """First tune point anchor + 10 weeks: 8 training dates, where fold 1 of 3 purged folds finds no fit rows."""
    f, t = market
    week = ANCHOR + dt.timedelta(weeks=10)
    res = walk_forward_predict(f, t, [week], model_name="tuned", models_dir=tmp_path, alpha_column="a",
                               tuner=TunerConfig(n_trials=2, n_folds=3), **{**KW, "retrain_weeks": 10})
    record = json.loads(next((tmp_path / "tuned" / "tuning").glob("tune_*.json")).read_text())
    assert record["status"] == "tuned" and record["n_folds"] == 2 and record["n_folds_planned"] == 3
    assert record["folds_note"] == "tuning: 2 folds (8 dates: fold 1 of 3 has no fit rows with label ending before 2020-01-17)"
    plan = res.metrics.filter(pl.col("split") == "plan")
    assert dict(zip(plan["metric"], plan["value"], strict=True))["tune_folds"] == 2.0
    assert "tuning: 2 folds" in res.notes[week]
    assert res.predictions["a"].null_count() == 0


def test_window_too_short_for_any_fold_or_model(market, tmp_path):
    """Retraining every 3 weeks: the first retrain point has 1 training date (< MIN_TRAIN_DATES) and no
    earlier model, so its weeks stay unscored and counted; the tuner keeps the fixed parameters there.
    The next point trains. A span and week-by-week runs decide the same."""
    f, t = market
    kw = {**KW, "retrain_weeks": 3}
    weeks = mondays(ANCHOR + dt.timedelta(weeks=3), 6)
    tuner = TunerConfig(n_trials=2, n_folds=3)
    span = walk_forward_predict(f, t, weeks, model_name="m", models_dir=tmp_path / "a", alpha_column="a",
                                tuner=tuner, **kw)
    assert sorted(span.unscored_weeks) == weeks[:3]
    assert "no model: 1 training dates < 4" in span.unscored_weeks[weeks[0]]
    first = span.predictions.filter(pl.col("date") < weeks[3])
    assert first.height and first["a"].null_count() == first.height and first["model_version"].null_count() == first.height
    assert span.predictions.filter(pl.col("date") >= weeks[3])["a"].null_count() == 0
    tunings = [json.loads(p.read_text()) for p in (tmp_path / "a" / "m" / "tuning").glob("*.json")]
    assert [r["status"] for r in tunings] == ["fixed_params"] and "tuning: 0 folds" in tunings[0]["folds_note"]
    single = pl.concat([walk_forward_predict(f, t, [w], model_name="m", models_dir=tmp_path / "b", alpha_column="a",
                                             tuner=tuner, **kw).predictions for w in reversed(weeks)])
    assert single.sort(["date", "ticker"]).equals(span.predictions)


def test_short_training_window_reuses_the_previous_model(market, tmp_path):
    """A rolling 6-week window whose labels are missing on most of its dates reuses the previous model."""
    f, t = market
    kw = {**KW, "retrain_weeks": 3, "max_train_weeks": 6}
    weeks = mondays(dt.date(2020, 6, 1), 6)  # retrain points 2020-06-01 and 2020-06-22
    gap = pl.col("date").is_between(dt.date(2020, 5, 18), dt.date(2020, 6, 5))  # labels of the second window
    t_gap = t.with_columns(pl.when(gap).then(None).otherwise(pl.col(KW["label"])).alias(KW["label"]))
    res = walk_forward_predict(f, t_gap, weeks, model_name="m", models_dir=tmp_path, alpha_column="a", **kw)
    second = dt.date(2020, 6, 22)
    assert "reused the previous model" in res.notes[second]
    versions = res.predictions.group_by(pl.col("date") >= second).agg(pl.col("model_version").unique())
    assert all(len(v) == 1 for v in versions["model_version"]) and versions["model_version"].explode().n_unique() == 1
    assert res.predictions["a"].null_count() == 0
    reused = res.metrics.filter((pl.col("split") == "plan") & (pl.col("metric") == "reused_previous_model"))
    assert sorted(reused["value"].to_list()) == [0.0, 1.0]


def test_load_groups_gather_whole_chunks_into_spans_of_at_most_max_weeks():
    from kairos_dagster.ml.walk_forward import load_groups

    chunks = [mondays(dt.date(2021, 1, 4) + dt.timedelta(weeks=13 * i), 13) for i in range(9)]
    groups = load_groups(chunks, max_weeks=52)
    assert [c for g in groups for c in g] == chunks  # every chunk once, in order, never split
    assert [len(g) for g in groups] == [4, 4, 1]
    for g in groups:
        assert (g[-1][-1] - g[0][0]).days // 7 + 1 <= 52
    assert load_groups(chunks, max_weeks=10) == [[c] for c in chunks]  # a chunk longer than the span stands alone
    assert load_groups([], max_weeks=52) == []
