"""Phases 1-5 — the feature graph as weekly-partitioned assets.

Each asset is a thin shell: load its window (plus history through a lookback partition mapping),
call the pure function from `kairos_dagster.features`, keep exactly the universe rows of its window,
attach metadata and run the shared quality checks. The tables are declared by the registries in
`features.technical`, `features.fundamental` and `features.composites`; nothing here is per-table code.
"""

import datetime as dt
from collections.abc import Iterator

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    MetadataValue,
    PartitionsDefinition,
    TimeWindowPartitionMapping,
    asset,
)

from kairos_dagster.calendar import weeks_for_sessions
from kairos_dagster.constants import KEY as KEYS
from kairos_dagster.defs import checks
from kairos_dagster.defs.features.checks import (
    FeatureCheckConfig,
    feature_check_results,
    feature_check_specs,
    session_coverage_result,
)
from kairos_dagster.defs.metadata import add_images, frame_metadata, weekly_output
from kairos_dagster.defs.partitions import SINGLE_RUN, lookback_mapping, window_dates
from kairos_dagster.features import assemble, composites, factor_report, fundamental, regime, technical
from kairos_dagster.features import tables as feature_tables
from kairos_dagster.features import universe as universe_core
from kairos_dagster.features.ops import TableSpec
from kairos_dagster.features.targets import RISK_COLUMNS
from kairos_dagster.resources.warehouse import DuckDBWarehouse
from kairos_dagster.warehouse import plots
from kairos_dagster.warehouse.ordering import sorted_by

KEY = list(KEYS)


def _common(weekly: PartitionsDefinition) -> dict:
    """What every feature asset shares: the weekly partitions, one run per backfill, the warehouse."""
    return dict(partitions_def=weekly, backfill_policy=SINGLE_RUN, pool="duckdb", io_manager_key="warehouse_io",
                kinds={"duckdb", "polars"})


def _weeks_for_days(days: int) -> int:
    return days // 7 + 2


def _window(context: AssetExecutionContext) -> tuple[dt.date, dt.date]:
    return window_dates(context.partition_time_window)


def _universe_rows(universe: pl.DataFrame, start: dt.date, end: dt.date) -> pl.DataFrame:
    return sorted_by(assemble.in_window(universe, start, end).select(KEY), KEY)


def _first_dates(warehouse: DuckDBWarehouse) -> pl.DataFrame:
    with warehouse.connect() as con:
        return feature_tables.first_dates(con)


def _sessions(prices: pl.DataFrame, start: dt.date, end: dt.date) -> set[dt.date]:
    """Sessions with stored prices in [start, end)."""
    return set(assemble.in_window(prices, start, end).get_column("date").unique().to_list())


def _warmup_sessions(warehouse: DuckDBWarehouse, n: int) -> set[dt.date]:
    with warehouse.connect() as con:
        return feature_tables.first_sessions(con, n)


def _emit(
    context: AssetExecutionContext,
    out: pl.DataFrame,
    universe_rows: int,
    warmup: pl.Series | None,
    config: FeatureCheckConfig,
    extra: dict | None = None,
) -> Iterator:
    start, end = _window(context)
    md = frame_metadata(out)
    md["window"] = MetadataValue.text(f"{start} .. {end - dt.timedelta(days=1)}")
    md.update(extra or {})
    yield weekly_output(context, out, md)
    yield from feature_check_results(out, universe_rows, warmup, config)


# --------------------------------------------------------------------------- Phase 1
UNIVERSE_LOOKBACK_WEEKS = weeks_for_sessions(universe_core.ADV_WINDOW)


