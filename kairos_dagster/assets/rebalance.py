"""The weekly Risk4/ML rebalance: `rebalance_picks` and `rebalance_trades`, gated by blocking asset checks.

A thin shell over `portfolio.rebalance_weeks` (and through it risk4, trades, gates, outputs): load the
signal date's feat_matrix_v2 rows, the trailing sep_base returns and the prior holdings; compute each
week of the partition window in order; yield the gate verdicts; stop with a `Failure` (no files, no
rows) when a blocking gate fails; otherwise write the four files per week and return the rows.

Timing, the same live and in a backfill: the week's rebalance date is its last XNYS session, the signal
date the session before it (known before the rebalance day's open).
"""

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import polars as pl
from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetOut,
    Config,
    ConfigurableResource,
    Failure,
    MetadataValue,
    Output,
    multi_asset,
)
from pydantic import Field

from kairos_dagster import calendar as cal
from kairos_dagster.assets.metadata import frame_metadata, markdown_table
from kairos_dagster.broker.approval import picks_content_hash
from kairos_dagster.checks.rebalance_gates import GATES, gate_check_results, rebalance_gate_specs
from kairos_dagster.partitions import SINGLE_RUN, WEEKLY, lookback_mapping, weeks_for_sessions, window_dates
from kairos_dagster.portfolio import gate_records
from kairos_dagster.portfolio import rebalance_weeks as rw
from kairos_dagster.portfolio.config import ConfigError, Risk4Config, config_by_name
from kairos_dagster.portfolio.outputs import (
    OutputFileError,
    picks_csv_frame,
    read_picks_csv,
    write_rebalance_outputs,
)
from kairos_dagster.portfolio.risk4 import PortfolioInputError
from kairos_dagster.portfolio.trades import TradePlanError
from kairos_dagster.settings import Settings
from kairos_dagster.warehouse import store
from kairos_dagster.warehouse.io_manager import DuckDBWarehouse

GROUP = "rebalance"
NEW_YORK = ZoneInfo("America/New_York")
OP_NAME = "rebalance"
MATRIX = "feat_matrix_v2"
REGIME_TABLE = "regime_history_academic"
PRIOR_LOOKBACK_DAYS = 28  # the default prior: the latest rebalance_picks of the 4 weeks before
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


class RebalanceOutputs(ConfigurableResource):
    """Where the rebalance folders go by default: $KAIROS_OUTPUT_DIR/rebalance (run config may override)."""

    path: str

    @classmethod
    def from_settings(cls, settings: Settings) -> "RebalanceOutputs":
        return cls(path=str(settings.output_dir / "rebalance"))


# --------------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class RebalanceInputs:
    matrix: pl.DataFrame  # feat_matrix_v2 rows at the signal dates (the config's columns)
    matrix_dates: list[dt.date]  # dates feat_matrix_v2 holds around the window
    sep_dates: list[dt.date]
    returns: pl.DataFrame  # ticker, date, ret from sep_base closeadj
    prior: pl.DataFrame  # holdings before the first week
    prior_source: str
    regimes: pl.DataFrame | None  # date, regime, vol_regime, trend_regime


def _dates(con: duckdb.DuckDBPyConnection, table: str, lo: dt.date, hi: dt.date) -> list[dt.date]:
    if not store.table_exists(con, table):
        return []
    rows = con.execute(f"SELECT DISTINCT date FROM {store.ident(table)} WHERE date >= ? AND date <= ? ORDER BY 1",
                       [lo, hi]).fetchall()
    return [r[0] for r in rows]


def load_prior(con: duckdb.DuckDBPyConnection | None, first: dt.date, prior_holdings: str | None,
               no_prior: bool) -> tuple[pl.DataFrame, str]:
    """Holdings before `first`: none (--no-prior), a picks.csv, or the latest rebalance_picks before it."""
    if no_prior and prior_holdings:
        raise ValueError("pass either prior_holdings or no_prior, not both")
    if no_prior:
        return rw.empty_holdings(), "none (no_prior)"
    if prior_holdings:
        return rw.holdings_from_picks(read_picks_csv(prior_holdings)), f"file {prior_holdings}"
    if con is None or not store.table_exists(con, "rebalance_picks"):
        return rw.empty_holdings(), "none (no earlier rebalance_picks)"
    last = con.execute("SELECT max(date) FROM rebalance_picks WHERE date < ? AND date >= ?",
                       [first, first - dt.timedelta(days=PRIOR_LOOKBACK_DAYS)]).fetchone()[0]
    if last is None:
        return rw.empty_holdings(), f"none (no rebalance_picks in the {PRIOR_LOOKBACK_DAYS} days before {first})"
    rows = store.read_window(con, "rebalance_picks", "date", last, last + dt.timedelta(days=1))
    return rw.holdings_from_picks(rows), f"rebalance_picks of {last}"


