"""The warehouse's schema versions and `kairos migrate`: an existing warehouse brought to this release in
place (no dagster import). The migrations reconcile rows with the source, so they live beside the sync.

Version 1 (every release before restatements): SEP rows as they were served on the day each week was
synced (the synthetic market adjusted to each ticker's first day), never restated; feature levels (EMA,
MACD, Bollinger, ATR, OBV) in the prices of the day the week was built; `universe.close`.
Version 2: the warehouse mirrors the feed (restatements rewritten in place, `sync_restatements`), and
feature levels are in prices as known on their own date (features.technical.OWN_DATE_PRICE).
Version 3: ticker changes re-key every table to the company's current symbol, by permaticker
(`ticker_changes`); rows only restamped by the feed are told apart from revisions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from kairos_dagster.sources.source import MarketSource
from kairos_dagster.sources.sync import (
    RESTATABLE,
    SYNC_TABLES,
    apply_restated,
    apply_ticker_changes,
    detect_ticker_changes,
    fetch_restated,
    fetch_tickers,
)
from kairos_dagster.warehouse import store

VERSION_KEY = "schema_version"
SCHEMA_VERSION = 3
MIGRATION_RUN_ID = "kairos-migrate"
LEVELS_DONE_KEY = "migration_v2_levels"
# Version 1's feature levels, by table: price levels (x closeunadj / close) and share counts (/ it).
V1_PRICE_LEVELS = {
    "feat_trend": ("ema_12", "ema_26", "macd", "macd_signal", "macd_hist"),
    "feat_vol_volatility": ("atr_14", "bb_upper_20", "bb_middle_20", "bb_lower_20"),
}
V1_SHARE_LEVELS = {"feat_vol_volatility": ("obv",)}


class MigrationNeeded(RuntimeError):
    """The warehouse was built by an earlier release: run `kairos migrate` first."""


def held_version(con: duckdb.DuckDBPyConnection) -> int:
    """The warehouse's schema version: the recorded one; 1 for a warehouse with synced rows and no record
    (built before versions were recorded); SCHEMA_VERSION for an empty one."""
    recorded = store.read_meta(con, VERSION_KEY)
    if recorded is not None:
        return int(recorded)
    return 1 if any(store.table_exists(con, t) for t in SYNC_TABLES) else SCHEMA_VERSION


def check_current(con: duckdb.DuckDBPyConnection, path: object) -> None:
    """Raise MigrationNeeded when the warehouse is older than this release; record the version of a new one."""
    version = held_version(con)
    if version < SCHEMA_VERSION:
        raise MigrationNeeded(
            f"warehouse {path} was built by an earlier release (schema version {version}, this release reads "
            f"{SCHEMA_VERSION}): run `kairos migrate` first (it re-keys companies whose symbol changed, rewrites "
            "the rows the feed restated since and, from version 1, re-expresses feature levels in prices as known "
            "on their own date); nothing was written")
    if version > SCHEMA_VERSION:
        raise MigrationNeeded(f"warehouse {path} has schema version {version}, newer than this release's "
                              f"{SCHEMA_VERSION}: upgrade Kairos; nothing was written")
    if store.read_meta(con, VERSION_KEY) is None:
        store.write_meta(con, VERSION_KEY, str(SCHEMA_VERSION))


@dataclass
class MigrationReport:
    from_version: int
    to_version: int
    steps: list[str]


def migrate(con: duckdb.DuckDBPyConnection, source: MarketSource, *, dry_run: bool = False,
            echo: Callable[[str], None] = lambda _: None) -> MigrationReport:
    """Bring the warehouse to SCHEMA_VERSION in place. Each step is one transaction and the version is
    recorded after the last, so an interrupted migration is simply run again (every step is idempotent
    given the version it starts from: the feature rescale runs only while the version is 1)."""
    start = held_version(con)
    steps: list[str] = []
    if start >= SCHEMA_VERSION:
        return MigrationReport(start, start, steps)
    plan = (["re-express feature levels in prices as known on their own date",
             "drop universe.close (a price adjusted as of the build day)"] if start < 2 else [])
    plan += ["re-key every table of a company whose symbol changed to its current symbol (by permaticker)",
             "rewrite the rows the feed restated since they were synced"]
    if dry_run:
        return MigrationReport(start, SCHEMA_VERSION, plan)
    if start < 2:
        steps.append(_rescale_levels(con))
        echo(steps[-1])
        steps.append(_drop_universe_close(con))
        echo(steps[-1])
    steps.append(_rekey(con, source))
    echo(steps[-1])
    for line in _reconcile(con, source):
        steps.append(line)
        echo(line)
    store.write_meta(con, VERSION_KEY, str(SCHEMA_VERSION))
    return MigrationReport(start, SCHEMA_VERSION, steps)


def _rescale_levels(con: duckdb.DuckDBPyConnection) -> str:
    """Version 1 stored levels in the prices of the build day, the stored sep_base's scale: multiply by
    closeunadj / close of that sep_base row (before the reconcile rewrites it)."""
    if store.read_meta(con, LEVELS_DONE_KEY) == "done":  # an interrupted migration, run again
        return "feature levels: already re-expressed"
    done = []
    with store.transaction(con, "migration: re-expressing feature levels failed"):
        for table in sorted(set(V1_PRICE_LEVELS) | set(V1_SHARE_LEVELS)):
            if not store.table_exists(con, table):
                continue
            cols = store.table_columns(con, table)
            price = [c for c in V1_PRICE_LEVELS.get(table, ()) if c in cols]
            shares = [c for c in V1_SHARE_LEVELS.get(table, ()) if c in cols]
            sets = [f"{store.ident(c)} = t.{store.ident(c)} * (s.closeunadj / s.close)" for c in price]
            sets += [f"{store.ident(c)} = t.{store.ident(c)} / (s.closeunadj / s.close)" for c in shares]
            if not sets:
                continue
            n = con.execute(
                f"UPDATE {store.ident(table)} AS t SET {', '.join(sets)} "
                "FROM sep_base s WHERE s.ticker = t.ticker AND s.date = t.date").fetchone()[0]
            done.append(f"{table} ({n} rows: {', '.join(price + shares)})")
        # in this transaction (write_meta opens its own)
        con.execute(f"CREATE TABLE IF NOT EXISTS {store.META_TABLE} (key VARCHAR, value VARCHAR)")
        con.execute(f"DELETE FROM {store.META_TABLE} WHERE key = ?", [LEVELS_DONE_KEY])
        con.execute(f"INSERT INTO {store.META_TABLE} VALUES (?, 'done')", [LEVELS_DONE_KEY])
    return "feature levels in prices as known on their own date: " + ("; ".join(done) or "no feature table yet")


def _drop_universe_close(con: duckdb.DuckDBPyConnection) -> str:
    if store.table_exists(con, "universe") and "close" in store.table_columns(con, "universe"):
        con.execute("ALTER TABLE universe DROP COLUMN close")
        return "universe: dropped column close"
    return "universe: no close column"


def _rekey(con: duckdb.DuckDBPyConnection, source: MarketSource) -> str:
    """Companies held under a symbol the feed no longer serves for their permaticker: re-keyed in every
    table with the TICKERS table refreshed, in one transaction (run again, it finds nothing to do)."""
    if not store.table_exists(con, "tickers"):
        return "ticker changes: no tickers table yet"
    served = fetch_tickers(source)
    changes = detect_ticker_changes(con.execute('SELECT "table", permaticker, ticker FROM tickers').pl(), served)
    log = apply_ticker_changes(con, changes, served, as_of=source.as_of, run_id=MIGRATION_RUN_ID)
    if not changes.height:
        return "ticker changes: none"
    sample = ", ".join(f"{o}->{n}" for o, n in changes.select("old_ticker", "new_ticker").head(5).iter_rows())
    return (f"ticker changes: {changes.height} companies re-keyed to their current symbol ({sample}"
            f"{', ...' if changes.height > 5 else ''}; {int(log.get_column('rows').sum())} rows in "
            f"{log.get_column('table_name').n_unique()} tables)")


def _reconcile(con: duckdb.DuckDBPyConnection, source: MarketSource) -> list[str]:
    """Every held row of SEP, DAILY and SF1 compared with the feed as served now (lastupdated.gte the first
    held date: all of them), the differing ones rewritten and logged as kind `migrated`."""
    lines = []
    known = con.execute("SELECT DISTINCT ticker FROM tickers").pl().get_column("ticker") \
        if store.table_exists(con, "tickers") else None
    for name in sorted(RESTATABLE):
        table = SYNC_TABLES[name]
        if not store.table_exists(con, name):
            continue
        first, last, _ = store.date_range(con, name, table.partition_column)
        if first is None:
            continue
        # an empty window (start == end): every held row is outside it
        restated = fetch_restated(source, con, table, first, first, known, not_before=first, not_after=last,
                                  since=first)
        apply_restated(con, table, restated, run_id=MIGRATION_RUN_ID, kind="migrated")
        rejected = restated.validation.rejected if restated.validation is not None else 0
        lines.append(f"{name}: {restated.rows.height} of {restated.fetched} rows rewritten to the feed as served "
                     f"now ({restated.tickers} tickers" + (f", {rejected} rejected" if rejected else "") + ")")
    return lines
