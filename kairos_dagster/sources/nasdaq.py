"""Nasdaq Data Link (SHARADAR datatables) client: paged, retried, typed into polars.

Contract: /work/shared/reference/nasdaq-data-link.md. One GET per page on
`{base}/datatables/SHARADAR/{TABLE}.json`, cursor pagination via `meta.next_cursor_id`.
Transient failures (429, 5xx, timeouts, dropped connections, truncated JSON) are retried with
exponential backoff and full jitter; a bad key, a missing permission or an unknown table fail at once.
The API key is sent as the `api_key` query parameter and is redacted from every message and log line.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import date, timedelta
from typing import Any

import httpx
import polars as pl
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_random_exponential

from kairos_dagster.sources import schemas

log = logging.getLogger(__name__)

MAX_PER_PAGE = 10_000
# SHARADAR history starts in 1998; `latest_date` stops widening its look-back window there.
HISTORY_START = date(1998, 1, 1)

_KEY_IN_URL = re.compile(r"(api_key=)[^&\s'\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with any `api_key=...` query value replaced, so a URL can go into a message or log."""
    return _KEY_IN_URL.sub(r"\1***", text)


class _RedactKeyFilter(logging.Filter):
    """httpx logs every request URL at INFO; this strips the api_key from those records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(redact(str(a)) if "api_key" in str(a).lower() else a for a in args)
        if isinstance(record.msg, str) and "api_key" in record.msg.lower():
            record.msg = redact(record.msg)
        return True


_REDACT_FILTER = _RedactKeyFilter()


def _install_log_redaction() -> None:
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if _REDACT_FILTER not in logger.filters:
            logger.addFilter(_REDACT_FILTER)


class NasdaqDataLinkError(RuntimeError):
    """A request to Nasdaq Data Link that failed; the message names the table (and page/cursor)."""


class NasdaqAuthError(NasdaqDataLinkError):
    """Bad API key (QEAx01) or no permission for the table (QEPx04): never retried."""


class NasdaqPageError(NasdaqDataLinkError):
    """A page whose content cannot be trusted: bad JSON, missing columns, width mismatch, wrong types."""


class _Transient(Exception):
    """A failure worth retrying (rate limit, server error, timeout, dropped connection, bad JSON)."""

    def __init__(self, message: str, *, bad_json: bool = False) -> None:
        super().__init__(message)
        self.bad_json = bad_json


class _InvalidCursor(Exception):
    """QESx06: the server no longer knows the cursor; the whole query restarts from page 1."""


# Server type strings -> polars, for columns a table's schema does not declare.
def _dtype_for(type_string: str) -> pl.DataType:
    t = type_string.strip().lower()
    if t == "date":
        return pl.Date()
    if t.startswith("bigdecimal") or t in {"double", "float", "decimal", "numeric"}:
        return pl.Float64()
    if t in {"integer", "int", "long", "bigint"}:
        return pl.Int64()
    return pl.String()


def _encode(value: Any) -> str:
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return ",".join(_encode(v) for v in items)
    return str(value)


class NasdaqDataLinkClient:
    """Fetches SHARADAR datatables as typed polars frames.

    `sleep` replaces `time.sleep` between retries (tests pass a no-op or a recorder).
    """

    def __init__(
        self,
        api_key: str,
        base_url: str = "https://data.nasdaq.com/api/v3",
        *,
        timeout: float = 30.0,
        max_retries: int = 6,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        per_page: int = MAX_PER_PAGE,
        max_cursor_restarts: int = 5,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not api_key or not api_key.strip():
            raise ValueError("Nasdaq Data Link API key is empty (set NASDAQ_DATA_LINK_API_KEY)")
        if not 1 <= per_page <= MAX_PER_PAGE:
            raise ValueError(f"per_page must be between 1 and {MAX_PER_PAGE}, got {per_page}")
        if max_retries < 0 or max_cursor_restarts < 0:
            raise ValueError("max_retries and max_cursor_restarts must be >= 0")
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.per_page = per_page
        self.max_cursor_restarts = max_cursor_restarts
        self._sleep = sleep
        _install_log_redaction()
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
            headers={"Accept": "application/json", "User-Agent": "kairos-dagster"},
            transport=transport,
        )

    def __repr__(self) -> str:  # never show the key
        return f"NasdaqDataLinkClient(base_url={self.base_url!r}, per_page={self.per_page})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> NasdaqDataLinkClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ public API

    def fetch_table(
        self,
        table: str,
        filters: Mapping[str, Any] | None = None,
        columns: Sequence[str] | None = None,
    ) -> pl.DataFrame:
        """All rows of `table` matching `filters`, every page, typed.

        With `columns=None` and a table known to `schemas`, the frame has exactly the schema's
        columns, order and types; with `columns`, exactly those columns in that order.
        """
        table = table.upper()
        table_schema = schemas.TABLES.get(table)
        if columns is not None:
            columns = list(columns)
            if not columns:
                raise ValueError(f"table {table}: columns must not be empty (use None for all)")
            if table_schema is not None:
                unknown = [c for c in columns if c not in table_schema.columns]
                if unknown:
                    raise ValueError(f"table {table}: unknown columns {unknown}")
        empty = [k for k, v in (filters or {}).items()
                 if v is None or (isinstance(v, (list, tuple, set, frozenset)) and not v)]
        if empty:  # `col=None` or `col=` would silently match nothing (or everything)
            raise ValueError(f"table {table}: filters {empty} have no value")
        params: dict[str, str] = {k: _encode(v) for k, v in (filters or {}).items()}
        if columns is not None:
            params["qopts.columns"] = ",".join(columns)
        params["qopts.per_page"] = str(self.per_page)

        restarts = 0
        while True:
            try:
                frames = self._fetch_pages(table, params, columns)
                break
            except _InvalidCursor as exc:
                restarts += 1
                if restarts > self.max_cursor_restarts:
                    raise NasdaqDataLinkError(
                        f"table {table}: cursor invalidated {restarts} times (QESx06), giving up: {exc}"
                    ) from None
                log.warning("table %s: %s; restarting the query from page 1 (restart %d/%d)",
                            table, exc, restarts, self.max_cursor_restarts)

        if frames:
            out = pl.concat(frames, how="vertical")
        elif table_schema is not None:
            out = table_schema.empty()
        else:
            return pl.DataFrame()
        if table_schema is not None:
            if columns is None:
                try:
                    out = schemas.conform(out, table_schema, source="Nasdaq Data Link")
                except ValueError as exc:
                    raise NasdaqPageError(str(exc)) from None
            else:
                out = out.select(pl.col(c).cast(table_schema.columns[c]) for c in columns)
        return out

    def fetch_range(
        self,
        table: str,
        start: date | None,
        end: date | None,
        extra_filters: Mapping[str, Any] | None = None,
    ) -> pl.DataFrame:
        """Rows whose point-in-time column (SEP/DAILY date, SF1 datekey, SF2 filingdate, SF3
        calendardate) lies in [start, end]; `extra_filters` adds e.g. SF1 `dimension`."""
        table_schema = schemas.schema(table)
        pit = table_schema.pit_column
        if pit is None:
            raise ValueError(f"table {table_schema.name} has no point-in-time column; use fetch_table")
        if start is not None and end is not None and start > end:
            raise ValueError(f"table {table_schema.name}: start {start} is after end {end}")
        filters: dict[str, Any] = {}
        for key, value in (extra_filters or {}).items():
            column = key.split(".", 1)[0]
            if column not in table_schema.columns:
                raise ValueError(f"table {table_schema.name}: filter on unknown column {column!r}")
            filters[key] = value
        if start is not None:
            filters[f"{pit}.gte"] = start
        if end is not None:
            filters[f"{pit}.lte"] = end
        return self.fetch_table(table_schema.name, filters)

    def latest_date(self, table: str, *, today: date | None = None) -> date | None:
        """The newest point-in-time value the source holds, or None for an empty table.

        The API cannot sort, so this asks for the pit column alone over a look-back window that
        doubles (a week, two weeks, ...) until it finds rows or reaches the start of history.
        """
        table_schema = schemas.schema(table)
        pit = table_schema.pit_column
        if pit is None:
            raise ValueError(f"table {table_schema.name} has no point-in-time column")
        today = today or date.today()
        lookback = 8
        while True:
            since = today - timedelta(days=lookback)
            filters = {} if since <= HISTORY_START else {f"{pit}.gte": since}
            frame = self.fetch_table(table_schema.name, filters, columns=[pit])
            newest = frame.get_column(pit).max()
            if newest is not None:
                return newest  # type: ignore[return-value]
            if since <= HISTORY_START:
                return None
            lookback *= 4

    # ------------------------------------------------------------------ internals

    def _url(self, table: str) -> str:
        return f"{self.base_url}/datatables/SHARADAR/{table}.json"

    def _fetch_pages(
        self, table: str, params: Mapping[str, str], columns: Sequence[str] | None
    ) -> list[pl.DataFrame]:
        frames: list[pl.DataFrame] = []
        cursor: str | None = None
        seen: set[str] = set()
        page = 1
        while True:
            query = dict(params)
            if cursor is not None:
                query["qopts.cursor_id"] = cursor
            body = self._get_json(table, query, page, cursor)
            frame, cursor = _parse_page(table, body, page, columns)
            if frame.height:
                frames.append(frame)
            if cursor is None:
                return frames
            if cursor in seen:  # a server bug would otherwise loop forever
                raise NasdaqPageError(f"table {table}: page {page} repeats cursor {cursor!r}")
            seen.add(cursor)
            page += 1

    def _get_json(self, table: str, query: dict[str, str], page: int, cursor: str | None) -> Any:
        where = f"table {table} page {page}" + (f" (cursor {cursor})" if cursor else "")
        retrying = Retrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_attempt(self.max_retries + 1),
            wait=wait_random_exponential(multiplier=self.backoff_base, max=self.backoff_max),
            sleep=self._sleep,
            before_sleep=lambda rs: self._log_retry(where, rs),
            reraise=True,
        )
        try:
            return retrying(self._request_once, table, query, where)
        except _Transient as exc:
            cls = NasdaqPageError if exc.bad_json else NasdaqDataLinkError
            raise cls(f"{where}: giving up after {self.max_retries + 1} attempts: {exc}") from None

    def _log_retry(self, where: str, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s: attempt %d failed (%s); retrying in %.3fs", where, state.attempt_number,
                    redact(str(exc)), wait)

    def _request_once(self, table: str, query: dict[str, str], where: str) -> Any:
        try:
            resp = self._http.get(self._url(table), params={**query, "api_key": self._api_key})
        except httpx.TimeoutException as exc:
            raise _Transient(f"timeout after {self.timeout}s ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise _Transient(f"connection error: {type(exc).__name__}: {redact(str(exc))}") from None
        if resp.status_code != 200:
            self._raise_for_error(resp, table, where)
        try:
            return json.loads(resp.content)
        except ValueError as exc:  # truncated or garbled body
            raise _Transient(f"invalid JSON ({len(resp.content)} bytes): {exc}", bad_json=True) from None

    def _raise_for_error(self, resp: httpx.Response, table: str, where: str) -> None:
        code, message = "", resp.text[:200]
        try:
            body = resp.json()
            # the API's documented body is {"quandl_error": {...}}; the official SDK reads {"error": {...}}
            err = body.get("quandl_error") or body.get("error") or {}
            code, message = str(err.get("code", "")), str(err.get("message", message))
        except (ValueError, AttributeError):
            pass
        detail = redact(f"HTTP {resp.status_code} {code}: {message}".replace(self._api_key, "***"))
        status = resp.status_code
        if code == "QEAx01" or (status == 401 and not code):
            raise NasdaqAuthError(f"{where}: bad API key ({detail})")
        if code == "QEPx04" or (status == 403 and not code):
            raise NasdaqAuthError(f"{where}: no permission for table {table} ({detail})")
        if code == "QESx06":
            raise _InvalidCursor(f"{where}: invalid cursor ({detail})")
        if code == "QECx02" or (status == 404 and not code):
            raise NasdaqDataLinkError(f"{where}: unknown table {table} ({detail})")
        if status == 429 or (code.startswith("QEL") and status != 422) or status >= 500:
            raise _Transient(detail)
        raise NasdaqDataLinkError(f"{where}: request rejected ({detail})")


def _parse_page(
    table: str, body: Any, page: int, requested: Sequence[str] | None
) -> tuple[pl.DataFrame, str | None]:
    """One page's JSON -> (typed frame, next cursor). Any structural defect is a NasdaqPageError."""
    where = f"table {table} page {page}"
    try:
        datatable = body["datatable"]
        data = datatable["data"]
        col_specs = datatable["columns"]
        names = [str(c["name"]) for c in col_specs]
        types = [str(c.get("type", "String")) for c in col_specs]
    except (KeyError, TypeError) as exc:
        raise NasdaqPageError(f"{where}: response lacks datatable.data/columns ({exc!r})") from None
    if not isinstance(data, list):
        raise NasdaqPageError(f"{where}: datatable.data is not a list")
    meta = body.get("meta") or {}
    cursor = meta.get("next_cursor_id")
    cursor = None if cursor in (None, "") else str(cursor)

    if len(set(names)) != len(names):
        raise NasdaqPageError(f"{where}: duplicate column names {names}")
    table_schema = schemas.TABLES.get(table)
    expected = list(requested) if requested is not None else (
        list(table_schema.columns) if table_schema is not None else names)
    missing = [c for c in expected if c not in names]
    if missing:
        raise NasdaqPageError(f"{where}: missing columns {missing}")

    width = len(names)
    bad = next((i for i, row in enumerate(data) if not isinstance(row, list) or len(row) != width), None)
    if bad is not None:
        got = len(data[bad]) if isinstance(data[bad], list) else type(data[bad]).__name__
        raise NasdaqPageError(f"{where}: row {bad} has {got} values but there are {width} columns")

    keep = [i for i, n in enumerate(names) if n in expected]
    values = list(zip(*data, strict=True)) if data else [() for _ in names]
    series = []
    for i in keep:
        name = names[i]
        dtype = (table_schema.columns[name] if table_schema is not None and name in table_schema.columns
                 else _dtype_for(types[i]))
        series.append(_typed_series(where, name, list(values[i]), dtype))
    return pl.DataFrame(series), cursor


def _typed_series(where: str, name: str, values: list[Any], dtype: pl.DataType) -> pl.Series:
    def wrong(detail: str) -> NasdaqPageError:
        return NasdaqPageError(f"{where}: column {name!r} has a value of the wrong type for {dtype}: {detail}")

    try:
        if dtype == pl.Date:
            return pl.Series(name, values, dtype=pl.String, strict=True).str.to_date("%Y-%m-%d", strict=True)
        if dtype == pl.Int64:
            try:
                return pl.Series(name, values, dtype=pl.Int64, strict=True)
            except TypeError:  # integral numbers sent as 2.0 are fine; 2.5 is not
                s = pl.Series(name, values, dtype=pl.Float64, strict=True)
                if (s.drop_nulls() != s.drop_nulls().round(0)).any():
                    raise wrong("non-integral number") from None
                return s.cast(pl.Int64)
        if dtype.is_numeric() and any(isinstance(v, bool) for v in values):
            raise wrong("boolean in a numeric column")
        return pl.Series(name, values, dtype=dtype, strict=True)
    except NasdaqPageError:
        raise
    except (TypeError, pl.exceptions.PolarsError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise wrong(first) from None
