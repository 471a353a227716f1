import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time

import duckdb
import polars as pl
import pytest

from kairos_dagster.warehouse import store
from kairos_dagster.warehouse.ordering import in_key_order

D = dt.date


def _week(start: dt.date, value: float, tickers=("AAA", "BBB")) -> pl.DataFrame:
    days = [start + dt.timedelta(days=i) for i in range(5)]
    return pl.DataFrame(
        {"ticker": [t for t in tickers for _ in days], "date": days * len(tickers), "close": [value] * (5 * len(tickers))}
    )


def test_replace_window_is_idempotent_and_scoped(tmp_path):
    path = tmp_path / "w.duckdb"
    with store.connect(path) as con:
        store.replace_window(con, "prices", _week(D(2024, 1, 1), 1.0), "date", D(2024, 1, 1), D(2024, 1, 8))
        store.replace_window(con, "prices", _week(D(2024, 1, 8), 2.0), "date", D(2024, 1, 8), D(2024, 1, 15))
        before = store.read_window(con, "prices", None, None, None)
        for _ in range(3):
            store.replace_window(con, "prices", _week(D(2024, 1, 8), 2.0), "date", D(2024, 1, 8), D(2024, 1, 15))
        after = store.read_window(con, "prices", None, None, None)
        assert after.equals(before)
        # a new version of week 2 replaces only week 2
        store.replace_window(con, "prices", _week(D(2024, 1, 8), 3.0, ("AAA",)), "date", D(2024, 1, 8), D(2024, 1, 15))
        got = store.read_window(con, "prices", "date", D(2024, 1, 1), D(2024, 1, 15))
        assert got.filter(pl.col("date") < D(2024, 1, 8)).height == 10
        assert got.filter(pl.col("date") >= D(2024, 1, 8)).get_column("close").to_list() == [3.0] * 5


def test_rows_outside_the_window_are_refused(tmp_path):
    with store.connect(tmp_path / "w.duckdb") as con:
        with pytest.raises(store.WarehouseError, match="outside the partition window"):
            store.replace_window(con, "prices", _week(D(2024, 1, 1), 1.0), "date", D(2024, 1, 2), D(2024, 1, 8))
        assert not store.table_exists(con, "prices")


def test_new_columns_are_added_and_missing_table_is_a_clear_error(tmp_path):
    with store.connect(tmp_path / "w.duckdb") as con:
        with pytest.raises(store.WarehouseError, match="materialize the asset prices"):
            store.read_window(con, "prices", "date", None, None)
        store.replace_window(con, "prices", _week(D(2024, 1, 1), 1.0), "date", D(2024, 1, 1), D(2024, 1, 8))
        wider = _week(D(2024, 1, 8), 2.0).with_columns(pl.lit(5.0).alias("volume"))
        store.replace_window(con, "prices", wider, "date", D(2024, 1, 8), D(2024, 1, 15))
        got = store.read_window(con, "prices", None, None, None)
        assert got.columns == ["ticker", "date", "close", "volume"]
        assert got.filter(pl.col("date") < D(2024, 1, 8)).get_column("volume").null_count() == 10


def test_failed_insert_rolls_back_the_delete(tmp_path):
    with store.connect(tmp_path / "w.duckdb") as con:
        store.replace_window(con, "prices", _week(D(2024, 1, 1), 1.0), "date", D(2024, 1, 1), D(2024, 1, 8))
        bad = _week(D(2024, 1, 1), 1.0).with_columns(pl.lit("x").alias("close"))  # text into a DOUBLE column
        with pytest.raises(store.WarehouseError, match="prices"):
            store.replace_window(con, "prices", bad, "date", D(2024, 1, 1), D(2024, 1, 8))
        assert store.read_window(con, "prices", None, None, None).get_column("close").to_list() == [1.0] * 10


WRITER = textwrap.dedent(
    """
    import datetime as dt, pathlib, sys, time
    import polars as pl
    from kairos_dagster.warehouse import store
    path, flag = sys.argv[1], pathlib.Path(sys.argv[2])
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(5)]
    df = pl.DataFrame({"ticker": ["AAA"] * 5, "date": days, "close": [99.0] * 5})
    def hang():
        flag.write_text("deleted")
        time.sleep(600)
    with store.connect(path) as con:
        store.replace_window(con, "prices", df, "date", dt.date(2024, 1, 1), dt.date(2024, 1, 8), after_delete=hang)
    """
)


