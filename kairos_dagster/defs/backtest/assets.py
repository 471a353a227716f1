"""The backtest: the live weekly rebalance replayed over history (`backtest_daily`, `backtest_trades`,
`backtest_positions`, `backtest_book`) and `strategy_stats`, weekly partitioned.

A thin shell over `backtest.weekly.run_window`: each week's run continues every strategy's stored book
from the week before (a span backfill and week-by-week runs write the same rows), and `strategy_stats`
recomputes the metrics of all stored history through its week.
"""


import base64
import io
import math
from collections.abc import Iterator

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetsDefinition,
    AssetSpec,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    PartitionsDefinition,
    asset,
    multi_asset,
)
from pydantic import Field

from kairos_dagster.backtest import tables, weekly
from kairos_dagster.backtest.costs import CostConfigError, CostModel
from kairos_dagster.backtest.engine import BacktestInputError
from kairos_dagster.backtest.stats import strategy_stats as compute_stats
from kairos_dagster.calendar import weeks_for_sessions
from kairos_dagster.defs.partitions import SINGLE_RUN, lookback_mapping, window_dates
from kairos_dagster.defs.tags import BACKTEST_OP
from kairos_dagster.resources.warehouse import DuckDBWarehouse
from kairos_dagster.warehouse import store
from kairos_dagster.warehouse.summary import markdown_table

GROUP = "backtest"
TABLES = ("backtest_daily", "backtest_trades", "backtest_positions", "backtest_book")
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
            AssetSpec("backtest_book", kinds={"duckdb", "polars"}, deps=["feat_matrix_v2"],
                      description="Per strategy: cash and units after the week's last session; the next week "
                                  "continues from it."),
        ],
        check_specs=[AssetCheckSpec("equity_positive", asset="backtest_daily"),
                     AssetCheckSpec("zero_cost_when_no_trade", asset="backtest_daily")],
        partitions_def=partitions,
        backfill_policy=SINGLE_RUN,
        pool="duckdb",
    )
    def backtest(context: AssetExecutionContext, config: BacktestRunConfig, warehouse: DuckDBWarehouse) -> Iterator:
        """Replay every strategy over the window's weeks, continuing each one's stored book."""
        start, end = window_dates(context.partition_time_window)
        settings = config.settings()
        try:
            with warehouse.connect() as con:
                results = weekly.run_window(con, start, end, settings)
                frames = weekly.window_frames(results, settings.config_id, start)
                tables.write_window(con, frames, start, end, settings.config_id)
        except (BacktestInputError, store.WarehouseError, ValueError) as exc:
            raise Failure(description=f"backtest of {start}..{end}: {exc}") from None
        daily = frames["backtest_daily"]
        last = daily.sort("date").group_by("strategy").agg(pl.all().last()).sort("strategy") if daily.height else daily
        common = {"config_id": MetadataValue.text(settings.config_id),
                  "strategies": MetadataValue.text(", ".join(settings.strategies))}
        yield MaterializeResult(asset_key="backtest_daily", metadata={
            **common, "rows": MetadataValue.int(daily.height),
            "latest": MetadataValue.md(markdown_table(last.select("strategy", "date", "equity", "ret_net", "cost",
                                                                  "n_positions") if last.height else last)),
        })
        trades = frames["backtest_trades"]
        yield MaterializeResult(asset_key="backtest_trades", metadata={
            **common, "rows": MetadataValue.int(trades.height),
            "unfilled_orders": MetadataValue.int(trades.filter(pl.col("unfilled_value").abs() > 1e-9).height),
            "orders_on_assumed_liquidity": MetadataValue.int(
                trades.filter(pl.col("reason").str.starts_with("no ADV or vol")).height),
            "cost": MetadataValue.float(float(trades["cost"].sum()) if trades.height else 0.0)})
        yield MaterializeResult(asset_key="backtest_positions", metadata={
            **common, "rows": MetadataValue.int(frames["backtest_positions"].height)})
        yield MaterializeResult(asset_key="backtest_book", metadata={
            **common, "rows": MetadataValue.int(frames["backtest_book"].height)})
        bad = daily.filter(~(pl.col("equity") > 0))
        yield AssetCheckResult(asset_key="backtest_daily", check_name="equity_positive", passed=bad.height == 0,
                               metadata={"sessions_with_equity_le_0": bad.height})
        odd = daily.filter((pl.col("turnover") == 0) & (pl.col("cost") != 0))
        yield AssetCheckResult(asset_key="backtest_daily", check_name="zero_cost_when_no_trade", passed=odd.height == 0,
                               metadata={"sessions": odd.height})

    return backtest


