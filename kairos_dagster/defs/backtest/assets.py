"""The backtest: the live weekly rebalance replayed over history (`backtest_daily`, `backtest_trades`,
`backtest_positions`, `backtest_book`) and `strategy_stats`, weekly partitioned.

A thin shell over `backtest.weekly.run_window`: each week's run continues every strategy's stored book
from the week before (a span backfill and week-by-week runs write the same rows), and `strategy_stats`
recomputes the metrics of all stored history through its week.
"""


import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetDep,
    AssetExecutionContext,
    AssetsDefinition,
    AssetSpec,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    PartitionsDefinition,
    TimeWindowPartitionMapping,
    asset,
    multi_asset,
)
from pydantic import Field

from kairos_dagster.backtest import capacity, report, tables, weekly
from kairos_dagster.backtest.costs import CostConfigError, CostModel
from kairos_dagster.backtest.engine import BacktestInputError
from kairos_dagster.backtest.stats import strategy_stats as compute_stats
from kairos_dagster.calendar import weeks_for_sessions
from kairos_dagster.defs import checks
from kairos_dagster.defs.metadata import column_schema, weekly_metadata
from kairos_dagster.defs.partitions import SINGLE_RUN, lookback_mapping, window_dates
from kairos_dagster.defs.tags import BACKTEST_OP
from kairos_dagster.resources.backtest_outputs import BacktestOutputs
from kairos_dagster.resources.source import SharadarSource
from kairos_dagster.resources.warehouse import DuckDBWarehouse
from kairos_dagster.warehouse import store
from kairos_dagster.warehouse.summary import markdown_table, readable

GROUP = "backtest"
TABLES = ("backtest_daily", "backtest_trades", "backtest_positions", "backtest_book")
# Keys and text, not measurements: left out of the per-week null rate (most trades have no `reason`).
PER_WEEK_EXCLUDED = ("strategy", "config_id", "ticker", "date", "reason", "side")
SHOWN = ("annual_return", "annual_volatility", "sharpe", "max_drawdown", "avg_weekly_turnover", "annual_cost_drag",
         "beta", "information_ratio", "avg_positions")


class BacktestRunConfig(Config):
    """Run config of the backtest (the UI's launchpad; `kairos backtest` fills it). Anything but the
    defaults needs its own config_id: the default chain is the one the weekly run extends."""

    strategies: list[str] = Field(default=list(weekly.STRATEGIES), description="strategies to replay")
    portfolio_value: float = Field(default=100_000.0, description="starting value in $")
    half_spread_bps: float = Field(default=CostModel.half_spread_bps, description="half the bid-ask spread, bps")
    impact_k: float = Field(default=CostModel.impact_k, description="square-root impact prefactor (x daily vol)")
    commission_per_share: float = Field(default=CostModel.commission_per_share, description="$ per share")
    max_participation: float = Field(default=CostModel.max_participation, description="fill cap, share of ADV")
    cash_rate: float = Field(default=0.0, description="annual rate earned on cash")
    config_id: str = Field(default=tables.DEFAULT_CONFIG_ID, description="the configuration's key in the tables")

    def settings(self) -> weekly.BacktestSettings:
        try:
            costs = CostModel(self.commission_per_share, self.half_spread_bps, self.impact_k, self.max_participation)
            return weekly.BacktestSettings(tuple(self.strategies), self.portfolio_value, costs, self.cash_rate,
                                           self.config_id)
        except (CostConfigError, weekly.BacktestConfigError) as exc:
            raise Failure(description=f"backtest run config: {exc}") from None