def _universe_asset(common: dict) -> AssetsDefinition:
    @asset(
        name="universe",
        group_name="phase1_universe",
        ins={
            "sep_base": AssetIn(partition_mapping=lookback_mapping(UNIVERSE_LOOKBACK_WEEKS)),
            "tickers": AssetIn(),
        },
        check_specs=checks.specs("universe", ["unique_keys", "every_session_covered"], common["partitions_def"]),
        **common,
    )
    def universe(context: AssetExecutionContext, warehouse: DuckDBWarehouse, sep_base: pl.DataFrame,
                 tickers: pl.DataFrame) -> Iterator:
        """Per date, the point-in-time universe: domestic common stock with 20-session average dollar volume
        >= $500K and close >= $2, decided from trailing data only; delisted names included while they traded."""
        start, end = _window(context)
        out = assemble.in_window(universe_core.universe(sep_base, tickers), start, end).sort(KEY)
        md = frame_metadata(out)
        per_date = out.group_by("date").len()
        md["tickers_per_date_min"] = MetadataValue.int(int(per_date.get_column("len").min() or 0))
        md["tickers_per_date_max"] = MetadataValue.int(int(per_date.get_column("len").max() or 0))
        yield weekly_output(context, out, md)
        yield AssetCheckResult(check_name="unique_keys", passed=out.height == out.select(KEY).unique().height)
        # The first ADV_WINDOW - 1 stored sessions cannot have a universe: no 20-session ADV exists yet.
        yield session_coverage_result(
            "every_session_covered", _sessions(sep_base, start, end), set(per_date.get_column("date").to_list()),
            _warmup_sessions(warehouse, universe_core.ADV_WINDOW - 1), missing_label="sessions_without_universe")

    return universe


def _sep_base_academic_asset(common: dict) -> AssetsDefinition:
    @asset(
        name="sep_base_academic",
        group_name="phase1_universe",
        ins={"sep_base": AssetIn(), "universe": AssetIn()},
        check_specs=feature_check_specs("sep_base_academic", FeatureCheckConfig(check_nulls=False),
                                        common["partitions_def"]),
        **common,
    )
    def sep_base_academic(context: AssetExecutionContext, sep_base: pl.DataFrame, universe: pl.DataFrame) -> Iterator:
        """sep_base restricted to the universe rows of the week."""
        rows = _universe_rows(universe, *_window(context))
        out = assemble.restrict_to_rows(rows, sep_base)
        yield from _emit(context, out, rows.height, None, FeatureCheckConfig(check_nulls=False))

    return sep_base_academic


MARKET_LOOKBACK_WEEKS = 2


def _market_returns_asset(common: dict) -> AssetsDefinition:
    @asset(
        name="market_returns",
        group_name="phase2_technical",
        ins={
            "sep_base": AssetIn(partition_mapping=lookback_mapping(MARKET_LOOKBACK_WEEKS)),
            "daily": AssetIn(partition_mapping=lookback_mapping(MARKET_LOOKBACK_WEEKS), metadata={"columns": ["ticker", "date", "marketcap"]}),
            "universe": AssetIn(partition_mapping=lookback_mapping(MARKET_LOOKBACK_WEEKS)),
        },
        check_specs=checks.specs("market_returns", ["one_row_per_session"], common["partitions_def"]),
        **common,
    )
    def market_returns(
        context: AssetExecutionContext, warehouse: DuckDBWarehouse, sep_base: pl.DataFrame, daily: pl.DataFrame,
        universe: pl.DataFrame,
    ) -> Iterator:
        """The market: cap-weighted universe daily return (weights = previous session's market cap)."""
        start, end = _window(context)
        out = assemble.in_window(universe_core.market_returns(sep_base, daily, universe), start, end).sort("date")
        yield weekly_output(context, out, frame_metadata(out))
        sessions, covered = _sessions(sep_base, start, end), set(out.get_column("date").to_list())
        # A return on d needs a universe on the previous session: none in the first ADV_WINDOW sessions.
        yield session_coverage_result(
            "one_row_per_session", sessions, covered, _warmup_sessions(warehouse, universe_core.ADV_WINDOW),
            missing_label="sessions_without_return", duplicate_rows=out.height - len(covered),
            extra={"rows": out.height, "sessions": len(sessions)})

    return market_returns


# --------------------------------------------------------------------------- Phase 2
TECHNICAL_INPUTS = {"sep_base": "sep_base", "daily": "daily", "mkt_ret": "market_returns", "universe": "universe",
                    "risk": "feat_beta"}


