"""A local fake of the Nasdaq Data Link datatables API (SHARADAR), with fault injection.

A real HTTP server (stdlib ThreadingHTTPServer) on 127.0.0.1 and an ephemeral port, serving tables
from a provider callable `(table_name) -> pl.DataFrame` in the real JSON format, with filters,
`qopts.columns`, `qopts.per_page`, opaque cursors, key checks and the real error codes. Faults are
injected on demand (`inject`) or at random on a share of data calls (`fault_rate`, seeded RNG), and
every call is counted by outcome in `counts` so tests can assert on retries.

    with FakeNasdaqServer(provider, api_key="k") as base_url:
        client = NasdaqDataLinkClient("k", base_url)
"""

from __future__ import annotations

import collections
import json
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import polars as pl

from kairos_dagster.sources import schemas

# Transient faults that a correct client recovers from.
TRANSIENT_FAULTS: tuple[str, ...] = ("429", "500", "502", "503", "slow", "truncated", "drop", "cursor")
MALFORMED_KINDS: tuple[str, ...] = ("missing_column", "width", "wrong_type")

_ERRORS: dict[str, tuple[int, str, str]] = {
    "429": (429, "QELx01", "You have exceeded the API speed limit of 300 calls per 10 seconds."),
    "500": (500, "QEMx01", "Something went wrong. Please try again."),
    "502": (502, "QEXx02", "The request could not be completed (connectivity)."),
    "503": (503, "QEXx01", "The request timed out, please try again."),
    "cursor": (400, "QESx06", "The cursor_id is invalid or has expired."),
    "auth": (400, "QEAx01", "We could not recognize your API key. Please check your API key and try again."),
    "forbidden": (403, "QEPx04", "You do not have permission to view this dataset."),
    "unknown_table": (404, "QECx02", "The requested datatable does not exist."),
    "bad_filter": (400, "QECx04", "Invalid filter or column."),
    "too_many": (422, "QELx06", "Too many rows requested; qopts.per_page is at most 10000."),
}

# Realistic type strings: most SHARADAR numbers are BigDecimal(34,12), ratios come as double.
_DOUBLE_COLUMNS = frozenset({"pe", "pb", "ps", "evebit", "evebitda", "de", "currentratio", "divyield"})


def type_string(name: str, dtype: pl.DataType) -> str:
    if dtype == pl.Date:
        return "Date"
    if dtype.is_integer():
        return "Integer"
    if dtype.is_float():
        return "double" if name in _DOUBLE_COLUMNS else "BigDecimal(34,12)"
    return "String"


@dataclass
class _Cursor:
    signature: tuple[Any, ...]
    offset: int
    page: int  # 1-based index of the page this cursor returns


