"""DuckDB table conventions and atomic writes (no dagster import).

Every asset is the table of the same name in schema `main`. A partitioned table carries a DATE
column (its partition expression, `date` unless the asset says otherwise); writing a window of weeks
is one transaction — delete the window, insert the new rows — so a process killed between the two
statements leaves the previous rows intact.

Two backends, one behaviour. A DuckDB file (the default: one writing process, the others wait for its
lock) or DuckLake (`Lake`: the catalog in PostgreSQL, Parquet data files under a folder or an S3 URL):
there every connection sees the last committed snapshot, several processes write at once, and a write
that conflicts with another's commit is retried from the start.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import duckdb
import polars as pl
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from kairos_dagster.settings import Lake, SettingsError, parse_warehouse
from kairos_dagster.settings import is_lake as is_lake  # re-exported: the store names its targets
from kairos_dagster.warehouse.ordering import in_key_order
from kairos_dagster.warehouse.read_cache import ReadCache, generation, written

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_STAGING = "_kairos_incoming"


class WarehouseError(RuntimeError):
    """A warehouse operation that cannot proceed; the message names the table and the reason."""


def ident(name: str) -> str:
    """A safely quoted SQL identifier (table or column names are never user free text)."""
    if not _IDENT.match(name):
        raise WarehouseError(f"invalid table or column name {name!r}")
    return f'"{name}"'


LAKE_ALIAS = "kairos_lake"
# (package, extension) loaded from the package's own files: the runtime download is not reachable
_LAKE_EXTENSIONS = (("duckdb_extension_postgres_scanner", "postgres_scanner"),
                    ("duckdb_extension_ducklake", "ducklake"))
_HTTPFS = ("duckdb_extension_httpfs", "httpfs")
CONFLICT_RETRIES = 8  # a DuckLake commit that lost a race with another writer is re-run this often


Target = Path | Lake


def target(spec: str | Path | Lake, data_path: str | None = None) -> Target:
    """The warehouse a setting names: `ducklake:postgres:<libpq params>` or a DuckDB file path (the
    parsing is the settings': see settings.parse_warehouse)."""
    try:
        return parse_warehouse(spec, data_path)
    except SettingsError as exc:
        raise WarehouseError(str(exc)) from None


def _extension_file(package: str, name: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise WarehouseError(f"the DuckLake backend needs the package {package.replace('_', '-')}=={duckdb.__version__}")
    path = Path(spec.origin).parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.exists():
        raise WarehouseError(f"{package.replace('_', '-')} has no build for duckdb {duckdb.__version__} ({path}): "
                             "the duckdb pin and the extension packages must move together")
    return str(path)


def _connect_lake(lake: Lake, read_only: bool) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    try:
        needed = list(_LAKE_EXTENSIONS)
        if lake.data_path and "://" in lake.data_path:
            needed.append(_HTTPFS)
        for package, name in needed:
            con.execute(f"LOAD '{_extension_file(package, name)}'")
        if _HTTPFS in needed and (secret := s3_secret_sql(os.environ)) is not None:
            try:
                con.execute(secret)
            except duckdb.Error:  # its message may quote the statement, which holds the key: never shown
                raise WarehouseError("the S3 credentials from AWS_* were refused by DuckDB's httpfs (the values "
                                     "are not shown): check AWS_REGION and AWS_ENDPOINT_URL") from None
        options = []
        if lake.data_path:
            if "://" not in lake.data_path:
                Path(lake.data_path).mkdir(parents=True, exist_ok=True)
            options.append(f"DATA_PATH '{_quote(lake.data_path)}'")
        if read_only:
            options.append("READ_ONLY")
        opts = f" ({', '.join(options)})" if options else ""
        con.execute(f"ATTACH '{_quote(str(lake))}' AS {LAKE_ALIAS}{opts}")
        con.execute(f"USE {LAKE_ALIAS}")
    except duckdb.Error as exc:
        con.close()
        first = str(exc).splitlines()[0]
        if "DATA_PATH" in first or "data path" in first.lower():
            first += " (set KAIROS_LAKE_DATA_PATH to the folder or S3 URL of the lake's files)"
        raise WarehouseError(f"warehouse {lake} cannot be opened: {first}") from exc
    except BaseException:
        con.close()
        raise
    return con


def s3_secret_sql(env: Mapping[str, str]) -> str | None:
    """The DuckDB secret that gives httpfs the AWS credentials of the environment (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION or AWS_DEFAULT_REGION, AWS_ENDPOINT_URL for an
    S3-compatible store): httpfs reads no environment itself. None without a key (anonymous access).
    The statement holds the secret: it is executed, never logged."""
    key = env.get("AWS_ACCESS_KEY_ID", "").strip()
    if not key:
        return None
    if not env.get("AWS_SECRET_ACCESS_KEY", "").strip():
        raise WarehouseError("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not: set both, or neither "
                             "for anonymous access to the lake's files")
    fields = {"KEY_ID": key, "SECRET": env.get("AWS_SECRET_ACCESS_KEY", "").strip(),
              "SESSION_TOKEN": env.get("AWS_SESSION_TOKEN", "").strip(),
              "REGION": (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "").strip()}
    endpoint = env.get("AWS_ENDPOINT_URL", "").strip()
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        fields |= {"ENDPOINT": host.rstrip("/") or scheme, "USE_SSL": "true" if scheme != "http" else "false",
                   "URL_STYLE": "path"}
    options = ", ".join(f"{k} '{_quote(v)}'" if k != "USE_SSL" else f"{k} {v}" for k, v in fields.items() if v)
    return f"CREATE OR REPLACE SECRET kairos_s3 (TYPE s3, PROVIDER config, {options})"


_LAKE_BASES: dict[Lake, tuple[int, duckdb.DuckDBPyConnection]] = {}


def _lake_base(lake: Lake) -> duckdb.DuckDBPyConnection:
    """One attached lake per process (loading the extensions and attaching costs ~0.4 s); connections are
    its cursors. A forked child attaches its own: a DuckDB handle never crosses a fork."""
    pid = os.getpid()
    held = _LAKE_BASES.get(lake)
    if held is None or held[0] != pid:
        _LAKE_BASES[lake] = (pid, _connect_lake(lake, read_only=False))
    return _LAKE_BASES[lake][1]


def _quote(text: str) -> str:
    return text.replace("'", "''")


def exists(where: str | Path | Lake) -> bool:
    """Whether the warehouse holds anything yet (a DuckDB file exists; a lake has a table)."""
    where = target(where)
    if isinstance(where, Path):
        return where.exists()
    try:
        with connect(where) as con:
            return bool(con.execute("SELECT count(*) FROM information_schema.tables "
                                    "WHERE table_catalog = current_database()").fetchone()[0])
    except WarehouseError:
        return False


def open_lake_connection(lake: str | Lake) -> duckdb.DuckDBPyConnection:
    """A connection to the lake that the caller closes (a long-lived holder: the simulated broker)."""
    lake = target(lake)
    if not isinstance(lake, Lake):
        raise WarehouseError(f"{lake} is not a DuckLake")
    con = _lake_base(lake).cursor()
    con.execute(f"USE {LAKE_ALIAS}")
    return con


def table_ddl(con: duckdb.DuckDBPyConnection, ddl: str) -> str:
    """`ddl` as `con`'s warehouse takes it: on DuckLake, which has no key constraints, without its PRIMARY KEY
    and UNIQUE clauses (the writer then keeps its keys unique itself)."""
    if not on_lake(con):
        return ddl
    return re.sub(r",\s*(UNIQUE|PRIMARY KEY) \([^)]*\)", "", ddl).replace(" PRIMARY KEY", "")


def on_lake(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether `con` works in a DuckLake (which has no PRIMARY KEY or UNIQUE constraints)."""
    return con.execute("SELECT current_database()").fetchone()[0] == LAKE_ALIAS


# DuckDB checkpoints a file when its last connection closes, and on a multi-GB warehouse that can cost about a
# second whatever was written (1.1 s on a 12.6 GB file with 3.6 GB of free blocks, 3-65 ms on a fresh 9 GB
# one); a run that writes 40 tables a week paid 40 s for it. So a run's process holds one connection open from its start to its end (`held_open`): the
# steps' connections share that database instance, open and close in milliseconds, and the commits stay
# in the write-ahead log (fsynced at every commit; DuckDB still checkpoints by itself when it passes its
# threshold) until the held connection closes and checkpoints once. Keeping the instance is what matters:
# connections that closed without a checkpoint would make every later one replay the growing log.
_HELD: dict[Path, list] = {}  # file -> [depth, the held connection]
_CACHES: dict[Path, ReadCache] = {}  # file -> the read cache of the block that holds it (read_cache)
# The held instance also keeps what the run wrote in memory until a checkpoint (a 10-year feature backfill
# grew by 4.8 GB): past this, the connection that closes lets the instance go (one checkpoint, as without
# holding) and a fresh one is held. Weekly runs never reach it; a backfill's big writes pay as before.
HELD_MEMORY_BYTES = 1 << 30


def _release_if_large(path: Path) -> None:
    held = _HELD.get(path)
    if held is None or held[1] is None:  # nothing held (any more): connections checkpoint on close again
        return
    used = held[1].execute("SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()").fetchone()[0]
    if used <= HELD_MEMORY_BYTES:
        return
    with suppress(duckdb.Error):
        held[1].close()  # the last connection to close: DuckDB checkpoints and frees the instance
    if path in _CACHES:  # the file's lock is free until it is held anew: another process may write in between
        _CACHES[path].clear()
    try:
        held[1] = duckdb.connect(str(path))
    except duckdb.Error:  # taken by another process in between: hold nothing more
        held[1] = None


@contextmanager
def held_open(spec: str | Path | Lake) -> Iterator[None]:
    """The DuckDB file `spec` kept open by this process for the block (nested blocks: the outermost), so
    its connections inside share one instance and the block's end checkpoints once. No-op for a DuckLake,
    a file that does not exist yet, or one this process cannot open now (its connections then behave as
    without the block). A process killed inside loses no commit: the next connection replays the log."""
    where = target(spec)
    if isinstance(where, Lake) or not where.exists():
        yield
        return
    path = where.resolve()
    if path in _HELD:
        _HELD[path][0] += 1
    else:
        try:
            _HELD[path] = [1, duckdb.connect(str(path))]
        except duckdb.Error:  # locked by another process, or open here read-only: nothing to hold
            yield
            return
        _CACHES[path] = ReadCache()
    try:
        yield
    finally:
        _HELD[path][0] -= 1
        if not _HELD[path][0]:
            _CACHES.pop(path, None)
            _, con = _HELD.pop(path)
            # a checkpoint that fails here loses nothing: the log stays and the next close folds it in
            if con is not None:
                with suppress(duckdb.Error):
                    con.close()


@contextmanager
def connect(path: str | Path | Lake, *, read_only: bool = False, retries: int = 20, wait_s: float = 0.5) -> Iterator[
    duckdb.DuckDBPyConnection
]:
    """Open the warehouse; on a file, waits briefly for another process's lock, then fails with a clear message."""
    where = target(path)
    if isinstance(where, Lake):
        con = open_lake_connection(where)  # its own transactions and views, the process's attached lake
        try:
            yield con
        finally:
            con.close()
        return
    path = where
    if read_only and not path.exists():
        raise WarehouseError(f"warehouse {path} does not exist yet: run a sync first (`kairos sync` or `make demo`)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if read_only and _HELD.get(path.resolve(), [0, None])[1] is not None:
        read_only = False  # DuckDB opens one instance per file and process: the held one, read-write
    last: Exception | None = None
    for _ in range(max(1, retries)):
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as exc:  # the file lock held by another process
            last = exc
            time.sleep(wait_s)
    else:
        raise WarehouseError(
            f"warehouse {path} is locked by another process (a run in progress?): {last}"
        ) from last
    try:
        yield con
    finally:
        con.close()
        if path.resolve() in _HELD:
            _release_if_large(path.resolve())


def table_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The warehouse's tables, sorted (the current database's main schema: not a lake's catalog tables)."""
    return [r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database() "
        "AND table_schema = 'main' ORDER BY table_name").fetchall()]


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    row = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database() "
        "AND table_schema = 'main' AND table_name = ?", [table]
    ).fetchone()
    return bool(row and row[0])


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    rows = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_catalog = current_database() "
        "AND table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
        [table],
    ).fetchall()
    return {name: dtype for name, dtype in rows}


def _check_frame(table: str, df: pl.DataFrame) -> None:
    untyped = [c for c, t in df.schema.items() if t == pl.Null]
    if untyped:
        raise WarehouseError(f"{table}: columns {untyped} have no type (all null without a cast)")
    for c in df.columns:
        ident(c)


def _sync_schema(con: duckdb.DuckDBPyConnection, table: str, staging: str = _STAGING) -> None:
    """Create the table from the staged frame, or add columns the frame has and the table lacks."""
    if not table_exists(con, table):
        con.execute(f"CREATE TABLE {ident(table)} AS SELECT * FROM {staging} LIMIT 0")
        return
    existing = table_columns(con, table)
    staged = con.execute(f"DESCRIBE {staging}").fetchall()
    for name, dtype, *_ in staged:
        if name not in existing:
            con.execute(f"ALTER TABLE {ident(table)} ADD COLUMN {ident(name)} {dtype}")


# DuckDB scans a registered frame one Arrow record batch per thread and inserts the batches in order: a frame
# of one chunk (what a polars computation returns) is written by one thread, and so is one whose columns are
# chunked differently (key columns from a read, values computed): its export to Arrow makes it one chunk.
# Measured on feat_price_shape (3.7 M rows x 38 columns, 2 cores): 7.5-8.5 s in one chunk, 4.1-4.8 s in chunks
# of 4 DuckDB row groups.
BATCH_ROWS = 4 * 122_880


def in_batches(df: pl.DataFrame, rows: int = BATCH_ROWS) -> pl.DataFrame:
    """`df` as aligned chunks of at most `rows` rows, in order: zero-copy slices, where a slice's columns
    are not one chunk each that slice copied into one."""
    if df.height <= rows:
        return df
    parts = [df.slice(i, rows) for i in range(0, df.height, rows)]
    return pl.concat([p if max(p.n_chunks("all"), default=1) == 1 else p.rechunk() for p in parts], rechunk=False)


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection, failure: str,
                frames: Mapping[str, pl.DataFrame] | None = None, *,
                tables: Sequence[str] | None = None) -> Iterator[None]:
    """Run the body in one transaction, with `frames` registered as views under their names: committed
    when it returns, rolled back on any error (a DuckDB error re-raised as WarehouseError(`failure`)).
    `tables`: the tables the body writes, for the run's read cache (None: any table)."""
    frames = dict(frames or {})
    for name, df in frames.items():
        con.register(name, in_batches(df))
    try:
        con.execute("BEGIN TRANSACTION")
        try:
            yield
            con.execute("COMMIT")
        except BaseException:
            with suppress(duckdb.Error):  # a failed COMMIT (a DuckLake conflict) has already ended the transaction
                con.execute("ROLLBACK")
            raise
    except duckdb.Error as exc:
        raise WarehouseError(f"{failure}: {exc}") from exc
    finally:
        written(tables)
        for name in frames:
            con.unregister(name)


