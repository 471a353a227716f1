import datetime as dt
import json
import subprocess
import sys
import textwrap

import duckdb
import optuna
import pytest

from kairos_dagster.ml import registry
from kairos_dagster.ml.dataset import training_rows
from kairos_dagster.ml.train import predict_proba, train_classifier
from kairos_dagster.ml.tune import cv_folds, tune
from kairos_dagster_tests.fixtures.ml_market import FEATURES, make_market
from kairos_dagster_tests.fixtures.postgres import postgres  # noqa: F401 (fixture)

LABEL = "label_top_quintile_5d"
START = dt.date(2020, 1, 6)


@pytest.fixture(scope="module")
def rows():
    f, t = make_market(START, dt.date(2020, 9, 30), n_tickers=40, seed=5)
    out, _ = training_rows(f, t, FEATURES, LABEL, start=START, end=dt.date(2020, 8, 31),
                           label_end=dt.date(2020, 9, 9))
    return out


def _save(model, tmp_path, version="2020-09-14_abc"):
    return registry.save_model(model, tmp_path, "ml_v2", version, train_start=START,
                               train_end=dt.date(2020, 8, 31), label_end=dt.date(2020, 9, 9))


def test_save_load_round_trip_and_registry_row_in_duckdb(rows, tmp_path):
    model = train_classifier(rows, FEATURES, LABEL, {"num_boost_round": 30}, seed=2)
    path = _save(model, tmp_path)
    assert sorted(p.name for p in path.iterdir()) == ["card.json", "model.ubj"]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]
    card = json.loads((path / "card.json").read_text())
    assert card["features"] == FEATURES and card["seed"] == 2 and card["rows"] == rows.height
    assert card["label_end"] == "2020-09-09" and card["xgboost_version"]
    loaded = registry.load_model(tmp_path, "ml_v2", "2020-09-14_abc")
    assert predict_proba(loaded, rows).to_numpy().tobytes() == predict_proba(model, rows).to_numpy().tobytes()
    frame = registry.registry_frame([registry.registry_row(tmp_path, "ml_v2", "2020-09-14_abc")])
    con = duckdb.connect()
    con.execute("""CREATE TABLE ml_model_registry (model_name VARCHAR, model_version VARCHAR, train_start DATE,
        train_end DATE, label_end DATE, created_at TIMESTAMPTZ, params_json VARCHAR, metrics_json VARCHAR,
        artifact_path VARCHAR)""")
    con.register("f", frame.to_arrow())
    con.execute("INSERT INTO ml_model_registry SELECT * FROM f")
    got = con.execute("SELECT model_version, label_end, json_extract(params_json, '$.max_depth') FROM ml_model_registry").fetchall()
    assert got == [("2020-09-14_abc", dt.date(2020, 9, 9), "4")]


def test_existing_version_is_reused_not_overwritten(rows, tmp_path):
    first = train_classifier(rows, FEATURES, LABEL, {"num_boost_round": 10}, seed=2)
    other = train_classifier(rows, FEATURES, LABEL, {"num_boost_round": 10}, seed=3)
    path = _save(first, tmp_path)
    before = (path / "model.ubj").read_bytes(), (path / "card.json").read_text()
    assert _save(other, tmp_path) == path
    assert ((path / "model.ubj").read_bytes(), (path / "card.json").read_text()) == before


def test_failed_write_leaves_nothing_behind(rows, tmp_path):
    model = train_classifier(rows, FEATURES, LABEL, {"num_boost_round": 5}, seed=2)
    with pytest.raises(TypeError):  # card extra that is not JSON-serialisable
        registry.save_model(model, tmp_path, "ml_v2", "v1", train_start=START, train_end=START,
                            label_end=START, extra={"bad": object()})
    assert not registry.has_model(tmp_path, "ml_v2", "v1")
    assert list((tmp_path / "ml_v2").iterdir()) == []
    with pytest.raises(registry.RegistryError):
        registry.version_dir(tmp_path, "ml_v2", "../escape")


def test_cv_folds_are_purged_and_embargoed(rows):
    folds = cv_folds(rows, n_folds=3, embargo_weeks=1)
    assert len(folds) == 3
    for fit, oos in folds:
        assert fit["label_end_date"].max() < oos["date"].min() - dt.timedelta(weeks=1)
        assert fit["date"].min() == rows["date"].min()
    assert folds[0][1]["date"].max() < folds[1][1]["date"].min()


def test_tune_is_seeded_and_reproducible(rows):
    kw = dict(n_trials=4, seed=7, n_folds=2, max_boost_rounds=40, n_threads=1)
    a = tune(rows, FEATURES, LABEL, study_name="s", **kw)
    b = tune(rows, FEATURES, LABEL, study_name="s", **kw)
    assert a.best_params == b.best_params and a.summary["best_value"] == b.summary["best_value"]
    assert a.summary["n_trials"] == 4 and a.summary["objective"] == "mean_rank_ic"
    assert a.best_params["valid_fraction"] == 0.2  # final fit early-stops again
    assert 2 <= a.best_params["max_depth"] <= 6


def test_pruner_stops_weak_trials(rows):
    res = tune(rows, FEATURES, LABEL, n_trials=10, seed=1, n_folds=3, study_name="p", max_boost_rounds=40,
               n_threads=1)
    assert res.summary["n_pruned"] >= 1 and res.summary["n_complete"] >= 3