def _technical_asset(spec: TableSpec, common: dict) -> AssetsDefinition:
    name = spec.name
    targets = spec.lookahead_sessions > 0
    weeks_back = weeks_for_sessions(spec.lookback_sessions)
    if targets:
        # Forward targets read the weeks after their own: null until the horizon's data exists.
        mapping = TimeWindowPartitionMapping(start_offset=0, end_offset=weeks_for_sessions(spec.lookahead_sessions),
                                             allow_nonexistent_upstream_partitions=True)
    else:
        mapping = lookback_mapping(weeks_back)
    ins = {arg: AssetIn(TECHNICAL_INPUTS[arg], partition_mapping=mapping)
           for arg in spec.inputs if arg not in ("universe", "risk")}
    ins["universe"] = AssetIn("universe", partition_mapping=mapping if targets else None, metadata={"columns": KEY})
    if "risk" in spec.inputs:  # the targets' beta and idiosyncratic vol on the row's own date
        ins["risk"] = AssetIn("feat_beta", metadata={"columns": [*KEY, *RISK_COLUMNS]})
    config = FeatureCheckConfig(check_nulls=not targets, null_ceiling=0.10)

    @asset(
        name=name,
        group_name="phase2_technical",
        ins=ins,
        check_specs=feature_check_specs(name, config, common["partitions_def"]),
        description=(spec.fn.__doc__ or "").strip().split("\n")[0],
        metadata={"lookback_sessions": spec.lookback_sessions, "lookahead_sessions": spec.lookahead_sessions},
        **common,
    )
    def _technical(context: AssetExecutionContext, warehouse: DuckDBWarehouse, **inputs: pl.DataFrame) -> Iterator:
        start, end = _window(context)
        rows = _universe_rows(inputs["universe"], start, end)
        args = [inputs[a] for a in spec.inputs]
        if targets:
            # The label's cross-section is the universe of each date.
            args = [inputs["sep_base"], inputs["universe"].select(KEY), inputs["mkt_ret"], inputs["risk"]]
        out = assemble.restrict_to_rows(rows, spec.fn(*args))
        warm = None if targets else assemble.past_warmup(out, _first_dates(warehouse), spec.lookback_sessions)
        yield from _emit(context, out, rows.height, warm, config)

    return _technical


# --------------------------------------------------------------------------- Phase 3
def _fundamental_asset(table: fundamental.FundamentalTable, common: dict) -> AssetsDefinition:
    lb = table.lookback
    weeks = {
        "sf1": _weeks_for_days(lb.sf1_days),
        "sf2": _weeks_for_days(lb.sf2_days),
        "sf3": _weeks_for_days(lb.sf3_days),
        "daily": _weeks_for_days(lb.daily_days),
        "sep_base": weeks_for_sessions(lb.price_sessions),
    }
    ins = {
        src: (AssetIn(src) if src == "tickers" else AssetIn(src, partition_mapping=lookback_mapping(weeks[src])))
        for src in table.inputs
    }
    ins["universe"] = AssetIn("universe", metadata={"columns": KEY})
    config = FeatureCheckConfig(null_ceiling=0.5)

    @asset(
        name=table.name,
        group_name="phase3_fundamental",
        ins=ins,
        check_specs=feature_check_specs(table.name, config, common["partitions_def"]),
        description=(table.fn.__doc__ or "").strip().split("\n")[0],
        **common,
    )
    def _fundamental(context: AssetExecutionContext, **inputs: pl.DataFrame) -> Iterator:
        start, end = _window(context)
        rows = _universe_rows(inputs["universe"], start, end)
        out = table.fn(rows, *[inputs[src] for src in table.inputs])
        out = assemble.restrict_to_rows(rows, out)
        yield from _emit(context, out, rows.height, None, config)

    return _fundamental


# --------------------------------------------------------------------------- Phase 5 regime
REGIME_LOOKBACK_WEEKS = weeks_for_sessions(regime.lookback_sessions())


