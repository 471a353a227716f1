"""The Nasdaq Data Link client against a real local HTTP fake: paging, filters, faults, secrecy."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import date

import httpx
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from kairos_dagster.sources import schemas
from kairos_dagster.sources.nasdaq import (
    NasdaqAuthError,
    NasdaqDataLinkClient,
    NasdaqDataLinkError,
    NasdaqPageError,
    redact,
)
from kairos_dagster_tests.fakes.nasdaq_server import FakeNasdaqServer, handmade_provider

KEY = "sEcReT-kEy-4242"
TIMEOUT = 0.25  # client timeout; the fake's slow fault answers after SLOW seconds
SLOW = 0.6


@pytest.fixture(scope="module")
def provider() -> Callable[[str], pl.DataFrame]:
    tables: dict[str, pl.DataFrame] = {}
    make = handmade_provider(n_tickers=6, n_days=30, seed=3)

    def cached(name: str) -> pl.DataFrame:
        if name not in tables:
            tables[name] = make(name)
        return tables[name]

    return cached


@pytest.fixture
def server(provider: Callable[[str], pl.DataFrame]) -> Iterator[FakeNasdaqServer]:
    fake = FakeNasdaqServer(provider, api_key=KEY, forbidden_tables={"SF3"}, slow_seconds=SLOW, seed=11)
    with fake:
        yield fake


def make_client(server: FakeNasdaqServer, **kw) -> NasdaqDataLinkClient:
    key = kw.pop("api_key", KEY)
    opts = {"timeout": TIMEOUT, "backoff_base": 0.001, "backoff_max": 0.01, "per_page": 40, **kw}
    return NasdaqDataLinkClient(key, server.base_url, **opts)


# ---------------------------------------------------------------------- paging, filters, columns


def test_paging_returns_every_row_once_in_schema(server, provider) -> None:
    client = make_client(server)
    got = client.fetch_table("SEP")
    expected = provider("SEP")
    assert expected.height == 180
    assert_frame_equal(got, expected)  # exact columns, order, dtypes and rows
    assert got.schema == schemas.SEP.polars_schema
    assert server.counts["ok"] == 5  # 180 rows / 40 a page
    params = [r["params"] for r in server.requests]
    assert all(r["auth"] == "query" for r in server.requests)
    assert all(p["qopts.per_page"] == "40" for p in params)
    assert "qopts.cursor_id" not in params[0]
    assert len({p["qopts.cursor_id"] for p in params[1:]}) == 4


def test_range_and_list_filters(server, provider) -> None:
    client = make_client(server)
    sep = provider("SEP")
    got = client.fetch_range("SEP", date(2024, 1, 5), date(2024, 1, 9))
    assert_frame_equal(got, sep.filter(pl.col("date").is_between(date(2024, 1, 5), date(2024, 1, 9))))
    assert got.height == 6 * 5
    assert server.requests[0]["params"]["date.gte"] == "2024-01-05"
    assert server.requests[0]["params"]["date.lte"] == "2024-01-09"

    got = client.fetch_table("SEP", {"ticker": ["T001", "T004"], "date.gt": date(2024, 1, 30)})
    assert_frame_equal(got, sep.filter(pl.col("ticker").is_in(["T001", "T004"]),
                                       pl.col("date") > date(2024, 1, 30)))
    assert got.height == 2

    sf1 = provider("SF1")
    got = client.fetch_range("SF1", date(2024, 1, 8), None, {"dimension": ["ARQ", "ART"]})
    expected = sf1.filter(pl.col("dimension").is_in(["ARQ", "ART"]), pl.col("datekey") >= date(2024, 1, 8))
    assert 0 < got.height < sf1.height
    assert_frame_equal(got, expected)

    got = client.fetch_range("SF2", None, date(2024, 1, 10))
    assert_frame_equal(got, provider("SF2").filter(pl.col("filingdate") <= date(2024, 1, 10)))


def test_bad_filters_are_clear_errors(server) -> None:
    client = make_client(server)
    with pytest.raises(ValueError, match="SF1.*unknown column 'dimensoin'"):
        client.fetch_range("SF1", None, None, {"dimensoin": "ARQ"})
    with pytest.raises(ValueError, match="TICKERS has no point-in-time column"):
        client.fetch_range("TICKERS", date(2024, 1, 1), None)
    with pytest.raises(ValueError, match="start 2024-02-01 is after end 2024-01-01"):
        client.fetch_range("SEP", date(2024, 2, 1), date(2024, 1, 1))
    with pytest.raises(ValueError, match="unknown columns"):
        client.fetch_table("SEP", columns=["ticker", "closee"])
    with pytest.raises(ValueError, match=r"table SEP: filters \['ticker'\] have no value"):
        client.fetch_table("SEP", {"ticker": []})
    with pytest.raises(ValueError, match="per_page"):
        make_client(server, per_page=10_001)
    assert server.total_calls == 0


def test_column_selection(server, provider) -> None:
    client = make_client(server)
    got = client.fetch_table("SF2", columns=["rownum", "ticker", "filingdate", "transactionvalue"])
    assert got.columns == ["rownum", "ticker", "filingdate", "transactionvalue"]
    assert got.dtypes == [pl.Int64, pl.String, pl.Date, pl.Float64]
    assert_frame_equal(got, provider("SF2").select(got.columns))
    assert server.requests[0]["params"]["qopts.columns"] == "rownum,ticker,filingdate,transactionvalue"


def test_latest_date(server, provider) -> None:
    client = make_client(server)
    assert client.latest_date("SEP", today=date(2024, 6, 1)) == provider("SEP")["date"].max()
    assert client.latest_date("SF1", today=date(2024, 2, 1)) == provider("SF1")["datekey"].max()
    # Rows dated after `today` still count: it is the newest date the source holds.
    assert client.latest_date("SF2", today=date(2023, 1, 1)) == provider("SF2")["filingdate"].max()


def test_latest_date_of_an_empty_table_is_none() -> None:
    with FakeNasdaqServer(lambda name: schemas.schema(name).empty(), api_key=KEY) as url:
        client = NasdaqDataLinkClient(KEY, url)
        assert client.latest_date("SF2", today=date(2024, 6, 1)) is None


def test_empty_result_has_the_schema(server) -> None:
    got = make_client(server).fetch_table("SEP", {"ticker": "NOPE"})
    assert got.height == 0
    assert got.schema == schemas.SEP.polars_schema


def test_fake_serves_metadata_and_accepts_header_key(server) -> None:
    resp = httpx.get(f"{server.base_url}/datatables/SHARADAR/SEP/metadata.json", headers={"x-api-token": KEY})
    assert resp.status_code == 200
    meta = resp.json()["datatable"]
    assert [c["name"] for c in meta["columns"]] == list(schemas.SEP.columns)
    assert {c["type"] for c in meta["columns"]} == {"String", "Date", "BigDecimal(34,12)"}
    assert meta["primary_key"] == ["ticker", "date"]
    assert server.requests[-1]["auth"] == "header"


# ---------------------------------------------------------------------- faults


@pytest.mark.parametrize("fault", ["429", "500", "502", "503", "slow", "truncated", "drop"])
def test_each_transient_fault_is_retried(server, provider, fault) -> None:
    sleeps: list[float] = []
    client = make_client(server, sleep=sleeps.append)
    server.inject(fault, fault)  # two in a row on page 1
    assert_frame_equal(client.fetch_table("SEP"), provider("SEP"))
    assert server.counts[fault] == 2
    assert server.counts["ok"] == 5
    assert len(sleeps) == 2 and all(0 <= s <= 0.01 for s in sleeps)  # injected sleep, capped backoff


def test_invalid_cursor_restarts_the_query(server, provider) -> None:
    client = make_client(server)
    server.inject("cursor")  # hits the first call that carries a cursor (page 2)
    assert_frame_equal(client.fetch_table("SEP"), provider("SEP"))
    assert server.counts["cursor"] == 1
    assert server.counts["ok"] == 1 + 5  # page 1, then the whole query again


def test_invalid_cursor_restarts_are_bounded(server) -> None:
    client = make_client(server, max_cursor_restarts=2)
    server.inject(*["cursor"] * 5)
    with pytest.raises(NasdaqDataLinkError, match=r"table SEP: cursor invalidated 3 times \(QESx06\)"):
        client.fetch_table("SEP")
    assert server.counts["cursor"] == 3


def test_retries_are_bounded(server) -> None:
    client = make_client(server, max_retries=2)
    server.inject("503", "503", "503", "503")
    with pytest.raises(NasdaqDataLinkError, match="table SEP page 1: giving up after 3 attempts.*QEXx01"):
        client.fetch_table("SEP")
    assert server.counts["503"] == 3


def test_persistently_truncated_json_is_a_page_error(server) -> None:
    client = make_client(server, max_retries=1)
    server.inject("truncated", "truncated")
    with pytest.raises(NasdaqPageError, match="table SEP page 1.*invalid JSON"):
        client.fetch_table("SEP")


def test_bad_key_fails_at_once(server) -> None:
    client = make_client(server, api_key="wrong-key-123")
    with pytest.raises(NasdaqAuthError, match="table SEP page 1: bad API key.*QEAx01") as exc:
        client.fetch_table("SEP")
    assert server.total_calls == 1 and server.counts["auth"] == 1
    assert "wrong-key-123" not in str(exc.value)


def test_no_permission_fails_at_once(server) -> None:
    with pytest.raises(NasdaqAuthError, match="no permission for table SF3.*QEPx04"):
        make_client(server).fetch_range("SF3", None, None)
    assert server.total_calls == 1 and server.counts["forbidden"] == 1


def test_unknown_table_fails_at_once(server) -> None:
    with pytest.raises(NasdaqDataLinkError, match="unknown table INDICATORS.*QECx02"):
        make_client(server).fetch_table("INDICATORS")
    assert server.total_calls == 1 and server.counts["unknown_table"] == 1


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing_column", r"table SEP page 2: missing columns \['ticker'\]"),
        ("width", "table SEP page 2: row 20 has 9 values but there are 10 columns"),
        ("wrong_type", "table SEP page 2: column 'open' has a value of the wrong type"),
    ],
)
def test_malformed_pages_raise_page_errors(server, kind, message) -> None:
    server.malform(kind, page=2)
    with pytest.raises(NasdaqPageError, match=message):
        make_client(server).fetch_table("SEP")
    assert server.counts["ok"] == 2  # page 1, then page 2 once: a malformed page is not retried
    assert server.counts["malformed"] == 1


# ---------------------------------------------------------------------- the key stays secret


def test_key_never_in_messages_logs_or_repr(server, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(server, max_retries=1, max_cursor_restarts=0)
    errors: list[str] = []
    server.inject("429", "slow", "drop", "truncated", "500", "cursor")
    make_client(server).fetch_table("SEP")  # recovers from each, logging a warning for each
    for faults in (["503", "503"], ["truncated", "truncated"], ["cursor"]):
        server.inject(*faults)
        with pytest.raises(NasdaqDataLinkError) as exc:
            client.fetch_table("SEP")
        errors.append(f"{exc.value!s} {exc.value!r} {exc.value.__cause__!r}")
    server.malform("width", page=1)
    with pytest.raises(NasdaqPageError) as exc:
        client.fetch_table("SEP")
    errors.append(str(exc.value))
    assert sum(r.levelno == logging.WARNING for r in caplog.records) >= 6
    assert any("api_key=***" in r.getMessage() for r in caplog.records)  # httpx's request log, redacted
    assert KEY not in caplog.text
    assert all(KEY not in e for e in errors)
    assert KEY not in repr(client)
    assert redact(f"GET http://x/SEP.json?a=1&api_key={KEY}&b=2") == "GET http://x/SEP.json?a=1&api_key=***&b=2"


# ---------------------------------------------------------------------- the whole point


def test_faulty_server_gives_the_same_tables(provider) -> None:
    """With a fault on 20% of calls the fetched tables equal the fault-free ones."""
    tables = ("SEP", "SF1", "SF2")
    with FakeNasdaqServer(provider, api_key=KEY) as url:
        clean_client = NasdaqDataLinkClient(KEY, url, per_page=25, timeout=TIMEOUT)
        clean = {t: clean_client.fetch_range(t, None, None) for t in tables}
    faulty = FakeNasdaqServer(provider, api_key=KEY, fault_rate=0.2, seed=5, slow_seconds=SLOW)
    with faulty as url:
        client = NasdaqDataLinkClient(KEY, url, per_page=25, timeout=TIMEOUT, backoff_base=0.001,
                                      backoff_max=0.01)
        for t in tables:
            assert_frame_equal(client.fetch_range(t, None, None), clean[t])
            assert clean[t].height > 25  # several pages
    faults = faulty.total_calls - faulty.counts["ok"]
    assert faults >= 3, faulty.counts
    assert 0.05 < faults / faulty.total_calls < 0.4, faulty.counts