WORKER = textwrap.dedent("""
    import datetime as dt, json, sys
    from kairos_dagster.ml.dataset import training_rows
    from kairos_dagster.ml.tune import tune
    from kairos_dagster_tests.fixtures.ml_market import FEATURES, make_market
    f, t = make_market(dt.date(2020, 1, 6), dt.date(2020, 9, 30), n_tickers=40, seed=5)
    rows, _ = training_rows(f, t, FEATURES, "label_top_quintile_5d", start=dt.date(2020, 1, 6),
                            end=dt.date(2020, 8, 31), label_end=dt.date(2020, 9, 9))
    res = tune(rows, FEATURES, "label_top_quintile_5d", n_trials=3, seed=int(sys.argv[2]), n_folds=2,
               storage=sys.argv[1], study_name="shared", worker="w" + sys.argv[2], n_threads=1,
               max_boost_rounds=20)
    print(json.dumps({"n_complete": res.summary["n_complete"], "best_trial": res.summary["best_trial"],
                      "best_value": res.summary["best_value"], "best_params": res.best_params}))
""")


@pytest.fixture(params=["journal", "postgres"])
def shared_storage(request, tmp_path) -> str:
    """Where two workers meet: a journal file on one machine, or an Optuna RDB on a real PostgreSQL."""
    if request.param == "journal":
        return str(tmp_path / "study.journal")
    server = request.getfixturevalue("postgres")
    return server.url(server.create_database(f"optuna_{tmp_path.name[-12:].replace('-', '_').lower()}"))


def test_two_processes_tune_one_study_and_the_parameters_used_are_its_best_trial(shared_storage):
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, shared_storage, str(seed)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    outs, errs = zip(*(p.communicate(timeout=180) for p in procs), strict=True)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-3000:] for e in errs)
    from kairos_dagster.ml.tune import resolve_storage
    study = optuna.load_study(study_name="shared", storage=resolve_storage(shared_storage, "shared"))
    workers = [t.user_attrs["worker"] for t in study.trials]
    assert sorted(workers) == ["w1", "w1", "w1", "w2", "w2", "w2"]
    assert all(t.state.is_finished() for t in study.trials)
    # Each worker returns the best trial of the study as it found it when its own trials ended: one of the
    # study's trials, at best the study's best. The worker that ended after the other saw all six: its
    # parameters are the study's best trial.
    results = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    values = {t.number: t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    for r in results:
        assert values[r["best_trial"]] == r["best_value"] <= study.best_value
        chosen = study.trials[r["best_trial"]].params
        assert {k: r["best_params"][k] for k in chosen} == chosen
    last = max(results, key=lambda r: r["n_complete"])
    if last["n_complete"] == 6:  # not when both ended at the same moment, each before the other's last commit
        assert last["best_trial"] == study.best_trial.number


OPENER = textwrap.dedent("""
    import sys, optuna
    from kairos_dagster.ml.tune import resolve_storage
    print("ready", flush=True)
    for url in sys.stdin:  # one new database per line, sent to every opener at once
        try:
            optuna.create_study(storage=resolve_storage(url.strip(), "s"), study_name="s", load_if_exists=True)
            print("ok", flush=True)
        except Exception as e:
            print(type(e).__name__, str(e).splitlines()[0], flush=True)
""")


def test_workers_opening_a_new_study_database_at_once_all_get_it(postgres):  # noqa: F811 (fixture)
    """Optuna creates its tables and enum types on first use; openers racing on a new database used to fail
    with a duplicate type or table (about one pair in twenty)."""
    openers = [subprocess.Popen([sys.executable, "-c", OPENER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True) for _ in range(4)]
    assert [p.stdout.readline().strip() for p in openers] == ["ready"] * 4
    for i in range(6):
        url = postgres.url(postgres.create_database(f"race_{i}"))
        for p in openers:
            p.stdin.write(url + "\n")
            p.stdin.flush()
        assert [p.stdout.readline().strip() for p in openers] == ["ok"] * 4, f"database {i}"
        study = optuna.load_study(study_name="s", storage=url)
        assert study.trials == []
    for p in openers:
        p.stdin.close()
        assert p.wait(timeout=60) == 0


def test_tuning_record_is_stored_once(tmp_path):
    p = registry.save_tuning(tmp_path, "m", "tune_2020-04-06_x", {"best_params": {"max_depth": 3}})
    registry.save_tuning(tmp_path, "m", "tune_2020-04-06_x", {"best_params": {"max_depth": 5}})
    assert registry.load_tuning(tmp_path, "m", "tune_2020-04-06_x") == {"best_params": {"max_depth": 3}}
    assert p.name == "tune_2020-04-06_x.json" and registry.load_tuning(tmp_path, "m", "other") is None


def test_sqlite_storage_accumulates_trials_across_calls(rows, tmp_path):
    kw = dict(n_trials=2, n_folds=2, max_boost_rounds=10, n_threads=1, study_name="lite")
    tune(rows, FEATURES, LABEL, seed=1, storage=tmp_path / "t.db", worker="a", **kw)
    res = tune(rows, FEATURES, LABEL, seed=2, storage=f"sqlite:///{tmp_path / 't.db'}", worker="b", **kw)
    study = optuna.load_study(study_name="lite", storage=f"sqlite:///{tmp_path / 't.db'}")
    assert [t.user_attrs["worker"] for t in study.trials] == ["a", "a", "b", "b"]
    assert res.summary["n_trials"] == 4