def _is_conflict(exc: BaseException) -> bool:
    """A commit that lost a race with another writer's (DuckLake: optimistic concurrency)."""
    return isinstance(exc, duckdb.TransactionException) or "conflict" in str(exc).lower()


def atomic(con: duckdb.DuckDBPyConnection, failure: str, body: Callable[[], None],
           frames: Mapping[str, pl.DataFrame] | None = None, *, retries: int = CONFLICT_RETRIES,
           tables: Sequence[str] | None = None) -> None:
    """`body` in one transaction (see `transaction`), run again from the start when its commit conflicted
    with another process's (a DuckLake writer of the same table); the other errors are not retried."""
    def once() -> None:
        with transaction(con, failure, frames, tables=tables):
            body()

    Retrying(stop=stop_after_attempt(retries + 1), wait=wait_exponential(multiplier=0.05, max=2.0), reraise=True,
             retry=retry_if_exception(lambda e: isinstance(e, WarehouseError) and _is_conflict(e.__cause__ or e)),
             )(once)


def replace_window(
    con: duckdb.DuckDBPyConnection,
    table: str,
    df: pl.DataFrame,
    column: str,
    start: dt.date,
    end: dt.date,
    *,
    scope: dict[str, str] | None = None,
    after_delete: Callable[[], None] | None = None,
) -> int:
    """Atomically replace the rows of `table` with `column` in [start, end) by `df`.

    Every row of `df` must lie in the window: an asset writes exactly its partitions. `scope`
    narrows the delete to rows with these column values (a table shared by several writers).
    `after_delete` is a test hook run between the delete and the insert.
    """
    _check_frame(table, df)
    if column not in df.columns:
        raise WarehouseError(f"{table}: partition column {column!r} is missing from the output")
    if df.height:
        col = df.get_column(column)
        if col.null_count():
            raise WarehouseError(f"{table}: {col.null_count()} rows have a null {column}")
        lo, hi = col.min(), col.max()
        if lo < start or hi >= end:
            raise WarehouseError(
                f"{table}: rows dated {lo}..{hi} fall outside the partition window {start}..{end - dt.timedelta(days=1)}"
            )
    scope_sql = "".join(f" AND {ident(k)} = ?" for k in (scope or {}))

    def write() -> None:
        _sync_schema(con, table)
        con.execute(
            f"DELETE FROM {ident(table)} WHERE {ident(column)} >= ? AND {ident(column)} < ?{scope_sql}",
            [start, end, *(scope or {}).values()],
        )
        if after_delete is not None:
            after_delete()
        con.execute(f"INSERT INTO {ident(table)} BY NAME SELECT * FROM {_STAGING}")

    atomic(con, f"{table}: write of {start}..{end} failed", write, {_STAGING: df}, tables=[table])
    return df.height