def _regime_asset(common: dict) -> AssetsDefinition:
    @asset(
        name="regime_history_academic",
        group_name="phase5_regime",
        ins={"market_returns": AssetIn(partition_mapping=lookback_mapping(REGIME_LOOKBACK_WEEKS))},
        check_specs=checks.specs("regime_history_academic", ["one_known_regime_per_session"], common["partitions_def"]),
        **common,
    )
    def regime_history_academic(context: AssetExecutionContext, market_returns: pl.DataFrame) -> Iterator:
        """Per date: trend_regime (bull/bear: market index vs its 200-day average and drawdown), vol_regime
        (normal_vol/high_vol: 20-day market vol vs its trailing percentile), regime, and the numbers behind them."""
        start, end = _window(context)
        out = assemble.in_window(regime.regime_history(market_returns.select("date", "mkt_ret")), start, end).sort("date")
        md = frame_metadata(out, nulls=False)
        counts = out.group_by("regime").len().sort("regime")
        md["regime_counts"] = MetadataValue.json({str(r): int(n) for r, n in counts.iter_rows()})
        if out.height:
            last = out.tail(1).row(0, named=True)
            md["latest_regime"] = MetadataValue.text(f"{last['date']}: {last['regime']}")
        add_images(md, regime_chart=plots.regime_timeline_png(
            out.select("date", "regime"), market_returns.select("date", "mkt_ret")))
        yield weekly_output(context, out, md)
        bad = out.filter(pl.col("regime").is_not_null() & ~pl.col("regime").is_in(list(regime.REGIMES)))
        yield AssetCheckResult(
            check_name="one_known_regime_per_session",
            passed=bad.height == 0 and out.select("date").is_unique().all(),
            metadata={"unknown_regime_rows": bad.height, "null_regime_rows": out.get_column("regime").null_count()},
        )

    return regime_history_academic


# --------------------------------------------------------------------------- Phases 4-5 composites
def _input_columns(table: str, columns: list[str]) -> list[str]:
    """Load only the key and the columns a consumer needs (a 10-year window of a wide table is GBs)."""
    key = ["date"] if table == assemble.REGIME_TABLE else KEY
    return key + [c for c in columns if c not in key]


def _composite_asset(name: str, spec: composites.CompositeSpec, common: dict) -> AssetsDefinition:
    needed = list(spec.inputs()) + (["regime"] if spec.regime_weights is not None else [])
    sources = assemble.tables_for(needed)
    smooth_weeks = weeks_for_sessions(spec.smooth_window) if spec.smooth_window else 0
    ins: dict[str, AssetIn] = {
        table: AssetIn(table, partition_mapping=lookback_mapping(smooth_weeks) if smooth_weeks else None,
                       metadata={"columns": _input_columns(table, cols)})
        for table, cols in sources.items()
    }
    ins["universe"] = AssetIn("universe", partition_mapping=lookback_mapping(smooth_weeks) if smooth_weeks else None,
                              metadata={"columns": KEY})
    ins["tickers"] = AssetIn("tickers")
    phase = "phase5_composites" if name in PHASE5 else "phase4_composites"
    config = FeatureCheckConfig(null_ceiling=0.5)

    @asset(name=name, group_name=phase, ins=ins, check_specs=feature_check_specs(name, config, common["partitions_def"]),
           description=f"Composite {name}: weights declared in features.composites.COMPOSITES['{name}'].",
           metadata={"weights": MetadataValue.json({k: dict(v) for k, v in spec.tables().items()})
                     if not spec.smooth_source else {"smooth_source": spec.smooth_source, "window": spec.smooth_window}},
           **common)
    def _composite(context: AssetExecutionContext, **inputs: pl.DataFrame) -> Iterator:
        start, end = _window(context)
        history_rows = sorted_by(inputs["universe"].select(KEY), KEY)
        frame = assemble.join_inputs(history_rows, inputs, needed, tickers=inputs["tickers"])
        scored = composites.compute_composite(frame, name, spec)
        rows = _universe_rows(inputs["universe"], start, end)
        out = assemble.restrict_to_rows(rows, scored.select(KEY + [name]))
        yield from _emit(context, out, rows.height, None, config,
                         {"unknown_sector_rows": MetadataValue.int(
                             frame.filter(pl.col("sector") == assemble.UNKNOWN_SECTOR).height)})

    return _composite


PHASE5 = {"feat_composite_v33_regime", "feat_composite_v7", "alpha_composite_v8"}