def test_writer_killed_between_delete_and_insert_leaves_previous_rows(tmp_path):
    path = tmp_path / "w.duckdb"
    with store.connect(path) as con:
        store.replace_window(con, "prices", _week(D(2024, 1, 1), 1.0), "date", D(2024, 1, 1), D(2024, 1, 8))
        before = store.read_window(con, "prices", None, None, None)
    flag = tmp_path / "flag"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(flag)], env=os.environ.copy())
    try:
        for _ in range(600):
            if flag.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert flag.exists(), "the writer never reached the point between delete and insert"
        # The delete has run inside the open transaction; kill the process the hard way.
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    with duckdb.connect(str(path)) as con:
        after = store.read_window(con, "prices", None, None, None)
    assert after.equals(before)


def test_upsert_rows_replaces_by_key_in_one_transaction(tmp_path):
    with store.connect(tmp_path / "w.duckdb") as con:
        empty = pl.DataFrame(schema={"model": pl.String, "version": pl.String, "metric": pl.String, "value": pl.Float64})
        store.upsert_rows(con, "metrics", empty, ["model", "version"])
        assert store.table_columns(con, "metrics") == {
            "model": "VARCHAR", "version": "VARCHAR", "metric": "VARCHAR", "value": "DOUBLE"}
        v1 = pl.DataFrame({"model": ["m", "m", "m"], "version": ["1", "1", "2"], "metric": ["auc", "ic", "auc"],
                           "value": [0.5, 0.01, 0.6]})
        store.upsert_rows(con, "metrics", v1, ["model", "version"])
        # a rerun of version 1 with one metric replaces both of its old rows, version 2 stays
        store.upsert_rows(con, "metrics", v1.head(1).with_columns(pl.lit(0.55).alias("value")), ["model", "version"])
        got = con.execute("SELECT version, metric, value FROM metrics ORDER BY version, metric").fetchall()
        assert got == [("1", "auc", 0.55), ("2", "auc", 0.6)]
        # null key parts match themselves: a rerun does not duplicate rows keyed on a null
        null_key = pl.DataFrame({"model": ["m"], "version": [None], "metric": ["auc"], "value": [0.7]},
                                schema_overrides={"version": pl.String})
        store.upsert_rows(con, "metrics", null_key, ["model", "version"])
        store.upsert_rows(con, "metrics", null_key, ["model", "version"])
        assert con.execute("SELECT count(*) FROM metrics WHERE version IS NULL").fetchone() == (1,)
        with pytest.raises(store.WarehouseError, match="key column 'nope'"):
            store.upsert_rows(con, "metrics", v1, ["nope"])


def test_upsert_many_writes_every_table_or_none(tmp_path):
    """The sync rewrites restated rows and logs them in one transaction: when the second write fails,
    the first is rolled back (a rewrite the rebuild sensor cannot see never happens)."""
    path = tmp_path / "w.duckdb"
    rows = pl.DataFrame({"ticker": ["A", "B"], "date": [dt.date(2024, 1, 2)] * 2, "close": [1.0, 2.0]})
    with store.connect(path) as con:
        store.upsert_rows(con, "prices", rows, ["ticker", "date"])
        con.execute("CREATE TABLE log (ticker VARCHAR, n INTEGER)")
        new = rows.with_columns(pl.col("close") * 10)
        bad_log = pl.DataFrame({"ticker": ["A"], "n": ["not a number"]})
        with pytest.raises(store.WarehouseError, match="prices, log: upsert failed"):
            store.upsert_many(con, [("prices", new, ["ticker", "date"]), ("log", bad_log, ["ticker"])])
        assert con.execute("SELECT close FROM prices ORDER BY ticker").fetchall() == [(1.0,), (2.0,)]
        assert con.execute("SELECT count(*) FROM log").fetchone()[0] == 0
        store.upsert_many(con, [("prices", new, ["ticker", "date"]),
                                ("log", pl.DataFrame({"ticker": ["A"], "n": [2]}), ["ticker"])])
        assert con.execute("SELECT close FROM prices ORDER BY ticker").fetchall() == [(10.0,), (20.0,)]
        assert con.execute("SELECT n FROM log").fetchall() == [(2,)]


