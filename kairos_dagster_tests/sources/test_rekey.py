"""The re-keying core on a real DuckDB: symbols swapped between companies move together, a table that
already holds rows under a new symbol refuses the change with nothing written, holdings recorded
before a chain of changes read as the current symbol."""

import datetime as dt

import duckdb
import polars as pl
import pytest

from kairos_dagster.sources.sync import apply_ticker_changes, current_symbols, detect_ticker_changes


def _tickers(pairs: dict[int, str]) -> pl.DataFrame:
    return pl.DataFrame({"table": ["SEP"] * len(pairs), "permaticker": list(pairs), "ticker": list(pairs.values())})


@pytest.fixture
def con():
    c = duckdb.connect()
    c.register("t0", _tickers({1: "AAA", 2: "BBB", 3: "CCC"}))
    c.execute("CREATE TABLE tickers AS SELECT * FROM t0")
    c.execute("CREATE TABLE sep_base AS SELECT * FROM (VALUES ('AAA', 1.0), ('BBB', 2.0), ('CCC', 3.0)) t(ticker, close)")
    c.execute("CREATE TABLE sync_rejects AS SELECT 'AAA' AS ticker, 'why' AS reason")
    yield c
    c.close()


def _apply(con, served: pl.DataFrame, run: str) -> pl.DataFrame:
    held = con.execute("SELECT * FROM tickers").pl()
    return apply_ticker_changes(con, detect_ticker_changes(held, served), served, as_of=dt.date(2024, 1, 5), run_id=run)


def test_a_swap_moves_both_companies_and_logs_each(con):
    log = _apply(con, _tickers({1: "BBB", 2: "AAA", 3: "CCC"}), "r1")
    assert sorted(log.select("permaticker", "old_ticker", "new_ticker", "table_name", "rows").rows()) == [
        (1, "AAA", "BBB", "sep_base", 1), (2, "BBB", "AAA", "sep_base", 1)]
    assert con.execute("SELECT ticker, close FROM sep_base ORDER BY close").fetchall() == [
        ("BBB", 1.0), ("AAA", 2.0), ("CCC", 3.0)]
    assert con.execute("SELECT * FROM sync_rejects").fetchall() == [("AAA", "why")]  # logs keep their symbols
    assert current_symbols(con, pl.Series(["AAA", "BBB", "CCC"])).to_list() == ["BBB", "AAA", "CCC"]
    # a chain: company 1 moves on from BBB to DDD
    _apply(con, _tickers({1: "DDD", 2: "AAA", 3: "CCC"}), "r2")
    assert current_symbols(con, pl.Series(["AAA", "BBB"])).to_list() == ["DDD", "AAA"]


def test_a_new_symbol_already_held_is_refused_and_nothing_is_written(con):
    before = con.execute("SELECT * FROM sep_base ORDER BY ALL").fetchall()
    with pytest.raises(ValueError, match=r"sep_base already holds rows under the new symbol\(s\) \['CCC'\]"):
        _apply(con, _tickers({1: "CCC", 2: "BBB"}), "r1")  # company 3 still holds CCC
    assert con.execute("SELECT * FROM sep_base ORDER BY ALL").fetchall() == before
    assert con.execute("SELECT ticker FROM tickers ORDER BY ALL").fetchall() == [("AAA",), ("BBB",), ("CCC",)]
    assert not con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'ticker_changes'"
                           ).fetchone()[0]


def test_one_permaticker_under_two_symbols_is_refused():
    from kairos_dagster.sources.sync import fetch_tickers

    class _Feed:
        def fetch(self, table, start, end):
            return pl.DataFrame({"table": ["SEP", "SEP"], "permaticker": [7, 7], "ticker": ["OLD", "NEW"]})

    with pytest.raises(ValueError, match="permaticker under several symbols"):
        fetch_tickers(_Feed())
