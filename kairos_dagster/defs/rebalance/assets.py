"""The weekly Risk4/ML rebalance: `rebalance_picks` and `rebalance_trades`, gated by blocking asset checks.

A thin shell over `portfolio.rebalance_weeks` (and through it risk4, trades, gates, outputs): load the
signal date's feat_matrix_v2 rows, the trailing sep_base returns and the prior holdings; compute each
week of the partition window in order; yield the gate verdicts; stop with a `Failure` (no files, no
rows) when a blocking gate fails; otherwise write the four files per week and return the rows.

Timing, the same live and in a backfill: the week's rebalance date is its last XNYS session, the signal
date the session before it (known before the rebalance day's open).
"""

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import polars as pl
from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetOut,
    AssetsDefinition,
    Config,
    Failure,
    MetadataValue,
    Output,
    PartitionsDefinition,
    multi_asset,
)
from pydantic import Field

from kairos_dagster import calendar as cal
from kairos_dagster.broker.approval import picks_content_hash
from kairos_dagster.calendar import weeks_for_sessions
from kairos_dagster.constants import NEW_YORK
from kairos_dagster.defs.metadata import add_images, frame_metadata, weekly_metadata
from kairos_dagster.defs.partitions import SINGLE_RUN, lookback_mapping, week_key, window_dates
from kairos_dagster.defs.rebalance.checks import gate_check_events, rebalance_gate_specs
from kairos_dagster.defs.side_tables import report_side_tables
from kairos_dagster.defs.tags import REBALANCE_OP
from kairos_dagster.ml import skill
from kairos_dagster.ml import tables as ml_tables
from kairos_dagster.portfolio import gate_records, weekly
from kairos_dagster.portfolio import rebalance_weeks as rw
from kairos_dagster.portfolio.config import ConfigError, Risk4Config, config_by_name
from kairos_dagster.portfolio.gates import GATES
from kairos_dagster.portfolio.outputs import (
    OutputFileError,
    picks_csv_frame,
)
from kairos_dagster.portfolio.risk4 import PortfolioInputError
from kairos_dagster.portfolio.trades import TradePlanError
from kairos_dagster.resources.kill_switches import KillSwitches
from kairos_dagster.resources.rebalance_outputs import RebalanceOutputs
from kairos_dagster.resources.warehouse import DuckDBWarehouse
from kairos_dagster.warehouse import plots, store
from kairos_dagster.warehouse.summary import markdown_table, significant

GROUP = "rebalance"
BLOCKING_GATES = {name for name, is_blocking, _ in GATES if is_blocking}
# Every Risk4 parameter except the configuration's name can be overridden from run config.
OVERRIDE_FIELDS: tuple[str, ...] = tuple(f for f in Risk4Config.__dataclass_fields__ if f != "name")


class RebalanceConfig(Config):
    """Run config of the rebalance (the UI's launchpad and `kairos rebalance` fill it)."""

    config: str = Field(default="ml", description="Risk4 configuration: ml (alpha_ml_v2_tuned_clf) or v8")
    prior_holdings: str | None = Field(default=None, description="prior picks.csv (default: previous week's rows)")
    no_prior: bool = Field(default=False, description="fresh start: no prior holdings")
    force: bool = Field(default=False, description="allow `rebalance_date` that is not its week's last session")
    rebalance_date: str | None = Field(default=None, description="as-of date inside a one-week partition")
    output_dir: str | None = Field(default=None, description="parent folder (default $KAIROS_OUTPUT_DIR/rebalance)")
    write_files: bool = Field(default=True, description="write picks.csv, trades.csv, summary and schedule")
    # Risk4 overrides (None: the configuration's value).
    alpha_column: str | None = None
    vol_column: str | None = None
    adv_column: str | None = None
    sector_column: str | None = None
    price_column: str | None = None
    top_n: int | None = None
    zscore_clip: float | None = None
    min_adv: float | None = None
    max_position_pct: float | None = None
    max_sector_mult: float | None = None
    max_sector_cap: float | None = None
    lambda_tc: float | None = None
    max_turnover: float | None = None
    target_vol: float | None = None
    max_gross: float | None = None
    cov_window: int | None = None
    cov_min_obs: int | None = None
    cov_shrinkage: float | None = None
    cov_fallback_corr: float | None = None
    annualization: int | None = None
    portfolio_value: float | None = None
    gate_min_eligible_block: int | None = None
    gate_min_eligible_warn: int | None = None
    gate_min_alpha_coverage: float | None = None
    gate_expected_sectors: int | None = None
    gate_turnover_warn: float | None = None
    gate_position_warn: float | None = None


def risk4_config(cfg: RebalanceConfig) -> Risk4Config:
    """The named configuration with the run config's overrides (ConfigError names a bad parameter)."""
    overrides = {k: getattr(cfg, k) for k in OVERRIDE_FIELDS if getattr(cfg, k) is not None}
    return config_by_name(cfg.config).with_overrides(**overrides)