def replace_table(con: duckdb.DuckDBPyConnection, table: str, df: pl.DataFrame) -> int:
    """Atomically replace the whole table by `df` (unpartitioned assets)."""
    _check_frame(table, df)
    atomic(con, f"{table}: write failed",
           lambda: con.execute(f"CREATE OR REPLACE TABLE {ident(table)} AS SELECT * FROM {_STAGING}"),
           {_STAGING: df}, tables=[table])
    return df.height


def upsert_rows(
    con: duckdb.DuckDBPyConnection, table: str, df: pl.DataFrame, key: Sequence[str]
) -> int:
    """Atomically replace the rows of `table` whose `key` values appear in `df` by `df`'s rows.

    Rows of `df` may repeat a key (e.g. several metrics of one model version): every stored row with
    that key goes, all of `df` comes in. An empty `df` still creates the table with its schema.
    """
    return upsert_many(con, [(table, df, key)])[0]


def upsert_many(
    con: duckdb.DuckDBPyConnection, writes: Sequence[tuple[str, pl.DataFrame, Sequence[str]]]
) -> list[int]:
    """`upsert_rows` of several tables in one transaction: all of them are written, or none."""
    for table, df, key in writes:
        _check_frame(table, df)
        for k in key:
            if k not in df.columns:
                raise WarehouseError(f"{table}: key column {k!r} is missing from the rows")
    names = [f"{_STAGING}_{i}" for i in range(len(writes))]
    tables = ", ".join(t for t, _, _ in writes)

    def write() -> None:
        for name, (table, _, key) in zip(names, writes, strict=True):
            _sync_schema(con, table, name)
            # null-safe: a key part may be null (e.g. the date of a per-model metric)
            cond = " AND ".join(f"t.{ident(k)} IS NOT DISTINCT FROM s.{ident(k)}" for k in key)
            con.execute(f"DELETE FROM {ident(table)} t USING {name} s WHERE {cond}")
            con.execute(f"INSERT INTO {ident(table)} BY NAME SELECT * FROM {name}")

    atomic(con, f"{tables}: upsert failed", write, {n: df for n, (_, df, _) in zip(names, writes, strict=True)},
           tables=[t for t, _, _ in writes])
    return [df.height for _, df, _ in writes]