def test_windows_written_out_of_order_read_back_sorted_by_ticker_and_date(tmp_path):
    """A later week written for one ticker, then an earlier week (an incremental run after a backfill): the
    stored order is not (ticker, date), and read_window sorts; a sorted table is returned as stored."""
    with store.connect(tmp_path / "w.duckdb") as con:
        store.replace_window(con, "prices", _week(D(2024, 1, 8), 2.0), "date", D(2024, 1, 8), D(2024, 1, 15))
        store.replace_window(con, "prices", _week(D(2024, 1, 1), 1.0, ("BBB", "AAA")), "date", D(2024, 1, 1),
                             D(2024, 1, 8))
        stored = con.execute("SELECT ticker, date FROM prices").pl()
        assert not in_key_order(stored, ["ticker", "date"])
        got = store.read_window(con, "prices", "date", None, None)
        assert got.select("ticker", "date").equals(stored.sort("ticker", "date"))
        assert store.read_window(con, "prices", "date", D(2024, 1, 1), D(2024, 1, 8)).get_column("ticker").to_list() \
            == ["AAA"] * 5 + ["BBB"] * 5
        # Ordered by ticker even when the caller reads only the dates.
        only = store.read_window(con, "prices", "date", None, None, columns=["date", "close"])
        assert only.get_column("close").to_list() == got.get_column("close").to_list()


def test_key_order_is_lexicographic_and_strict_when_asked():
    df = pl.DataFrame({"ticker": ["A", "A", "B", "B"], "date": [D(2024, 1, 2), D(2024, 1, 3), D(2024, 1, 1),
                                                                 D(2024, 1, 1)]})
    assert in_key_order(df, ["ticker", "date"])  # ties allowed
    assert not in_key_order(df, ["date"])
    assert not in_key_order(df.reverse(), ["ticker", "date"])
    assert not in_key_order(df.with_columns(pl.lit(None, pl.Date).alias("date")), ["ticker", "date"])
    assert in_key_order(df.head(1), ["ticker", "date"])
    assert not in_key_order(df, ["ticker", "date"], strict=True)  # B 2024-01-01 twice
    assert in_key_order(df.head(3), ["ticker", "date"], strict=True)


HELD_WRITER = textwrap.dedent("""
    import datetime as dt, os, sys
    import polars as pl
    from kairos_dagster.warehouse import store
    path = sys.argv[1]
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(5)]
    with store.held_open(path):
        with store.connect(path) as con:
            store.replace_window(con, "prices", pl.DataFrame({"ticker": ["AAA"] * 5, "date": days, "close": [7.0] * 5}),
                                 "date", dt.date(2024, 1, 1), dt.date(2024, 1, 8))
        os._exit(9)  # killed before the held connection's checkpoint
""")


def test_a_held_warehouse_keeps_commits_in_the_log_until_the_block_ends(tmp_path):
    path = tmp_path / "w.duckdb"
    wal = tmp_path / "w.duckdb.wal"
    with store.connect(path) as con:
        store.replace_window(con, "prices", _week(D(2024, 1, 1), 1.0), "date", D(2024, 1, 1), D(2024, 1, 8))
    assert not wal.exists()  # a plain connection checkpoints on close
    with store.held_open(str(path)):
        # nested: only the outermost end checkpoints
        with store.held_open(path), store.connect(path) as con:
            store.replace_window(con, "prices", _week(D(2024, 1, 8), 2.0), "date", D(2024, 1, 8), D(2024, 1, 15))
        assert wal.exists()
        with store.connect(path, read_only=True) as con:  # a reader inside shares the held instance
            assert store.read_window(con, "prices", None, None, None).height == 20
        with store.connect(path) as con:
            store.replace_window(con, "prices", _week(D(2024, 1, 15), 3.0), "date", D(2024, 1, 15), D(2024, 1, 22))
        assert wal.exists()
    assert not wal.exists()
    con = duckdb.connect(str(path), read_only=True)
    try:
        assert con.execute("SELECT count(*), sum(close) FROM prices").fetchone() == (30, 60.0)
    finally:
        con.close()