def load_inputs(con: duckdb.DuckDBPyConnection, plans: Sequence[rw.WeekPlan], config: Risk4Config,
                prior_holdings: str | None = None, no_prior: bool = False) -> RebalanceInputs:
    """Everything the weeks need, read from the warehouse in a few window queries."""
    first = min(p.rebalance_date for p in plans)
    first_sig = min(p.signal_date for p in plans)
    last_sig = max(p.signal_date for p in plans)
    last = max(p.rebalance_date for p in plans)
    cols = list(dict.fromkeys(["ticker", "date", config.alpha_column, config.vol_column, config.adv_column,
                               config.sector_column, config.price_column]))
    matrix = pl.DataFrame(schema={"ticker": pl.String, "date": pl.Date})
    if store.table_exists(con, MATRIX):
        have = store.table_columns(con, MATRIX)
        cols += [c for c in rw.REGIME_KEYS if c in have and c not in cols]
        sigs = {p.signal_date for p in plans}
        matrix = store.read_window(con, MATRIX, "date", first_sig, last_sig + dt.timedelta(days=1), columns=cols)
        matrix = matrix.filter(pl.col("date").is_in(sorted(sigs)))
    lookback_lo = first_sig - dt.timedelta(days=14)
    matrix_dates = _dates(con, MATRIX, lookback_lo, last)
    sep_dates = _dates(con, "sep_base", lookback_lo, last)
    # cov_window returns need cov_window + 1 prices.
    px_lo = cal.sessions_offset(first_sig, -config.cov_window)
    returns = pl.DataFrame(schema={"ticker": pl.String, "date": pl.Date, "ret": pl.Float64})
    if store.table_exists(con, "sep_base"):
        px = store.read_window(con, "sep_base", "date", px_lo, last_sig + dt.timedelta(days=1),
                               columns=["ticker", "date", "closeadj"])
        returns = rw.daily_returns(px)
    regimes = None
    if store.table_exists(con, REGIME_TABLE):
        regimes = store.read_window(con, REGIME_TABLE, "date", first_sig, last_sig + dt.timedelta(days=1),
                                    columns=["date", *rw.REGIME_KEYS])
    elif set(rw.REGIME_KEYS) <= set(matrix.columns):
        regimes = matrix.select("date", *rw.REGIME_KEYS).unique()
    prior, source = load_prior(con, first, prior_holdings, no_prior)
    return RebalanceInputs(matrix, matrix_dates, sep_dates, returns, prior, source, regimes)


def compute_rebalance(inputs: RebalanceInputs, plans: Sequence[rw.WeekPlan], config: Risk4Config) -> list[rw.WeekRebalance]:
    return rw.rebalance_sequence(plans, inputs.matrix, inputs.matrix_dates, inputs.returns, inputs.prior, config,
                                 inputs.prior_source)


def freshness(inputs: RebalanceInputs, plan: rw.WeekPlan) -> dict[str, object]:
    """Latest date each input holds as of the rebalance date (later rows are not observable then)."""
    def latest(dates: list[dt.date]) -> dt.date | None:
        seen = [d for d in dates if d <= plan.rebalance_date]
        return max(seen) if seen else None
    return {"sep_base": latest(inputs.sep_dates), MATRIX: latest(inputs.matrix_dates),
            "signal_date": plan.signal_date}


def plans_for_window(start: dt.date, end: dt.date, rebalance_date: str | None, force: bool) -> list[rw.WeekPlan]:
    """The weeks of [start, end); an explicit as-of date must lie in a one-week window and, without
    `force`, be its week's rebalance date."""
    if rebalance_date is None:
        return rw.week_plans(start, end)
    d = cal.parse_date(rebalance_date)
    if (end - start).days != 7 or not (start <= d < end):
        raise ValueError(f"rebalance_date {d} must lie inside a single-week partition window {start}..{end - dt.timedelta(days=1)}")
    week_reb = cal.rebalance_date_for_week(d)
    if d != week_reb and not force:
        raise ValueError(f"{d} is not a rebalance day ({cal.REBALANCE_RULE.lower()}; this week's is {week_reb}); "
                         "pass force to rebalance anyway")
    return [rw.WeekPlan.for_date(d)]