def _equity_png(daily: pl.DataFrame) -> str:
    """Equity curves of every strategy, log scale, as a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4), dpi=90)
    for (name,), part in daily.sort("date").group_by("strategy", maintain_order=True):
        ax.plot(part["date"].to_list(), part["equity"].to_list(), label=name, linewidth=1.2)
    ax.set_yscale("log")
    ax.set_title("Backtest equity (net of costs)")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


class StatsRunConfig(Config):
    """Which configuration's backtest_daily rows the statistics summarize."""

    config_id: str = Field(default=tables.DEFAULT_CONFIG_ID, description="the configuration's key in the tables")


def _stats_asset(partitions: PartitionsDefinition) -> AssetsDefinition:
    @asset(
        name="strategy_stats",
        group_name=GROUP,
        deps=["backtest_daily", "regime_history_academic"],
        check_specs=[AssetCheckSpec("ml_beats_universe_ew_to_date", asset="strategy_stats")],
        partitions_def=partitions,
        backfill_policy=SINGLE_RUN,
        pool="duckdb",
        kinds={"duckdb", "polars"},
        description="Per strategy and period (full, years, last 52 weeks, regimes): return, volatility, Sharpe, "
                    "Sortino, drawdown, Calmar, hit rate, turnover, cost drag, alpha/beta to the market, "
                    "tracking error and information ratio to universe_ew; recomputed from backtest_daily.",
    )
    def strategy_stats(context: AssetExecutionContext, config: StatsRunConfig, warehouse: DuckDBWarehouse) -> Iterator:
        _, end = window_dates(context.partition_time_window)
        config_id = config.config_id
        with warehouse.connect() as con:
            daily = tables.load_daily(con, config_id, end)
            regimes = (store.read_window(con, "regime_history_academic", "date", None, end, columns=["date", "regime"])
                       if store.table_exists(con, "regime_history_academic") else None)
            stats = compute_stats(daily, regimes)
            tables.write_stats(con, config_id, stats)
        full = stats.filter(pl.col("period") == "full")
        md = {"rows": MetadataValue.int(stats.height), "config_id": MetadataValue.text(config_id),
              "full_period": MetadataValue.md(markdown_table(full.select("strategy", *SHOWN), max_rows=20))}
        if daily.height:
            md["first_date"] = MetadataValue.text(str(daily["date"].min()))
            md["last_date"] = MetadataValue.text(str(daily["date"].max()))
            md["equity_curves"] = MetadataValue.md(f"![equity](data:image/png;base64,{_equity_png(daily)})")
        yield MaterializeResult(metadata=md)
        sharpe = {r["strategy"]: r["sharpe"] for r in full.iter_rows(named=True)}
        ml, ew = sharpe.get("ml"), sharpe.get("universe_ew")
        comparable = ml is not None and ew is not None and not (math.isnan(ml) or math.isnan(ew))
        yield AssetCheckResult(check_name="ml_beats_universe_ew_to_date", passed=not comparable or ml > ew,
                               severity=AssetCheckSeverity.WARN,
                               metadata={"sharpe_ml": str(ml), "sharpe_universe_ew": str(ew)})

    return strategy_stats


def build_backtest_assets(weekly_partitions: PartitionsDefinition) -> list[AssetsDefinition]:
    """The backtest multi-asset and strategy_stats."""
    return [_backtest_asset(weekly_partitions), _stats_asset(weekly_partitions)]