def read_window(
    con: duckdb.DuckDBPyConnection,
    table: str,
    column: str | None,
    start: dt.date | None,
    end: dt.date | None,
    *,
    columns: Sequence[str] | None = None,
    where: str | None = None,
) -> pl.DataFrame:
    """Rows of `table` with `column` in [start, end), sorted by (ticker, column) when both exist."""
    if not table_exists(con, table):
        raise WarehouseError(f"table {table!r} does not exist in the warehouse: materialize the asset {table} first")
    existing = table_columns(con, table)
    cols = list(columns) if columns else list(existing)
    missing = [c for c in cols if c not in existing]
    if missing:
        raise WarehouseError(f"table {table!r} has no columns {missing}")
    select = ", ".join(ident(c) for c in cols)
    clauses, params = [], []
    if column is not None and start is not None:
        clauses.append(f"{ident(column)} >= ?")
        params.append(start)
    if column is not None and end is not None:
        clauses.append(f"{ident(column)} < ?")
        params.append(end)
    if where:
        clauses.append(f"({where})")
    sql = f"SELECT {select} FROM {ident(table)}"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    order = [c for c in ("ticker", column or "date") if c in existing]
    if any(c not in cols for c in order):  # ordered by a column the caller does not read
        return con.execute(sql + " ORDER BY " + ", ".join(ident(c) for c in order), params).pl()
    out = con.execute(sql, params).pl()
    # Tables are written sorted window by window, so a scan usually returns sorted rows already: checking
    # that in one pass costs a fraction of DuckDB's ORDER BY over millions of rows.
    if order and not in_key_order(out, order):
        out = out.sort(order, maintain_order=True)
    return out