def write_week_files(parent: Path, inputs: RebalanceInputs, week: rw.WeekRebalance, now: dt.datetime) -> Path:
    assert week.result is not None and week.trades is not None
    return write_rebalance_outputs(
        parent / week.plan.rebalance_date.isoformat(), week.result, week.trades, week.plan.rebalance_date, now,
        regime=rw.regime_at(inputs.regimes, week.plan.signal_date), data_freshness=freshness(inputs, week.plan),
        overwrite=True)


# ----------------------------------------------------------------------------------------- asset
@multi_asset(
    name=OP_NAME,
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
    deps=[AssetDep(MATRIX, partition_mapping=lookback_mapping(1)),
          AssetDep("sep_base", partition_mapping=lookback_mapping(weeks_for_sessions(64))),
          AssetDep(REGIME_TABLE, partition_mapping=lookback_mapping(1))],
    check_specs=rebalance_gate_specs(),
    partitions_def=WEEKLY,
    backfill_policy=SINGLE_RUN,
    pool="duckdb",
)
def rebalance(context: AssetExecutionContext, config: RebalanceConfig, warehouse: DuckDBWarehouse,
              rebalance_outputs: RebalanceOutputs) -> Iterator:
    """Risk4/ML rebalance of the week(s); blocking pre-rebalance gates stop it before anything is written."""
    start, end = window_dates(context.partition_time_window)
    try:
        risk = risk4_config(config)
        plans = plans_for_window(start, end, config.rebalance_date, config.force)
    except (ConfigError, ValueError, cal.CalendarError) as exc:
        raise Failure(description=f"rebalance run config: {exc}") from None
    weeks: list[rw.WeekRebalance] = []
    inputs = None
    if plans:
        try:
            with warehouse.connect() as con:
                inputs = load_inputs(con, plans, risk, config.prior_holdings, config.no_prior)
            weeks = compute_rebalance(inputs, plans, risk)
        except (PortfolioInputError, TradePlanError, OutputFileError, store.WarehouseError, ValueError) as exc:
            raise Failure(description=f"rebalance of {start}..{end - dt.timedelta(days=1)}: {exc}") from None
    if weeks:  # the verdicts travel with the picks (portfolio.gate_records), blocked weeks included
        blocking = {name for name, is_blocking, _ in GATES if is_blocking}
        now = dt.datetime.now(dt.UTC)
        rows = pl.concat([gate_records.gate_rows(
            w.plan.rebalance_date, w.plan.signal_date, w.gates,
            None if w.blocked or w.result is None else picks_content_hash(picks_csv_frame(rw.picks_rows(w))),
            blocking=blocking, run_id=context.run.run_id, now=now) for w in weeks])
        with warehouse.connect() as con:
            gate_records.record_gate_results(con, rows)
    yield from gate_check_results(weeks)
    reasons = rw.block_reasons(weeks)
    if reasons:
        raise Failure(description="Rebalance BLOCKED by pre-rebalance gates (nothing written):\n" + "\n".join(reasons),
                      metadata={"blocked_weeks": len({r.split(" ")[0] for r in reasons}),
                                "reasons": MetadataValue.md("\n".join(f"- {r}" for r in reasons))})
    folders: list[Path] = []
    if config.write_files and inputs is not None:
        parent, now = Path(config.output_dir or rebalance_outputs.path), dt.datetime.now(NEW_YORK)
        folders = [write_week_files(parent, inputs, w, now) for w in weeks]
    picks = pl.concat([rw.picks_rows(w) for w in weeks]) if weeks else pl.DataFrame(schema=rw.PICKS_TABLE_SCHEMA)
    trades = pl.concat([rw.trades_rows(w) for w in weeks]) if weeks else pl.DataFrame(schema=rw.TRADES_TABLE_SCHEMA)
    md = frame_metadata(picks)
    md["weeks"] = MetadataValue.int(len(weeks))
    md["config"] = MetadataValue.json(risk.to_dict())
    if weeks:
        last = weeks[-1]
        md["summary"] = MetadataValue.json(dict(rw.summary_line(last)))
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
        for key in ("n_positions", "top_5_weight", "estimated_vol", "turnover"):
            v = rw.summary_line(last).get(key)
            if v is not None:
                md[key] = MetadataValue.int(v) if isinstance(v, int) else MetadataValue.float(float(v))
    yield Output(picks, output_name="rebalance_picks", metadata=md)
    tmd = frame_metadata(trades, nulls=False)
    tmd["buys"] = MetadataValue.int(trades.filter(pl.col("action") == "BUY").height)
    tmd["sells"] = MetadataValue.int(trades.filter(pl.col("action") == "SELL").height)
    yield Output(trades, output_name="rebalance_trades", metadata=tmd)


REBALANCE_ASSETS = [rebalance]
