"""End to end through the real dagster executor and the real DuckDB: the sync assets."""

import datetime as dt

import polars as pl
from dagster import AssetKey

from kairos_dagster.definitions import build_definitions
from kairos_dagster.instance.runner import run_selection
from kairos_dagster.resources.source import SharadarSource
from kairos_dagster.settings import load_settings
from kairos_dagster.sources.synthetic import SyntheticMarket
from kairos_dagster_tests.fixtures.helpers import check_outcomes, materializations, read_table

SYNC = ["tickers", "sep_base", "daily", "sf1", "sf2", "sf3"]
N_TICKERS = 40


def _defs(tmp_path, **resources):
    # The feed as served on the evening of 2024-05-31: nothing here depends on the day the test runs.
    settings = load_settings({"KAIROS_DUCKDB_PATH": str(tmp_path / "k.duckdb"), "KAIROS_SYNTHETIC_TICKERS": str(N_TICKERS),
                              "KAIROS_AS_OF": "2024-06-01"})
    defs = build_definitions(settings)
    if resources:
        from dagster import Definitions

        defs = Definitions(assets=list(defs.assets), resources={**defs.resources, **resources}, executor=defs.executor)
    return defs, settings



def test_single_run_backfill_equals_week_by_week_and_is_idempotent(tmp_path, instance):
    defs_a, s_a = _defs(tmp_path / "a")
    result = run_selection(defs_a, SYNC, partition_range=("2024-01-01", "2024-02-05"), instance=instance)
    assert result.success
    checks = check_outcomes(result)
    assert checks and all(checks.values()), checks
    assert ("sep_base", "valid_rows") in checks and ("sep_base", "prices_valid") in checks

    defs_b, s_b = _defs(tmp_path / "b")
    for week in ["2024-01-01", "2024-01-08", "2024-01-15", "2024-01-22", "2024-01-29", "2024-02-05"]:
        assert run_selection(defs_b, SYNC, partition_key=week, instance=instance).success
    for name in SYNC:
        assert read_table(s_a, name).equals(read_table(s_b, name)), name

    # Re-materializing a partition leaves identical rows.
    before = read_table(s_a, "sep_base")
    assert run_selection(defs_a, SYNC, partition_key="2024-01-15", instance=instance).success
    assert read_table(s_a, "sep_base").equals(before)

    # What is stored is exactly the source's window.
    market = SyntheticMarket(seed=7, n_tickers=N_TICKERS)
    expected = market.table("SEP", dt.date(2024, 1, 1), dt.date(2024, 2, 11), as_of=dt.date(2024, 5, 31)
                            ).sort(["ticker", "date"])
    assert before.equals(expected)
    events = materializations(result, "sep_base")
    # each week's event counts its own rows; the last one also the run's total
    assert sum(e.metadata["rows"].value for e in events) == expected.height
    assert events[-1].metadata["run_rows"].value == expected.height
    assert all(e.metadata["rejected_rows"].value == 0 for e in events)
    # the column schema is on the week the UI opens on
    schema = events[-1].metadata["dagster/column_schema"].value
    assert [c.name for c in schema.columns] == expected.columns

    # The tables the sync writes beside its assets are assets too, reported by the run that wrote them.
    graph = defs_a.resolve_asset_graph()
    for side, writer in [("sync_rejects", "sep_base"), ("sync_restatements", "daily"), ("ticker_changes", "tickers"),
                         ("kairos_meta", "tickers")]:
        assert AssetKey(writer) in graph.get(AssetKey(side)).parent_keys, side
        assert not graph.get(AssetKey(side)).is_executable  # materialized by its writer, never launched alone
    side = {m.asset_key.to_user_string(): m for m in result.get_asset_materialization_events()
            for m in [m.event_specific_data.materialization] if m.asset_key.to_user_string() in
            {"sync_rejects", "kairos_meta"}}
    assert side["kairos_meta"].metadata["dagster/row_count"].value == 2  # schema version and data source
    assert {c.name for c in side["kairos_meta"].metadata["dagster/column_schema"].value.columns} == {"key", "value"}
    assert side["sync_rejects"].metadata["dagster/row_count"].value == 0
    latest = instance.get_latest_materialization_event(AssetKey("sync_rejects"))  # the catalog sees it
    assert latest is not None and latest.dagster_event.step_key in {"sep_base", "daily", "sf1", "sf2", "sf3"}


class _Corrupting:
    """Wraps a source and breaks some SEP rows the way a bad feed would."""

    name = "corrupt"

    def __init__(self, inner):
        self.inner = inner

    def fetch(self, table, start, end):
        df = self.inner.fetch(table, start, end)
        if table.upper() != "SEP":
            return df
        n = df.height
        bad = pl.int_range(0, n).mod(20) == 0  # 5% of rows: far above the 1% threshold
        df = df.with_columns(pl.when(bad).then(-1.0).otherwise(pl.col("close")).alias("close"))
        dup = df.head(3)
        unknown = df.slice(1, 2).with_columns(pl.lit("NOPE").alias("ticker"))  # rows with valid prices
        return pl.concat([df, dup, unknown])

    def latest_date(self, table):
        return self.inner.latest_date(table)

    @property
    def as_of(self):
        return self.inner.as_of

    def fetch_updated(self, table, since, not_before=None):
        return self.inner.fetch_updated(table, since, not_before)


class CorruptSource(SharadarSource):
    def build(self):
        return _Corrupting(super().build())


def test_bad_rows_are_rejected_counted_and_fail_the_check(tmp_path, instance):
    defs, settings = _defs(tmp_path, source=CorruptSource(synthetic_tickers=N_TICKERS))
    result = run_selection(defs, SYNC, partition_key="2024-03-04", instance=instance, raise_on_error=False)
    checks = check_outcomes(result)
    assert checks[("sep_base", "valid_rows")] is False
    assert checks[("sep_base", "prices_valid")] is True  # nothing invalid was stored
    assert checks[("daily", "valid_rows")] is True
    meta = materializations(result, "sep_base")[0].metadata
    counts = meta["rejects_by_reason"].value
    assert counts["duplicate_row"] == 3 and counts["unknown_ticker"] == 2 and counts["price_nonpositive_or_nan"] > 0
    rejects = read_table(settings, "sync_rejects")
    assert rejects.filter(pl.col("table_name") == "sep_base").height == sum(counts.values())
    stored = read_table(settings, "sep_base")
    assert stored.filter(pl.col("close") <= 0).height == 0 and "NOPE" not in stored.get_column("ticker").to_list()


def test_definitions_load_every_sync_asset(tmp_path):
    defs, _ = _defs(tmp_path)
    keys = defs.resolve_asset_graph().get_all_asset_keys()
    assert {AssetKey(n) for n in SYNC} <= keys
