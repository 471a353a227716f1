"""The CLI's progress line per asset (instance.progress): the book's arithmetic, then the real `kairos
backfill` over several weeks, whose stderr has one line per asset with the rows the warehouse holds and no
line per week."""

import re

import duckdb
import pytest

from kairos_dagster.instance.progress import ProgressBook, duration, run_weeks
from kairos_dagster_tests.cli.test_cli_failures import kairos, make_env


def test_a_step_end_prints_each_asset_it_wrote_with_weeks_rows_and_an_estimate():
    book = ProgressBook(assets=frozenset("abc"), weeks=2, prior_seconds={"c": 100.0, "elsewhere": 7.0})
    assert book.add("STEP_START", "s1", 1000.0) == []
    for rows in (10, 12):
        assert book.add("ASSET_MATERIALIZATION", "s1", 1001.0, "a", rows) == []
    assert book.add("ASSET_CHECK_EVALUATION", "s1", 1002.0, passed=False) == []
    assert book.add("ASSET_CHECK_EVALUATION", "s1", 1002.0, passed=True) == []
    (line,) = book.add("STEP_SUCCESS", "s1", 1010.0)
    # 'b' has no prior run: this run's pace (10 s per asset); 'c' its last run's 100 s
    assert line == "a: 2 weeks, 22 rows, 10.0 s, 1 failed check · 1 of 3 assets, 10.0 s elapsed, about 1m50s left"
    book.add("STEP_START", "s2", 1010.0)
    book.add("ASSET_MATERIALIZATION", "s2", 1030.0, "b", 5, partitioned=False)
    book.add("ASSET_MATERIALIZATION", "s2", 1030.0, "side_table", 1, partitioned=False)
    (line,) = book.add("STEP_SUCCESS", "s2", 1040.0)  # a side table its step writes is named, not counted
    assert line == "b: unpartitioned, 5 rows, 30.0 s (and side_table) · 2 of 3 assets, 40.0 s elapsed, about 1m40s left"
    book.add("STEP_START", "c", 1040.0)
    (line,) = book.add("STEP_FAILURE", "c", 1045.0)
    assert line == "c: failed after 5.0 s · 3 of 3 assets, 45.0 s elapsed"


def test_no_estimate_before_anything_to_go_by_and_run_weeks_from_tags():
    book = ProgressBook(assets=frozenset("ab"), weeks=1)
    assert book.estimate_left() is None
    assert run_weeks({}) == 1
    assert run_weeks({"dagster/asset_partition_range_start": "2023-01-02",
                      "dagster/asset_partition_range_end": "2023-01-16"}) == 3
    assert [duration(s) for s in (3.04, 65, 3725)] == ["3.0 s", "1m05s", "1h02m"]


PROGRESS = re.compile(r"^\d\d:\d\d:\d\d (\w+): (\d+ weeks|unpartitioned), ([\d,]+) rows, .* · (\d) of 2 assets, .* elapsed(.*)$")


@pytest.mark.slow
def test_a_cli_backfill_prints_one_line_per_asset_not_one_per_week(tmp_path):
    env = make_env(tmp_path)
    runs = []
    for _ in range(2):
        out = kairos(env, "backfill", "2023-01-02", "2023-01-20", "--select", "tickers,sep_base")
        assert out.returncode == 0, out.stderr[-3000:]
        runs.append([m.groups() for ln in out.stderr.splitlines() if (m := PROGRESS.match(ln))])
        assert "ASSET_MATERIALIZATION" not in out.stderr and "ASSET_CHECK_EVALUATION" not in out.stderr, out.stderr
    with duckdb.connect(env["KAIROS_DUCKDB_PATH"], read_only=True) as con:
        sep_rows = con.execute("SELECT count(*) FROM sep_base WHERE date < '2023-01-23'").fetchone()[0]
    for lines in runs:
        assert sorted(a for a, *_ in lines) == ["sep_base", "tickers"], lines
        assert [done for *_, done, _ in lines] == ["1", "2"]
        (sep,) = [x for x in lines if x[0] == "sep_base"]
        assert sep[1:3] == ("3 weeks", f"{sep_rows:,}")
        assert lines[-1][4] == ""  # nothing left: no estimate
    # The first run has no earlier run to go by until its first asset is done; the second knows both.
    assert "left" in runs[0][0][4] and "left" in runs[1][0][4]


def test_the_estimate_reads_each_assets_step_time_in_the_run_of_its_latest_materialization():
    from dagster import AssetKey, Definitions, asset
    from dagster._core.test_utils import instance_for_test

    from kairos_dagster.instance.progress import prior_step_seconds
    from kairos_dagster.instance.runner import run_selection
    from kairos_dagster_tests.instance.test_runner_memory import Table, Written

    @asset
    def first() -> Table:
        return Table(10)

    @asset(deps=[first])
    def second() -> Table:
        return Table(20)

    defs = Definitions(assets=[first, second], resources={"io_manager": Written()})
    with instance_for_test() as instance:
        run_selection(defs, ["first", "second"], instance=instance)
        later = run_selection(defs, ["second"], instance=instance)  # second's latest run is this one
        keys = [AssetKey("first"), AssetKey("second"), AssetKey("never")]
        got = prior_step_seconds(instance, keys, weeks=4)
        assert set(got) == {"first", "second"}  # nothing to go by for an asset never materialized
        for name in ("first", "second"):
            run_id = instance.get_latest_materialization_event(AssetKey(name)).run_id
            assert (run_id == later.run_id) == (name == "second")
            (stats,) = instance.get_run_step_stats(run_id, step_keys=[name])
            # an unpartitioned run counts as one week: scaled to 4
            assert got[name] == pytest.approx((stats.end_time - stats.start_time) * 4, rel=1e-6)
