"""The run's read cache (warehouse.read_cache, store.cached_read) and the batched registration of writes."""

import datetime as dt

import duckdb
import polars as pl
import pytest

from kairos_dagster.warehouse import read_cache, store

D = dt.date


def _weeks(first: dt.date, n: int, value: float = 1.0, tickers=("AAA", "BBB")) -> pl.DataFrame:
    days = [first + dt.timedelta(days=i) for i in range(7 * n) if (first + dt.timedelta(days=i)).weekday() < 5]
    return pl.DataFrame({"ticker": [t for t in tickers for _ in days], "date": days * len(tickers),
                         "close": [value] * (len(days) * len(tickers)), "volume": [1.0] * (len(days) * len(tickers))})


@pytest.fixture
def held(tmp_path):
    path = tmp_path / "w.duckdb"
    with store.connect(path) as con:
        store.replace_window(con, "prices", _weeks(D(2024, 1, 1), 4), "date", D(2024, 1, 1), D(2024, 1, 29))
    with store.held_open(path):
        yield path, store.read_cache(path)


def _read(path, start=None, end=None, columns=None) -> pl.DataFrame:
    with store.connect(path) as con:
        return store.cached_read(path, con, "prices", "date", start, end, columns=columns)


def _plain(path, start=None, end=None, columns=None) -> pl.DataFrame:
    with store.connect(path) as con:
        return store.read_window(con, "prices", "date", start, end, columns=columns)


def test_a_window_read_again_in_the_run_comes_from_memory_and_equals_a_read(held):
    path, cache = held
    first = _read(path, D(2024, 1, 1), D(2024, 1, 29))
    again = _read(path, D(2024, 1, 1), D(2024, 1, 29))
    assert (cache.misses, cache.hits) == (1, 1)
    assert again.equals(first) and again.equals(_plain(path, D(2024, 1, 1), D(2024, 1, 29)))


def test_lookbacks_reaching_before_the_first_row_share_one_read(held):
    path, cache = held
    _read(path, D(2023, 6, 1), D(2024, 1, 29))  # a long lookback from the first week
    got = _read(path, D(2023, 12, 1), D(2030, 1, 1))  # a shorter one, an end past the last row
    assert (cache.misses, cache.hits) == (1, 1)
    assert got.equals(_plain(path, D(2023, 12, 1), D(2030, 1, 1)))


def test_a_narrower_window_and_fewer_columns_are_served_from_a_wider_read(held):
    path, cache = held
    _read(path, D(2024, 1, 1), D(2024, 1, 29))
    got = _read(path, D(2024, 1, 8), D(2024, 1, 15), columns=["ticker", "date", "close"])
    assert cache.hits == 1
    assert got.equals(_plain(path, D(2024, 1, 8), D(2024, 1, 15), columns=["ticker", "date", "close"]))
    # a wider window than any read is read from DuckDB
    _read(path, D(2023, 1, 1), None)
    wider = _read(path, D(2024, 1, 1), D(2024, 1, 29), columns=["ticker", "date", "volume", "close"])
    assert wider.columns == ["ticker", "date", "volume", "close"]


def test_a_write_of_the_table_makes_its_cached_reads_stale(held):
    path, cache = held
    before = _read(path, D(2024, 1, 1), D(2024, 1, 29))
    with store.connect(path) as con:
        store.replace_window(con, "prices", _weeks(D(2024, 1, 8), 1, value=9.0), "date", D(2024, 1, 8), D(2024, 1, 15))
    after = _read(path, D(2024, 1, 1), D(2024, 1, 29))
    assert cache.hits == 0 and not after.equals(before)
    assert after.equals(_plain(path, D(2024, 1, 1), D(2024, 1, 29)))
    assert after.filter(pl.col("date") >= D(2024, 1, 8), pl.col("date") < D(2024, 1, 15)).get_column("close").unique().to_list() == [9.0]


def test_writes_that_name_other_tables_keep_the_entry_and_unnamed_writes_drop_it(held):
    path, cache = held
    _read(path)
    with store.connect(path) as con:
        store.replace_table(con, "other", pl.DataFrame({"x": [1]}))
    _read(path)
    assert cache.hits == 1
    with store.connect(path) as con, store.transaction(con, "raw update"):  # names no table: any may have changed
        con.execute("UPDATE prices SET close = 5.0 WHERE ticker = 'AAA'")
    got = _read(path)
    assert cache.hits == 1 and got.filter(pl.col("ticker") == "AAA").get_column("close").unique().to_list() == [5.0]