def _backtest_asset(partitions: PartitionsDefinition) -> AssetsDefinition:
    @multi_asset(
        name=BACKTEST_OP,
        group_name=GROUP,
        specs=[
            AssetSpec("backtest_daily", kinds={"duckdb", "polars"},
                      deps=[AssetDep("feat_matrix_v2"), AssetDep("sep_base", partition_mapping=lookback_mapping(
                          weeks_for_sessions(64))), AssetDep("market_returns")],
                      description="Per strategy and session: equity, gross and net return, cost, turnover, "
                                  "gross exposure, positions (costs: half-spread, square-root impact, commission)."),
            AssetSpec("backtest_trades", kinds={"duckdb", "polars"}, deps=["feat_matrix_v2"],
                      description="Per strategy and rebalance: each order's filled and unfilled value at the open, "
                                  "its price and cost by component, and why a remainder was not filled."),
            AssetSpec("backtest_positions", kinds={"duckdb", "polars"}, deps=["feat_matrix_v2"],
                      description="Per strategy and rebalance: the book after the open's fills (weight, units)."),
            # The holdings continue the previous week's book: a self-dependency on the week before.
            AssetSpec("backtest_book", kinds={"duckdb", "polars"},
                      deps=["feat_matrix_v2", AssetDep("backtest_book", partition_mapping=TimeWindowPartitionMapping(
                          start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True))],
                      description="Per strategy: cash and units after the week's last session; the next week "
                                  "continues from it."),
        ],
        check_specs=checks.specs("backtest_daily", ["equity_positive", "zero_cost_when_no_trade"], partitions),
        partitions_def=partitions,
        backfill_policy=SINGLE_RUN,
        pool="duckdb",
    )
    def backtest(context: AssetExecutionContext, config: BacktestRunConfig, warehouse: DuckDBWarehouse,
                 source: SharadarSource) -> Iterator:
        """Replay every strategy over the window's weeks, continuing each one's stored book."""
        start, end = window_dates(context.partition_time_window)
        settings = dataclasses.replace(config.settings(), synthetic_cache_dir=source.panel_cache_dir())
        try:
            with warehouse.connect() as con:
                skipped = weekly.unavailable(con, settings.strategies)
                results = weekly.run_window(con, start, end, settings)
                frames = weekly.window_frames(results, settings.config_id, start)
                tables.write_window(con, frames, start, end, settings.config_id)
        except (BacktestInputError, store.WarehouseError, ValueError) as exc:
            raise Failure(description=f"backtest of {start}..{end}: {exc}") from None
        daily = frames["backtest_daily"]
        last = daily.sort("date").group_by("strategy").agg(pl.all().last()).sort("strategy") if daily.height else daily
        common = {"config_id": MetadataValue.text(settings.config_id),
                  "strategies": MetadataValue.text(", ".join(sorted(set(daily["strategy"].to_list()))))}
        if skipped:
            common["not_replayed"] = MetadataValue.md("\n".join(f"- `{k}`: {v}" for k, v in skipped.items()))
        trades = frames["backtest_trades"]
        extra = {
            "backtest_daily": {"latest": MetadataValue.md(markdown_table(last.select(
                "strategy", "date", "equity", "ret_net", "cost", "n_positions") if last.height else last))},
            "backtest_trades": {
                "unfilled_orders": MetadataValue.int(trades.filter(pl.col("unfilled_value").abs() > 1e-9).height),
                "orders_on_assumed_liquidity": MetadataValue.int(
                    trades.filter(pl.col("reason").str.starts_with("no ADV or vol")).height),
                "cost": MetadataValue.float(round(float(trades["cost"].sum()), 2) if trades.height else 0.0)},
        }
        for name in TABLES:  # in a range run, each week's event carries that week's own rows and dates
            frame = frames[name]
            md = {**common, "rows": MetadataValue.int(frame.height), "dagster/column_schema": column_schema(frame),
                  **extra.get(name, {})}
            yield MaterializeResult(asset_key=name, metadata=weekly_metadata(
                context, frame, md, date_col="date", asset_key=name, exclude=PER_WEEK_EXCLUDED))
        bad = daily.filter(~(pl.col("equity") > 0))
        yield AssetCheckResult(asset_key="backtest_daily", check_name="equity_positive", passed=bad.height == 0,
                               metadata={"sessions_with_equity_le_0": bad.height})
        odd = daily.filter((pl.col("turnover") == 0) & (pl.col("cost") != 0))
        yield AssetCheckResult(asset_key="backtest_daily", check_name="zero_cost_when_no_trade", passed=odd.height == 0,
                               metadata={"sessions": odd.height})

    return backtest


def _capacity_asset(partitions: PartitionsDefinition) -> AssetsDefinition:
    @asset(
        name="backtest_capacity",
        group_name=GROUP,
        deps=["backtest_daily", "backtest_trades", "feat_matrix_v2",
              AssetDep("sep_base", partition_mapping=lookback_mapping(weeks_for_sessions(64))), "market_returns"],
        check_specs=[checks.spec("sharpe_falls_with_size", "backtest_capacity",
                                 "WARN when a larger portfolio earns a higher net Sharpe than a smaller one (costs "
                                 "grow with size: that would be a cost-model bug).", partitions)],
        partitions_def=partitions,
        backfill_policy=SINGLE_RUN,
        pool="duckdb",
        kinds={"duckdb", "polars"},
        description="The capacity sweep: `ml` replayed at $1e5 (the default chain), $1e7 and $1e9 (their own "
                    "config_ids, extended week by week), and how its net Sharpe falls with size.",
    )
    def backtest_capacity(context: AssetExecutionContext, warehouse: DuckDBWarehouse) -> Iterator:
        start, end = window_dates(context.partition_time_window)
        try:
            with warehouse.connect() as con:
                rows = capacity.run_sweep(con, start, end)
        except (BacktestInputError, store.WarehouseError, ValueError) as exc:
            raise Failure(description=f"capacity sweep of {start}..{end}: {exc}") from None
        md = {"dagster/row_count": MetadataValue.int(rows.height), "dagster/column_schema": column_schema(rows),
              "sweep": MetadataValue.md(markdown_table(rows.select(
                  "portfolio_value", "config_id", "sharpe", "sharpe_gross", "annual_cost_drag", "unfilled_share",
                  "sharpe_vs_smallest")))}
        if rows.height:
            md["capacity_curve"] = MetadataValue.md(f"![capacity]({report.data_uri(report.capacity_png(rows))})")
        yield MaterializeResult(metadata=md)
        sharpe = [s for s in rows.sort("portfolio_value")["sharpe"].to_list() if s is not None and math.isfinite(s)]
        rising = [f"{a:.3f} -> {b:.3f}" for a, b in zip(sharpe, sharpe[1:], strict=False) if b > a + 1e-12]
        yield AssetCheckResult(check_name="sharpe_falls_with_size", passed=not rising, severity=AssetCheckSeverity.WARN,
                               metadata={"rises": MetadataValue.text(", ".join(rising) or "none")})

    return backtest_capacity