# ----------------------------------------------------------------------------------------- asset
def _rebalance_asset(partitions: PartitionsDefinition) -> AssetsDefinition:
    @multi_asset(
        name=REBALANCE_OP,
        group_name=GROUP,
        outs={
            "rebalance_picks": AssetOut(
                io_manager_key="warehouse_io", kinds={"duckdb", "polars"},
                description="Risk4 picks of each week's rebalance date (`date`) from the signal date's data "
                            "(`signal_date`): rank, ticker, weight, weight_pre_vol, sector, alpha_z, vol_blend, "
                            "adv_20, price (unadjusted), target_value, shares, config."),
            "rebalance_trades": AssetOut(
                io_manager_key="warehouse_io", kinds={"duckdb", "polars"},
                description="Orders from the prior holdings to the picks: ticker, action, shares, trade_value, "
                            "target_value, current_value, price, reason."),
        },
        deps=[AssetDep(weekly.MATRIX, partition_mapping=lookback_mapping(1)),
              AssetDep("sep_base", partition_mapping=lookback_mapping(weeks_for_sessions(64))),
              AssetDep(weekly.REGIME_TABLE, partition_mapping=lookback_mapping(1))],
        check_specs=rebalance_gate_specs(partitions),
        partitions_def=partitions,
        backfill_policy=SINGLE_RUN,
        pool="duckdb",
    )
    def rebalance(context: AssetExecutionContext, config: RebalanceConfig, warehouse: DuckDBWarehouse,
                  rebalance_outputs: RebalanceOutputs, kill_switches: KillSwitches) -> Iterator:
        """Risk4/ML rebalance of the week(s); blocking pre-rebalance gates stop it before anything is written."""
        start, end = window_dates(context.partition_time_window)
        try:
            risk = risk4_config(config)
            plans = weekly.plans_for_window(start, end, config.rebalance_date, config.force)
        except (ConfigError, ValueError, cal.CalendarError) as exc:
            raise Failure(description=f"rebalance run config: {exc}") from None
        weeks: list[rw.WeekRebalance] = []
        inputs = None
        if plans:
            try:
                with warehouse.connect() as con:
                    inputs = weekly.load_inputs(con, plans, risk, config.prior_holdings, config.no_prior)
                weeks = weekly.compute_rebalance(inputs, plans, risk)
            except (PortfolioInputError, TradePlanError, OutputFileError, store.WarehouseError, ValueError) as exc:
                raise Failure(description=f"rebalance of {start}..{end - dt.timedelta(days=1)}: {exc}") from None
        if weeks:  # the verdicts travel with the picks (portfolio.gate_records), blocked weeks included
            hashes = [None if w.blocked or w.result is None else picks_content_hash(picks_csv_frame(rw.picks_rows(w)))
                      for w in weeks]
            rows = gate_records.weeks_gate_rows(weeks, hashes, blocking=BLOCKING_GATES, run_id=context.run.run_id,
                                                now=dt.datetime.now(dt.UTC))
            with warehouse.connect() as con:
                gate_records.record_gate_results(con, rows)
                report_side_tables(context, con, ["rebalance_gate_results"])
        yield from gate_check_events(context, weeks)
        reasons = rw.block_reasons(weeks)
        if reasons:
            raise Failure(description="Rebalance BLOCKED by pre-rebalance gates (nothing written):\n" + "\n".join(reasons),
                          metadata={"blocked_weeks": len({r.split(" ")[0] for r in reasons}),
                                    "reasons": MetadataValue.md("\n".join(f"- {r}" for r in reasons))})
        folders: list[Path] = []
        if config.write_files and inputs is not None:
            parent, now = Path(config.output_dir or rebalance_outputs.path), dt.datetime.now(NEW_YORK)
            folders = [weekly.write_week_files(parent, inputs, w, now) for w in weeks]
        picks = pl.concat([rw.picks_rows(w) for w in weeks]) if weeks else pl.DataFrame(schema=rw.PICKS_TABLE_SCHEMA)
        trades = pl.concat([rw.trades_rows(w) for w in weeks]) if weeks else pl.DataFrame(schema=rw.TRADES_TABLE_SCHEMA)
        md = frame_metadata(picks)
        md["weeks"] = MetadataValue.int(len(weeks))
        md["config"] = MetadataValue.json(risk.to_dict())
        if weeks:
            last = weeks[-1]
            skill_now = _alpha_skill(warehouse, risk.alpha_column, last.plan.rebalance_date, kill_switches)
            context.log.info(f"rebalance {last.plan.rebalance_date}: alpha {skill_now.text(risk.alpha_column)}")
            md["summary"] = MetadataValue.json({**rw.summary_line(last), "alpha_column": risk.alpha_column,
                                                "alpha_trailing_rank_ic": None if skill_now.ic is None
                                                else significant(skill_now.ic),
                                                "alpha_trailing_dates": skill_now.dates})
            md["alpha_column"] = MetadataValue.text(risk.alpha_column)
            md["alpha_skill"] = MetadataValue.text(skill_now.text(risk.alpha_column))
            if skill_now.ic is not None:
                md["alpha_trailing_rank_ic"] = MetadataValue.float(significant(skill_now.ic))
            md["prior_source"] = MetadataValue.text(weeks[0].prior_source)
            md["regime"] = MetadataValue.json({k: str(v) for k, v in (rw.regime_at(inputs.regimes, last.plan.signal_date)
                                                                       or {}).items()})
            md["gates"] = MetadataValue.md(markdown_table(pl.DataFrame(
                [{"gate": g.name, "passed": g.passed, "severity": g.severity, "message": g.message} for g in last.gates]),
                max_rows=20))
            if folders:
                md["picks_csv"] = MetadataValue.path(str(folders[-1] / "picks.csv"))
                md["output_folder"] = MetadataValue.path(str(folders[-1]))
                md["output_folders"] = MetadataValue.text("\n".join(str(f) for f in folders[-20:]))
            if last.result is not None:  # the last week's book against its caps, as pictures
                week = f"{last.plan.rebalance_date}"
                add_images(md, sector_weights_chart=plots.sector_weights_png(
                    last.result.sector_weights_vs_caps, f"Sector weights against their caps, {week}"),
                    weight_distribution_chart=plots.weight_distribution_png(
                        rw.picks_rows(last)["weight"], cap=risk.max_position_pct, title=f"Position weights, {week}"))
        if context.has_partition_key_range and len(context.partition_keys) > 1:
            # A range run's events each tell their own week: rows and dates, and the week's book numbers;
            # what describes the last week only (its alpha's skill, its files) goes on that week's event.
            last_only = {k: md.pop(k) for k in LAST_WEEK_ONLY if k in md}
            for w in weeks:
                week_md = _summary_metadata(w) | (last_only if w is weeks[-1] else {})
                if week_md:
                    context.add_asset_metadata(week_md, asset_key="rebalance_picks",
                                               partition_key=week_key(w.plan.rebalance_date))
        elif weeks:
            md.update(_summary_metadata(weeks[-1]))
        yield Output(picks, output_name="rebalance_picks",
                     metadata=weekly_metadata(context, picks, md, date_col="date", asset_key="rebalance_picks"))
        tmd = frame_metadata(trades, nulls=False)
        tmd["buys"] = MetadataValue.int(trades.filter(pl.col("action") == "BUY").height)
        tmd["sells"] = MetadataValue.int(trades.filter(pl.col("action") == "SELL").height)
        yield Output(trades, output_name="rebalance_trades",
                     metadata=weekly_metadata(context, trades, tmd, date_col="date", asset_key="rebalance_trades"))

    return rebalance