def test_holding_a_missing_or_unopenable_warehouse_holds_nothing(tmp_path):
    path = tmp_path / "w.duckdb"
    with store.held_open(path):  # a first sync's warehouse does not exist yet: not created by holding it
        assert not path.exists()
    with store.connect(path) as con:
        store.replace_window(con, "prices", _week(D(2024, 1, 1), 1.0), "date", D(2024, 1, 1), D(2024, 1, 8))
    reader = duckdb.connect(str(path), read_only=True)  # this process has it open read-only: cannot be held
    try:
        with store.held_open(path):
            assert reader.execute("SELECT count(*) FROM prices").fetchone() == (10,)
    finally:
        reader.close()


def test_a_process_killed_while_holding_the_warehouse_loses_no_commit(tmp_path):
    path = tmp_path / "w.duckdb"
    with store.connect(path) as con:
        con.execute("CREATE TABLE seed AS SELECT 1 AS x")
    proc = subprocess.run([sys.executable, "-c", HELD_WRITER, str(path)], env=os.environ.copy())
    assert proc.returncode == 9
    assert (tmp_path / "w.duckdb.wal").exists()
    with store.connect(path) as con:
        assert store.read_window(con, "prices", None, None, None).get_column("close").to_list() == [7.0] * 5
    assert not (tmp_path / "w.duckdb.wal").exists()  # folded in by the next plain connection


def test_a_held_warehouse_is_let_go_and_held_anew_once_it_holds_much_in_memory(tmp_path, monkeypatch):
    path = tmp_path / "w.duckdb"
    with store.connect(path) as con:
        con.execute("CREATE TABLE wide AS SELECT range AS x, range * 2 AS y FROM range(3000000)")
    monkeypatch.setattr(store, "HELD_MEMORY_BYTES", 8 << 20)

    def used(con) -> int:
        return con.execute("SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()").fetchone()[0]

    with store.held_open(path):
        with store.connect(path) as con:  # a small write: the instance stays held, its commit in the log
            con.execute("CREATE TABLE small AS SELECT 1 AS n")
        first = store._HELD[path.resolve()][1]
        assert (tmp_path / "w.duckdb.wal").exists()
        with store.connect(path) as con:  # a big delete keeps its versions in memory until a checkpoint
            con.execute("DELETE FROM wide WHERE x < 2000000")
            assert used(con) > 16 << 20
        again = store._HELD[path.resolve()][1]
        assert again is not first and used(again) <= 8 << 20  # checkpointed, freed, held anew
        assert not (tmp_path / "w.duckdb.wal").exists()
        with store.connect(path, read_only=True) as con:
            assert con.execute("SELECT count(*) FROM wide").fetchone() == (1_000_000,)
    assert path.resolve() not in store._HELD


def test_a_held_warehouse_that_cannot_be_held_anew_falls_back_to_plain_connections(tmp_path, monkeypatch):
    path = tmp_path / "w.duckdb"
    with store.connect(path) as con:
        con.execute("CREATE TABLE wide AS SELECT range AS x FROM range(3000000)")
    monkeypatch.setattr(store, "HELD_MEMORY_BYTES", 8 << 20)
    real_connect = duckdb.connect
    calls = {"n": 0}

    def connect_once_refused(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the step's connection, then the re-hold: taken by another process meanwhile
            raise duckdb.IOException("Could not set lock on file")
        return real_connect(*args, **kwargs)

    with store.held_open(path):
        monkeypatch.setattr(duckdb, "connect", connect_once_refused)
        with store.connect(path) as con:
            con.execute("DELETE FROM wide WHERE x < 2000000")  # past the limit: let go, re-hold refused
        assert store._HELD[path.resolve()][1] is None
        with store.connect(path, read_only=True) as con:  # a plain read-only connection now, then a plain close
            assert con.execute("SELECT count(*) FROM wide").fetchone() == (1_000_000,)
        with store.connect(path) as con:
            con.execute("DELETE FROM wide WHERE x < 2500000")
    assert path.resolve() not in store._HELD
    assert not (tmp_path / "w.duckdb.wal").exists()
    with store.connect(path, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM wide").fetchone() == (500_000,)