class StatsRunConfig(Config):
    """Which configuration's backtest_daily rows the statistics summarize."""

    config_id: str = Field(default=tables.DEFAULT_CONFIG_ID, description="the configuration's key in the tables")


def _stats_asset(partitions: PartitionsDefinition) -> AssetsDefinition:
    @asset(
        name="strategy_stats",
        group_name=GROUP,
        deps=["backtest_daily", "backtest_capacity", "regime_history_academic"],
        check_specs=[checks.spec("ml_beats_universe_ew_to_date", "strategy_stats",
                                 "WARN when the production strategy's full-period net Sharpe is not above the "
                                 "equal-weight universe's.", partitions)],
        partitions_def=partitions,
        backfill_policy=SINGLE_RUN,
        pool="duckdb",
        kinds={"duckdb", "polars"},
        description="Per strategy and period (full, years, last 52 weeks, regimes): return, volatility, Sharpe, "
                    "Sortino, drawdown, Calmar, hit rate, turnover, cost drag, alpha/beta to the market, "
                    "tracking error and information ratio to universe_ew; recomputed from backtest_daily. "
                    "Writes the HTML report ($KAIROS_OUTPUT_DIR/backtest/) with the pictures.",
    )
    def strategy_stats(context: AssetExecutionContext, config: StatsRunConfig, warehouse: DuckDBWarehouse,
                       backtest_outputs: BacktestOutputs) -> Iterator:
        _, end = window_dates(context.partition_time_window)
        config_id = config.config_id
        with warehouse.connect() as con:
            daily = tables.load_daily(con, config_id, end)
            regimes = (store.read_window(con, "regime_history_academic", "date", None, end, columns=["date", "regime"])
                       if store.table_exists(con, "regime_history_academic") else None)
            stats = compute_stats(daily, regimes)
            tables.write_stats(con, config_id, stats)
            sweep = tables.load_capacity(con) if config_id == tables.DEFAULT_CONFIG_ID else None
        full = stats.filter(pl.col("period") == "full")
        md = {"dagster/row_count": MetadataValue.int(stats.height), "dagster/column_schema": column_schema(stats),
              "config_id": MetadataValue.text(config_id),
              "full_period": MetadataValue.md(markdown_table(full.select("strategy", *SHOWN), max_rows=20))}
        if daily.height:
            first, last = daily["date"].min(), daily["date"].max()
            md["first_date"] = MetadataValue.text(str(first))
            md["last_date"] = MetadataValue.text(str(last))
            pngs = report.pictures(daily, stats, sweep)
            for name, png in pngs.items():
                md[name] = MetadataValue.md(f"![{name}]({report.data_uri(png)})")
            text = report.render_html(stats, pngs, sweep, config_id=config_id, first=first, last=last)
            path = report.write_report(Path(backtest_outputs.path), report.report_name(config_id), text)
            md["report"] = MetadataValue.path(str(path))
        yield MaterializeResult(metadata=md)
        sharpe = {r["strategy"]: r["sharpe"] for r in full.iter_rows(named=True)}
        ml, ew = sharpe.get("ml"), sharpe.get("universe_ew")
        comparable = ml is not None and ew is not None and not (math.isnan(ml) or math.isnan(ew))
        yield AssetCheckResult(check_name="ml_beats_universe_ew_to_date", passed=not comparable or ml > ew,
                               severity=AssetCheckSeverity.WARN,
                               metadata={"sharpe_ml": "–" if ml is None else readable(ml, 3),
                                         "sharpe_universe_ew": "–" if ew is None else readable(ew, 3)})

    return strategy_stats


def build_backtest_assets(weekly_partitions: PartitionsDefinition) -> list[AssetsDefinition]:
    """The backtest multi-asset, the capacity sweep and strategy_stats."""
    return [_backtest_asset(weekly_partitions), _capacity_asset(weekly_partitions), _stats_asset(weekly_partitions)]