# --------------------------------------------------------------------------- factor report
# The composites and the main single factors (the synthetic market plants momentum, quality, value, insiders).
REPORT_FACTORS = (
    *composites.COMPOSITES,
    "mom_12_1", "book_yield", "earnings_yield", "roe", "gross_profitability", "f_score",
    "insider_net_mcap_90d", "insider_buyers_90d", "vol_blend", "ret_21d", "rsi_14", "beta_252",
)


def _factor_ic_asset(common: dict) -> AssetsDefinition:
    sources = assemble.tables_for(REPORT_FACTORS)
    ins = {table: AssetIn(table, metadata={"columns": _input_columns(table, cols)}) for table, cols in sources.items()}
    ins["feat_targets"] = AssetIn("feat_targets", metadata={"columns": ["ticker", "date", factor_report.TARGET]})
    ins["universe"] = AssetIn("universe", metadata={"columns": KEY})

    @asset(
        name="factor_ic",
        group_name="reports",
        ins=ins,
        check_specs=checks.specs("factor_ic", ["composite_ic_positive_to_date"], common["partitions_def"]),
        description=(
            "Alphalens-style factor report: per factor and rebalance date, the rank IC against ret_5d_f and "
            "the top-minus-bottom quintile spread. Recomputed by the weekly targets refresh as horizons complete."
        ),
        **common,
    )
    def factor_ic(context: AssetExecutionContext, warehouse: DuckDBWarehouse, **inputs: pl.DataFrame) -> Iterator:
        start, end = _window(context)
        rows = _universe_rows(inputs["universe"], start, end)
        frame = assemble.join_inputs(rows, inputs, REPORT_FACTORS).join(
            inputs["feat_targets"], on=KEY, how="left", maintain_order="left")
        ic = factor_report.factor_ic(frame, list(REPORT_FACTORS))
        window_summary = factor_report.summarize(ic)
        # The whole history stored so far, this window's rows replacing the old ones.
        with warehouse.connect() as con:
            older = factor_report.stored_outside(con, start, end, ic.clear())
        overall = factor_report.summarize(pl.concat([older.select(ic.columns), ic]) if older.height else ic)
        md = frame_metadata(ic, preview=False, nulls=False)
        md["window_summary"] = MetadataValue.md(factor_report.to_markdown(window_summary))
        md["summary_to_date"] = MetadataValue.md(factor_report.to_markdown(overall))
        history = pl.concat([older.select(ic.columns), ic]) if older.height else ic
        add_images(md, ic_chart=plots.ic_series_png(history, list(composites.COMPOSITES),
                                                    "Composites: rank IC per week and cumulative (all weeks stored)"),
                   quintile_spread_chart=plots.bars_png(overall, "factor", "q5_minus_q1",
                                                        "Mean weekly top-minus-bottom quintile return, to date",
                                                        horizontal=True, percent=True))
        yield weekly_output(context, ic, md)
        v8 = overall.filter(pl.col("factor") == "alpha_composite_v8")
        mean_ic = float(v8.get_column("mean_ic").item()) if v8.height and v8.get_column("mean_ic").item() is not None else None
        yield AssetCheckResult(
            check_name="composite_ic_positive_to_date",
            passed=mean_ic is None or mean_ic > 0,
            severity=AssetCheckSeverity.WARN,
            metadata={"alpha_composite_v8_mean_ic": mean_ic if mean_ic is not None else "n/a",
                      "periods": int(v8.get_column("n_periods").item()) if v8.height else 0},
        )

    return factor_ic


def build_feature_assets(weekly: PartitionsDefinition) -> list[AssetsDefinition]:
    """Phases 1-5 and the factor report, in the order of the phases."""
    common = _common(weekly)
    return [
        _universe_asset(common), _sep_base_academic_asset(common), _market_returns_asset(common),
        *(_technical_asset(s, common) for s in technical.TECHNICAL_TABLES.values()),
        *(_fundamental_asset(t, common) for t in fundamental.FUNDAMENTAL_TABLES.values()),
        _regime_asset(common),
        *(_composite_asset(n, s, common) for n, s in composites.COMPOSITES.items()),
        _factor_ic_asset(common),
    ]