class FakeNasdaqServer:
    def __init__(
        self,
        provider: Callable[[str], pl.DataFrame],
        *,
        api_key: str = "test-key",
        tables: Iterable[str] = tuple(schemas.TABLES),
        forbidden_tables: Iterable[str] = (),
        fault_rate: float = 0.0,
        faults: Iterable[str] = TRANSIENT_FAULTS,
        seed: int = 0,
        slow_seconds: float = 0.5,
        max_per_page: int = 10_000,
        error_key: str = "quandl_error",
    ) -> None:
        if error_key not in ("quandl_error", "error"):
            raise ValueError(f"error_key must be 'quandl_error' (the API's) or 'error' (the SDK's), got {error_key!r}")
        self.error_key = error_key
        self.provider = provider
        self.api_key = api_key
        self.tables = {t.upper() for t in tables}
        self.forbidden_tables = {t.upper() for t in forbidden_tables}
        self.fault_rate = fault_rate
        self.faults = tuple(faults)
        unknown = set(self.faults) - set(TRANSIENT_FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {TRANSIENT_FAULTS}")
        self.slow_seconds = slow_seconds
        self.max_per_page = max_per_page
        self.counts: collections.Counter[str] = collections.Counter()
        self.requests: list[dict[str, Any]] = []  # path, params (without the key), auth channel
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._cache: dict[str, pl.DataFrame] = {}
        self._cursors: dict[str, _Cursor] = {}
        self._forced: collections.deque[str] = collections.deque()
        self._malformed: tuple[str, int] | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("fake Nasdaq server is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/api/v3"

    def start(self) -> str:
        server = self

        class Handler(_Handler):
            fake = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        # A short poll interval makes stop() quick (shutdown waits for the next poll).
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-nasdaq", daemon=True)
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inject(self, *kinds: str) -> None:
        """Force these faults, in order, on the next data calls (before any random fault)."""
        for kind in kinds:
            if kind not in TRANSIENT_FAULTS:
                raise ValueError(f"unknown fault {kind!r}; known: {TRANSIENT_FAULTS}")
        with self._lock:
            self._forced.extend(kinds)

    def malform(self, kind: str | None, page: int = 1) -> None:
        """Corrupt page `page` (1-based) of every query with `kind`; None switches it off."""
        if kind is not None and kind not in MALFORMED_KINDS:
            raise ValueError(f"unknown malformed kind {kind!r}; known: {MALFORMED_KINDS}")
        with self._lock:
            self._malformed = None if kind is None else (kind, page)

    def expire_cursors(self) -> None:
        with self._lock:
            self._cursors.clear()

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.requests.clear()

    @property
    def total_calls(self) -> int:
        return sum(self.counts.values())

    # ------------------------------------------------------------------ request logic

    def _table(self, name: str) -> pl.DataFrame:
        with self._lock:
            if name not in self._cache:
                self._cache[name] = self.provider(name)
            return self._cache[name]

    def _pick_fault(self, has_cursor: bool) -> str | None:
        with self._lock:
            if self._forced:
                # A forced invalid-cursor fault waits for a call that carries a cursor.
                if self._forced[0] == "cursor" and not has_cursor:
                    return None
                return self._forced.popleft()
            if self.fault_rate and self._rng.random() < self.fault_rate:
                choices = [f for f in self.faults if f != "cursor" or has_cursor]
                return self._rng.choice(choices) if choices else None
        return None

    def handle(self, path: str, query: dict[str, str], header_key: str | None) -> tuple[int, bytes, str]:
        """(status, body, outcome) for one GET; the outcome is what `counts` records."""
        query_key = query.pop("api_key", None)
        key = query_key if query_key is not None else header_key
        auth = "query" if query_key is not None else ("header" if header_key is not None else "none")
        with self._lock:
            self.requests.append({"path": path, "params": dict(query), "auth": auth})
        if key != self.api_key:
            return _error("auth", self.error_key)
        prefix = "/api/v3/datatables/SHARADAR/"
        if not path.startswith(prefix):
            return _error("unknown_table", self.error_key)
        rest = path[len(prefix):]
        if rest.endswith("/metadata.json"):
            table = rest[: -len("/metadata.json")].upper()
            if table not in self.tables:
                return _error("unknown_table", self.error_key)
            return 200, json.dumps(self._metadata(table)).encode(), "metadata"
        if not rest.endswith(".json"):
            return _error("unknown_table", self.error_key)
        table = rest[: -len(".json")].upper()
        if table not in self.tables:
            return _error("unknown_table", self.error_key)
        if table in self.forbidden_tables:
            return _error("forbidden", self.error_key)

        cursor_id = query.get("qopts.cursor_id")
        fault = self._pick_fault(cursor_id is not None)
        if fault == "drop":
            return 0, b"", "drop"
        elif fault in _ERRORS:
            return _error(fault, self.error_key)

        try:
            frame, next_cursor, page = self._select(table, query)
        except _BadRequest as exc:
            return _error(exc.kind, self.error_key)
        body = self._render(frame, next_cursor, page)
        if fault == "truncated":
            return 200, body[: max(1, len(body) // 2)], "truncated"
        return 200, body, fault or "ok"

    def _select(self, table: str, query: dict[str, str]) -> tuple[pl.DataFrame, str | None, int]:
        df = self._table(table)
        per_page = int(query.get("qopts.per_page", self.max_per_page))
        if not 1 <= per_page <= self.max_per_page:
            raise _BadRequest("too_many")
        columns = query.get("qopts.columns")
        wanted = columns.split(",") if columns else list(df.columns)
        if any(c not in df.columns for c in wanted):
            raise _BadRequest("bad_filter")
        filters = {k: v for k, v in query.items() if not k.startswith("qopts.")}
        signature = (table, tuple(sorted(filters.items())), tuple(wanted), per_page)

        cursor_id = query.get("qopts.cursor_id")
        offset, page = 0, 1
        if cursor_id is not None:
            with self._lock:  # cursors stay valid until expired, so a retried page can reuse one
                cur = self._cursors.get(cursor_id)
            if cur is None or cur.signature != signature:
                raise _BadRequest("cursor")
            offset, page = cur.offset, cur.page

        mask = pl.lit(True)
        for key, raw in filters.items():
            column, _, op = key.partition(".")
            if column not in df.columns or op not in ("", "gt", "gte", "lt", "lte"):
                raise _BadRequest("bad_filter")
            dtype = df.schema[column]
            if op == "":
                values = [_coerce(v, dtype) for v in raw.split(",")]
                mask &= pl.col(column).is_in(values)
            else:
                value = _coerce(raw, dtype)
                col = pl.col(column)
                mask &= {"gt": col > value, "gte": col >= value, "lt": col < value, "lte": col <= value}[op]
        selected = df.filter(mask).select(wanted)
        chunk = selected.slice(offset, per_page)
        next_cursor = None
        if offset + per_page < selected.height:
            with self._lock:
                next_cursor = f"{self._rng.getrandbits(64):016x}"
                self._cursors[next_cursor] = _Cursor(signature, offset + per_page, page + 1)
        return chunk, next_cursor, page

    def _render(self, frame: pl.DataFrame, next_cursor: str | None, page: int) -> bytes:
        columns = [{"name": n, "type": type_string(n, t)} for n, t in frame.schema.items()]
        out = frame.with_columns(pl.col(pl.Date).dt.to_string("%Y-%m-%d"))
        rows = [list(r) for r in out.rows()]
        # JSON has no NaN: the real feed sends null for a missing number.
        rows = [[None if isinstance(v, float) and v != v else v for v in r] for r in rows]
        malformed = self._malformed
        if malformed is not None and malformed[1] == page and frame.width:
            kind = malformed[0]
            if kind == "missing_column":
                columns = columns[1:]
                rows = [r[1:] for r in rows]
            elif kind == "width" and rows:
                rows[len(rows) // 2] = rows[len(rows) // 2][:-1]
            elif kind == "wrong_type" and rows:
                i = next((j for j, c in enumerate(columns) if c["type"] not in ("String", "Date")), None)
                if i is not None:
                    rows[0][i] = "not-a-number"
        with self._lock:
            if malformed is not None and malformed[1] == page:
                self.counts["malformed"] += 1
        payload = {"datatable": {"data": rows, "columns": columns}, "meta": {"next_cursor_id": next_cursor}}
        return json.dumps(payload).encode()

    def _metadata(self, table: str) -> dict[str, Any]:
        ts = schemas.TABLES.get(table)
        frame = self._table(table)
        return {"datatable": {
            "vendor_code": "SHARADAR", "datatable_code": table, "name": table, "premium": True,
            "columns": [{"name": n, "type": type_string(n, t)} for n, t in frame.schema.items()],
            "filters": [ts.pit_column, "ticker"] if ts and ts.pit_column else ["ticker"],
            "primary_key": list(ts.key) if ts else [],
        }}


class _BadRequest(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def _error(kind: str, key: str = "quandl_error") -> tuple[int, bytes, str]:
    status, code, message = _ERRORS[kind]
    return status, json.dumps({key: {"code": code, "message": message}}).encode(), kind


def _coerce(raw: str, dtype: pl.DataType) -> Any:
    try:
        if dtype == pl.Date:
            return date.fromisoformat(raw)
        if dtype.is_integer():
            return int(raw)
        if dtype.is_float():
            return float(raw)
    except ValueError:
        raise _BadRequest("bad_filter") from None
    return raw


class _Handler(BaseHTTPRequestHandler):
    fake: FakeNasdaqServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        status, body, outcome = self.fake.handle(unquote(parts.path), query, self.headers.get("x-api-token"))
        with self.fake._lock:  # counted before any delay, so a test sees it once the client moved on
            self.fake.counts[outcome] += 1
        if outcome == "slow":
            time.sleep(self.fake.slow_seconds)  # the client has timed out by now; we answer anyway
        if status == 0:  # "drop": close the connection without an answer
            self.close_connection = True
            return
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (slow fault)
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet; never log the key
        pass