def read_cache(spec: str | Path | Lake) -> ReadCache | None:
    """The read cache of the `held_open` block that holds `spec` in this process, if any."""
    where = target(spec)
    return None if isinstance(where, Lake) else _CACHES.get(where.resolve())


def prune_read_caches() -> None:
    """Let go of the read caches' idle entries (read_cache.IDLE_S), whatever file holds them."""
    for cache in list(_CACHES.values()):
        cache.prune()


def cached_read(spec: str | Path | Lake, con: duckdb.DuckDBPyConnection, table: str, column: str | None,
                start: dt.date | None, end: dt.date | None, *, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """`read_window`, served from the run's read cache (read_cache) when `spec` is held open and an
    earlier read of this run covers the window and columns; what it reads from DuckDB is kept."""
    cache = read_cache(spec)
    if cache is None or not table_exists(con, table):  # no run holding the file; a missing table's error
        return read_window(con, table, column, start, end, columns=columns)
    existing = table_columns(con, table)
    cols = list(columns) if columns else list(existing)
    if column is not None and column in existing and (start is not None or end is not None):
        # A window reaching past the stored rows reads the same rows as the stored range: lookbacks of
        # different lengths from the first week then share one entry. Bounds stay bounds (a read with a
        # window never returns a null-dated row); only DATE columns are clamped.
        lo, hi = con.execute(f"SELECT min({ident(column)}), max({ident(column)}) FROM {ident(table)}").fetchone()
        if type(lo) is dt.date and start is not None and start <= lo:
            start = lo
        if type(hi) is dt.date and end is not None and end > hi:
            end = hi + dt.timedelta(days=1)
    hit = cache.get(table, column, start, end, cols)
    if hit is not None:
        return hit
    gen = generation()
    out = read_window(con, table, column, start, end, columns=cols)
    cache.put(table, column, start, end, out, gen)
    return out


def date_range(con: duckdb.DuckDBPyConnection, table: str, column: str) -> tuple[dt.date | None, dt.date | None, int]:
    """(min, max, rows) of a table's date column; (None, None, 0) when the table is missing or empty."""
    if not table_exists(con, table):
        return None, None, 0
    lo, hi, n = con.execute(f"SELECT min({ident(column)}), max({ident(column)}), count(*) FROM {ident(table)}").fetchone()
    return lo, hi, int(n)


META_TABLE = "kairos_meta"  # facts about the warehouse itself (key, value): e.g. the data source it holds


def read_meta(con: duckdb.DuckDBPyConnection, key: str) -> str | None:
    if not table_exists(con, META_TABLE):
        return None
    row = con.execute(f"SELECT value FROM {META_TABLE} WHERE key = ?", [key]).fetchone()
    return row[0] if row else None


def write_meta(con: duckdb.DuckDBPyConnection, key: str, value: str) -> None:
    upsert_rows(con, META_TABLE, pl.DataFrame({"key": [key], "value": [value]}), ["key"])


def peek(path: str | Path | Lake, read: Callable[[duckdb.DuckDBPyConnection], object]) -> tuple[object, str]:
    """(read(con), "") on a read-only connection that does not wait on another writer's lock, or
    (None, reason) when the warehouse is locked by a run or missing: sensors skip, they never block."""
    try:
        with connect(path, read_only=True, retries=1) as con:
            return read(con), ""
    except (WarehouseError, duckdb.Error) as exc:
        return None, f"warehouse {path} unavailable (locked by a run, or missing): {str(exc).splitlines()[0]}"
