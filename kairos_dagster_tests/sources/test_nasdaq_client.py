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
from kairos_dagster.sources.synthetic import SyntheticMarket
from kairos_dagster_tests.fixtures.nasdaq_server import FakeNasdaqServer

KEY = "sEcReT-kEy-4242"
TIMEOUT = 0.5  # client timeout; the fake's slow fault answers after SLOW seconds
SLOW = 1.0
PER_PAGE = 200
# The fake serves six months of a small synthetic market: SEP is several pages at PER_PAGE.
START, END = date(2023, 10, 1), date(2024, 3, 31)


@pytest.fixture(scope="module")
def provider() -> Callable[[str], pl.DataFrame]:
    market = SyntheticMarket(seed=7, n_tickers=12)
    tables: dict[str, pl.DataFrame] = {}

    def cached(name: str) -> pl.DataFrame:
        if name not in tables:
            dated = schemas.schema(name).pit_column is not None
            tables[name] = market.table(name, START, END) if dated else market.table(name, as_of=END)
        return tables[name]

    # Generate up front: a first request that waits for generation would time out in the client.
    for name in ("SEP", "SF1", "SF2", "SF3", "TICKERS"):
        cached(name)

    return cached


def n_pages(rows: int, per_page: int = PER_PAGE) -> int:
    return max(1, -(-rows // per_page))


@pytest.fixture
def server(provider: Callable[[str], pl.DataFrame]) -> Iterator[FakeNasdaqServer]:
    fake = FakeNasdaqServer(provider, api_key=KEY, forbidden_tables={"SF3"}, slow_seconds=SLOW, seed=11)
    with fake:
        yield fake


def make_client(server: FakeNasdaqServer, **kw) -> NasdaqDataLinkClient:
    key = kw.pop("api_key", KEY)
    opts = {"timeout": TIMEOUT, "backoff_base": 0.001, "backoff_max": 0.01, "per_page": PER_PAGE, **kw}
    return NasdaqDataLinkClient(key, server.base_url, **opts)


# ---------------------------------------------------------------------- paging, filters, columns


def test_paging_returns_every_row_once_in_schema(server, provider) -> None:
    client = make_client(server)
    got = client.fetch_table("SEP")
    expected = provider("SEP")
    pages = n_pages(expected.height)
    assert pages >= 3 and expected.height % PER_PAGE  # several pages, the last one partial
    assert_frame_equal(got, expected)  # exact columns, order, dtypes and rows
    assert got.schema == schemas.SEP.polars_schema
    assert server.counts["ok"] == pages
    params = [r["params"] for r in server.requests]
    assert all(r["auth"] == "query" for r in server.requests)
    assert all(p["qopts.per_page"] == str(PER_PAGE) for p in params)
    assert "qopts.cursor_id" not in params[0]
    assert len({p["qopts.cursor_id"] for p in params[1:]}) == pages - 1


def test_untimed_table_with_integer_columns(server, provider) -> None:
    got = make_client(server).fetch_table("TICKERS")
    assert got.schema == schemas.TICKERS.polars_schema
    assert_frame_equal(got, provider("TICKERS"))


def test_range_and_list_filters(server, provider) -> None:
    client = make_client(server)
    sep = provider("SEP")
    days = sep["date"].unique().sort()
    lo, hi = days[5], days[9]
    got = client.fetch_range("SEP", lo, hi)
    expected = sep.filter(pl.col("date").is_between(lo, hi))
    assert 0 < got.height < sep.height
    assert_frame_equal(got, expected)
    assert server.requests[0]["params"]["date.gte"] == lo.isoformat()
    assert server.requests[0]["params"]["date.lte"] == hi.isoformat()

    pair = sep["ticker"].unique().sort()[:2].to_list()
    got = client.fetch_table("SEP", {"ticker": pair, "date.gt": days[-4]})
    assert_frame_equal(got, sep.filter(pl.col("ticker").is_in(pair), pl.col("date") > days[-4]))
    assert got.height == 2 * 3
    assert server.requests[-1]["params"]["ticker"] == ",".join(pair)

    sf1 = provider("SF1")
    mid = date(2024, 1, 1)
    got = client.fetch_range("SF1", mid, None, {"dimension": ["ARQ", "ART"]})
    expected = sf1.filter(pl.col("dimension").is_in(["ARQ", "ART"]), pl.col("datekey") >= mid)
    assert 0 < got.height < sf1.height
    assert_frame_equal(got, expected)

    sf2 = provider("SF2")
    got = client.fetch_range("SF2", None, mid)
    assert 0 < got.height < sf2.height
    assert_frame_equal(got, sf2.filter(pl.col("filingdate") <= mid))


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
    assert client.latest_date("SEP", today=date(2024, 4, 5)) == provider("SEP")["date"].max()
    assert client.latest_date("SF1", today=date(2024, 9, 1)) == provider("SF1")["datekey"].max()
    # Rows dated after `today` still count: it is the newest date the source holds.
    assert client.latest_date("SF2", today=date(2023, 6, 1)) == provider("SF2")["filingdate"].max()


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
    assert server.counts["ok"] == n_pages(provider("SEP").height)
    assert len(sleeps) == 2 and all(0 <= s <= 0.01 for s in sleeps)  # injected sleep, capped backoff


def test_invalid_cursor_restarts_the_query(server, provider) -> None:
    client = make_client(server)
    server.inject("cursor")  # hits the first call that carries a cursor (page 2)
    assert_frame_equal(client.fetch_table("SEP"), provider("SEP"))
    assert server.counts["cursor"] == 1
    assert server.counts["ok"] == 1 + n_pages(provider("SEP").height)  # page 1, then the whole query again


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


def test_rejected_request_is_not_retried(server) -> None:
    with pytest.raises(NasdaqDataLinkError, match="table SEP page 1: request rejected.*HTTP 400 QECx04"):
        make_client(server).fetch_table("SEP", {"tickr": "AAA"})  # a filter the server does not know
    assert server.total_calls == 1 and server.counts["bad_filter"] == 1


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing_column", r"table SEP page 2: missing columns \['ticker'\]"),
        ("width", f"table SEP page 2: row {PER_PAGE // 2} has 9 values but there are 10 columns"),
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
    # Page sizes that give each table several pages.
    tables = {"SEP": 50, "SF1": 4, "SF2": 3}
    with FakeNasdaqServer(provider, api_key=KEY) as url:
        clean = {t: NasdaqDataLinkClient(KEY, url, per_page=n).fetch_range(t, None, None)
                 for t, n in tables.items()}
    faulty = FakeNasdaqServer(provider, api_key=KEY, fault_rate=0.2, seed=5, slow_seconds=SLOW)
    with faulty as url:
        for t, n in tables.items():
            client = NasdaqDataLinkClient(KEY, url, per_page=n, timeout=TIMEOUT, backoff_base=0.001,
                                          backoff_max=0.01)
            assert n_pages(clean[t].height, n) >= 4
            assert_frame_equal(client.fetch_range(t, None, None), clean[t])
    faults = faulty.total_calls - faulty.counts["ok"]
    assert faults >= 3, faulty.counts
    assert 0.05 < faults / faulty.total_calls < 0.4, faulty.counts
    assert len(set(faulty.counts) - {"ok"}) >= 4, faulty.counts  # several kinds of fault, not one


@pytest.mark.parametrize("error_key", ["quandl_error", "error"])
def test_both_error_bodies_are_handled_alike(provider, error_key) -> None:
    """The API documents {"quandl_error": {...}}; the official SDK reads {"error": {...}}: same handling."""
    fake = FakeNasdaqServer(provider, api_key=KEY, forbidden_tables={"SF3"}, slow_seconds=SLOW, error_key=error_key)
    with fake:
        # the code and message are read from the body (not the raw JSON text after a bare status)
        with pytest.raises(NasdaqAuthError, match=r"bad API key \(HTTP \d+ QEAx01: [^{]"):
            make_client(fake, api_key="wrong-key-123").fetch_table("SEP")
        with pytest.raises(NasdaqAuthError, match=r"no permission for table SF3 \(HTTP \d+ QEPx04: [^{]"):
            make_client(fake).fetch_range("SF3", None, None)
        with pytest.raises(NasdaqDataLinkError, match=r"unknown table INDICATORS \(HTTP \d+ QECx02: [^{]"):
            make_client(fake).fetch_table("INDICATORS")
        assert fake.total_calls == 3