LAST_WEEK_ONLY = ("alpha_skill", "alpha_trailing_rank_ic", "prior_source", "picks_csv", "output_folder")


def _summary_metadata(week: rw.WeekRebalance) -> dict[str, MetadataValue]:
    """The week's book in numbers (positions, top-5 weight, estimated vol, turnover)."""
    md = {}
    for key in ("n_positions", "top_5_weight", "estimated_vol", "turnover"):
        v = rw.summary_line(week).get(key)
        if v is not None:
            md[key] = MetadataValue.int(v) if isinstance(v, int) else MetadataValue.float(significant(float(v)))
    return md


def _alpha_skill(warehouse: DuckDBWarehouse, alpha: str, rebalance_date: dt.date,
                 kill_switches: KillSwitches) -> skill.TrailingIC:
    """The picks' alpha's trailing rank IC as the rebalance morning knows it (labels ended by the signal
    session; ml/skill), from feat_matrix_v2 as stored."""
    k, known_by = kill_switches.live_sharpe_weeks, skill.rebalance_morning_session(rebalance_date)
    dates = cal.rebalance_dates_between(known_by - dt.timedelta(weeks=k + 3), known_by)
    try:
        with warehouse.connect() as con:
            own = alpha != skill.BENCHMARK
            frame = ml_tables.skill_frame(con, dates, stored=(weekly.MATRIX, alpha) if own else None,
                                          before=rebalance_date)
    except store.WarehouseError as exc:
        return skill.unjudged(known_by, str(exc))
    return skill.trailing_ic(skill.ic_by_date(frame, [alpha, skill.BENCHMARK] if own else [alpha]), alpha, known_by, k)


def build_rebalance_assets(weekly_partitions: PartitionsDefinition) -> list[AssetsDefinition]:
    """The rebalance multi-asset (rebalance_picks, rebalance_trades) and its gate checks."""
    return [_rebalance_asset(weekly_partitions)]