def test_a_write_that_rolls_back_still_counts_as_written(held):
    path, cache = held
    _read(path)
    with store.connect(path) as con, pytest.raises(store.WarehouseError):
        store.replace_window(con, "prices", _weeks(D(2024, 1, 1), 1), "date", D(2024, 1, 1), D(2024, 1, 8),
                             after_delete=lambda: (_ for _ in ()).throw(duckdb.IOException("disk gone")))
    _read(path)
    assert cache.hits == 0 and cache.misses == 2


def test_no_cache_outside_a_held_block_nor_for_frames_over_half_the_limit(tmp_path, monkeypatch):
    path = tmp_path / "w.duckdb"
    with store.connect(path) as con:
        store.replace_window(con, "prices", _weeks(D(2024, 1, 1), 2), "date", D(2024, 1, 1), D(2024, 1, 15))
    assert store.read_cache(path) is None
    assert _read(path).equals(_plain(path))
    with store.held_open(path):
        cache = store.read_cache(path)
        cache.limit = 100  # bytes: every frame here is over half of it
        _read(path)
        _read(path)
        assert cache.hits == 0 and cache.entries == []
    assert store.read_cache(path) is None  # the block's end lets the cache go


def test_idle_entries_are_let_go_and_the_limit_evicts_the_least_recently_used(held, monkeypatch):
    path, cache = held
    _read(path)
    cache.prune(idle_s=3600)
    assert len(cache.entries) == 1
    cache.prune(idle_s=0)
    assert cache.entries == []
    a = _read(path, D(2024, 1, 1), D(2024, 1, 8))
    cache.limit = 2 * a.estimated_size() + 1  # room for two windows of a week
    _read(path, D(2024, 1, 8), D(2024, 1, 15))
    _read(path, D(2024, 1, 1), D(2024, 1, 8))  # used again: the most recent
    _read(path, D(2024, 1, 15), D(2024, 1, 22))  # evicts the week of the 8th
    windows = [(e.start, e.end) for e in cache.entries]
    assert windows == [(D(2024, 1, 1), D(2024, 1, 8)), (D(2024, 1, 15), D(2024, 1, 22))]


def test_the_generation_orders_a_read_before_a_later_write():
    gen = read_cache.generation()
    read_cache.written(["t"])
    entry = read_cache._Entry("t", None, None, None, ("x",), pl.DataFrame({"x": [1]}), gen, 8, 0.0)
    assert not entry.fresh()
    assert read_cache._Entry("t", None, None, None, ("x",), entry.frame, read_cache.generation(), 8, 0.0).fresh()


def test_frames_are_registered_as_aligned_batches_in_order():
    n = store.BATCH_ROWS * 2 + 7
    keys = pl.concat([pl.DataFrame({"k": pl.arange(0, 1000, eager=True)}),
                      pl.DataFrame({"k": pl.arange(1000, n, eager=True)})], rechunk=False)  # a read's chunks
    df = keys.hstack(pl.DataFrame({"v": pl.arange(0, n, eager=True).cast(pl.Float64)}))  # a computed column
    assert df.n_chunks("all") == [2, 1]
    batched = store.in_batches(df)
    chunks = batched.n_chunks("all")
    assert len(set(chunks)) == 1 and chunks[0] >= 3  # every column cut at the same rows, several batches
    assert batched.equals(df)
    assert all(len(b) <= store.BATCH_ROWS for b in batched.to_arrow().to_batches())
    small = df.head(10)
    assert store.in_batches(small) is small


def test_a_window_clamped_to_the_stored_dates_still_leaves_out_null_dated_rows(held):
    path, cache = held
    with store.connect(path) as con:
        con.execute("INSERT INTO prices VALUES ('CCC', NULL, 1.0, 1.0)")
    got = _read(path, D(2023, 1, 1), D(2030, 1, 1))
    again = _read(path, D(2022, 1, 1), D(2031, 1, 1))
    assert cache.hits == 1
    assert got.get_column("date").null_count() == 0 and again.equals(got)
    assert got.equals(_plain(path, D(2023, 1, 1), D(2030, 1, 1)))


def test_letting_the_held_warehouse_go_empties_the_cache(held, monkeypatch):
    path, cache = held
    _read(path)
    assert len(cache.entries) == 1
    monkeypatch.setattr(store, "HELD_MEMORY_BYTES", -1)  # the next connection's close lets the instance go
    with store.connect(path):
        pass
    assert cache.entries == []  # between the close and the new hold another process could have written
    _read(path)
    assert cache.misses == 2
