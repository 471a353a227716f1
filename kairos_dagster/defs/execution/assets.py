"""Gated execution: `rebalance_approval`, then `execution` (preview | execute) and `execution_report` (verify).

A thin shell over broker/engine.py. What an approval is bound to: the content hash of the picks.csv
written for that rebalance date ($KAIROS_OUTPUT_DIR/rebalance/DATE/picks.csv, or an explicit
`picks_path`), the file `kairos execute --picks` sends. When the warehouse holds `rebalance_picks` rows
for that date, the file must match them (same hash over the picks.csv columns) or the approval is
refused. Execution recomputes the hash of the file it is about to send: a picks file that does not
match its approval (changed after approval, or a different file) is refused, live and paper alike.

Gates: the verdicts the rebalance stored in the warehouse for this date (portfolio.gate_records), bound
to the picks' content hash: picks never evaluated, evaluated on other content, or with a failed blocking
gate are refused unless a typed override record (`kairos override`) excuses that gate for these picks.
A fresh Dagster home on a copied warehouse changes nothing: the warehouse is the authority.
"""

import datetime as dt
import json
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
    Output,
    PartitionsDefinition,
    TimeWindowPartitionMapping,
    asset,
    multi_asset,
)
from pydantic import Field

from kairos_dagster import calendar as cal
from kairos_dagster.broker import engine, reports
from kairos_dagster.broker import kill_switches as ks
from kairos_dagster.broker import performance as perf
from kairos_dagster.broker.approval import ApprovalError, make_approval, picks_content_hash
from kairos_dagster.broker.base import BrokerError
from kairos_dagster.broker.orders import ExecutionRefusedError, PlanInputError
from kairos_dagster.broker.tracking import (
    APPROVAL_SCHEMA,
    approval_for,
    normalize_max_gap,
    record_verification,
)
from kairos_dagster.constants import NEW_YORK
from kairos_dagster.defs import checks
from kairos_dagster.defs.metadata import column_schema
from kairos_dagster.defs.partitions import SINGLE_RUN, window_dates
from kairos_dagster.defs.side_tables import SIM_BOOK, report_side_tables
from kairos_dagster.defs.tags import EXECUTION_OP
from kairos_dagster.portfolio import gate_records
from kairos_dagster.portfolio.gates import GATES
from kairos_dagster.portfolio.outputs import (
    OutputFileError,
    read_picks_csv,
)
from kairos_dagster.resources.broker import BrokerResource
from kairos_dagster.resources.kill_switches import KillSwitches
from kairos_dagster.resources.rebalance_outputs import RebalanceOutputs
from kairos_dagster.resources.warehouse import DuckDBWarehouse
from kairos_dagster.warehouse.summary import markdown_table, significant

GROUP = "execution"
BLOCKING_GATES = tuple(name for name, blocking, _ in GATES if blocking)


# ------------------------------------------------------------------------------------ helpers
def week_rebalance_date(context: AssetExecutionContext) -> tuple[str, dt.date]:
    """(partition key, rebalance date) of a one-week run; approvals and orders are per week."""
    start, end = window_dates(context.partition_time_window)
    if (end - start).days != 7:
        raise Failure(description=f"{context.op_def.name} runs one week at a time, got the window {start}..{end}")
    reb = cal.rebalance_date_for_week(start)
    if reb is None:
        raise Failure(description=f"the week of {start} has no NYSE session: nothing to approve or execute")
    return start.isoformat(), reb


def load_picks(path: Path) -> pl.DataFrame:
    try:
        return read_picks_csv(path)
    except OutputFileError as exc:
        raise Failure(description=f"picks: {exc}") from None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_as_of(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise Failure(description=f"as_of {text!r} is not an ISO datetime (e.g. 2026-01-16T09:00)") from None
    return t if t.tzinfo else t.replace(tzinfo=NEW_YORK)


# ----------------------------------------------------------------------------------- approval
class ApprovalConfig(Config):
    """Run config of `rebalance_approval` (the UI's launchpad; `kairos approve` fills it)."""

    by: str = Field(description="who approves (or rejects) the week's picks")
    note: str | None = Field(default=None, description="why (turnover above the 50% limit needs an override record: "
                                                       "`kairos override --gate turnover`)")
    decision: str = Field(default="approve", description="approve | reject")
    picks_path: str | None = Field(default=None, description="picks.csv (default $KAIROS_OUTPUT_DIR/rebalance/DATE/picks.csv)")


def _approval_asset(partitions: PartitionsDefinition) -> AssetsDefinition:
    @asset(
        name="rebalance_approval",
        group_name=GROUP,
        deps=["rebalance_picks"],
        partitions_def=partitions,
        backfill_policy=SINGLE_RUN,
        pool="duckdb",
        io_manager_key="warehouse_io",
        kinds={"duckdb", "polars"},
        description="The operator's decision on the week's picks: who, when, note and the content hash of the "
                    "picks.csv approved. Changed picks no longer match it, so execution refuses them.",
    )
    def rebalance_approval(context: AssetExecutionContext, config: ApprovalConfig, warehouse: DuckDBWarehouse,
                           rebalance_outputs: RebalanceOutputs) -> Output:
        key, reb = week_rebalance_date(context)
        if config.decision not in {"approve", "reject"}:
            raise Failure(description=f"decision must be 'approve' or 'reject', got {config.decision!r}")
        path = Path(config.picks_path) if config.picks_path else reports.default_picks_path(rebalance_outputs.path, reb)
        picks = load_picks(path)
        file_hash = picks_content_hash(picks)
        with warehouse.connect() as con:
            table_hash, table_rows = reports.table_picks_hash(con, reb)
        if table_hash is not None and table_hash != file_hash:
            raise Failure(description=(
                f"picks file {path} does not match the rebalance_picks rows of {reb} ({table_rows} rows): the file was "
                f"edited or is from another run; re-run the rebalance (or fix the file) before approving"))
        try:
            rec = make_approval(file_hash, config.by, approved_at=_now(), rebalance_date=reb, note=config.note)
        except ApprovalError as exc:
            raise Failure(description=f"approval: {exc}") from None
        status = "approved" if config.decision == "approve" else "rejected"
        row = pl.DataFrame([{
            "date": reb, "status": status, "approved_by": rec.approved_by, "approved_at": rec.approved_at,
            "note": config.note, "picks_hash": file_hash, "picks_path": str(path.resolve()), "picks_rows": picks.height,
            "table_hash": table_hash, "run_id": context.run.run_id}], schema=APPROVAL_SCHEMA)
        context.log.info(f"rebalance {reb} {status} by {rec.approved_by}: picks {path} hash {file_hash[:12]}")
        return Output(row, metadata={"dagster/column_schema": column_schema(row),
            "rebalance_date": MetadataValue.text(reb.isoformat()), "status": MetadataValue.text(status),
            "approved_by": MetadataValue.text(rec.approved_by), "approved_at": MetadataValue.text(rec.approved_at.isoformat()),
            "note": MetadataValue.text(config.note or ""), "picks_hash": MetadataValue.text(file_hash),
            "picks_path": MetadataValue.path(str(path.resolve())), "picks_rows": MetadataValue.int(picks.height),
            "bound_to": MetadataValue.text("picks.csv content" + (" (= rebalance_picks rows)" if table_hash else "")),
        })

    return rebalance_approval


# ---------------------------------------------------------------------------------- execution
class ExecutionRunConfig(Config):
    """Run config of the `execution` op (the UI's launchpad; `kairos execute` fills it)."""

    mode: str = Field(default="preview", description="preview (default) | execute | verify")
    dry_run: bool = Field(default=False, description="with execute: go through the motions, submit nothing")
    intraday: bool = Field(default=False, description="force DAY market orders")
    force_moo: bool = Field(default=False, description="force market-on-open (OPG) orders, e.g. on paper")
    max_gap: float | None = Field(default=None, description="skip orders whose price moved more than this from the "
                                  "picks price: below 1 a fraction (0.05), from 1 up percent (5 = 5%)")
    portfolio_value: float | None = Field(default=None, description="override account equity when sizing")
    picks_path: str | None = Field(default=None, description="picks.csv (default $KAIROS_OUTPUT_DIR/rebalance/DATE/picks.csv)")
    trades_path: str | None = Field(default=None, description="trades.csv of the rebalance, compared with the plan")
    as_of: str | None = Field(default=None, description="simulated broker only: its clock (ISO; New York if naive)")


def _plan_metadata(plan: engine.ExecutionPlan, text: str) -> dict:
    return {
        "rebalance_date": MetadataValue.text(plan.rebalance_date.isoformat()),
        "live": MetadataValue.bool(plan.is_live),
        "orders": MetadataValue.int(plan.orders.height), "to_send": MetadataValue.int(plan.to_send.height),
        "plan": MetadataValue.md(markdown_table(plan.orders.select(
            "side", "ticker", "qty", "price", "notional", "reason", "latest_price", "skip_reason", "time_in_force",
            "client_order_id"), max_rows=100)),
        "checks": MetadataValue.md(markdown_table(plan.checks, max_rows=20)),
        "approval": MetadataValue.text("; ".join(plan.approval.reasons)),
        "refusals": MetadataValue.md("\n".join(f"- {r}" for r in plan.refusals) or "_none_"),
        "picks_hash": MetadataValue.text(plan.picks_hash),
        "plan_text": MetadataValue.text(text),
    }


REPORT_CHECKS: tuple[tuple[str, AssetCheckSeverity, str], ...] = (
    ("no_rejections", AssetCheckSeverity.ERROR, "no order rejected or failed to submit (HIGH)"),
    ("no_unfilled", AssetCheckSeverity.ERROR, "no order expired or canceled with nothing filled (HIGH)"),
    ("no_partial_fills", AssetCheckSeverity.WARN, "no partially filled order (MEDIUM)"),
    ("all_orders_final", AssetCheckSeverity.WARN, "no order still open (LOW)"),
)


def _execution_asset(partitions: PartitionsDefinition) -> AssetsDefinition:
    @multi_asset(
        name=EXECUTION_OP,
        group_name=GROUP,
        specs=[
            AssetSpec("execution", deps=["rebalance_picks", "rebalance_approval"], skippable=True,
                      kinds={"duckdb", "python"},
                      description="Orders for the week's picks: preview (default: planned orders, checks, skip reasons, "
                                  "a preview file) or execute (submits each order exactly once; `execution_orders` and "
                                  "outputs/rebalance/DATE/alpaca_orders_<ts>.csv)."),
            AssetSpec("execution_report", deps=["execution"], skippable=True, kinds={"duckdb", "python"},
                      description="Verification of the submitted orders (mode verify): fills, partials, rejections, "
                                  "expiries, fill rate and slippage vs the picks price; severities as asset checks."),
        ],
        check_specs=[checks.spec(name, "execution_report", desc, partitions) for name, _, desc in REPORT_CHECKS],
        can_subset=True,
        partitions_def=partitions,
        backfill_policy=SINGLE_RUN,
        pool="duckdb",
    )
    def execution(context: AssetExecutionContext, config: ExecutionRunConfig, warehouse: DuckDBWarehouse,
                  broker: BrokerResource, rebalance_outputs: RebalanceOutputs,
                  kill_switches: KillSwitches) -> Iterator:
        """Preview / execute (asset `execution`) or verify (asset `execution_report`) one week's orders."""
        key, reb = week_rebalance_date(context)
        selected = {k.to_user_string() for k in context.selected_asset_keys}
        if config.mode not in {"preview", "execute", "verify"}:
            raise Failure(description=f"mode must be preview, execute or verify, got {config.mode!r}")
        wanted = "execution_report" if config.mode == "verify" else "execution"
        if wanted not in selected:
            raise Failure(description=f"mode {config.mode} materializes {wanted}; select it (selected: {sorted(selected)})")
        as_of = parse_as_of(config.as_of)
        try:
            desc = broker.describe()
        except ValueError as exc:
            raise Failure(description=f"broker: {exc}") from None
        context.log.info(f"broker: {desc}")
        if config.mode == "verify":
            yield from _verify(context, reb, warehouse, broker, as_of)
            return
        try:
            max_gap = normalize_max_gap(config.max_gap)
        except ValueError as exc:
            raise Failure(description=str(exc)) from None
        path = Path(config.picks_path) if config.picks_path else reports.default_picks_path(rebalance_outputs.path, reb)
        picks = load_picks(path)
        try:
            switch_config = kill_switches.config()
        except ValueError as exc:
            raise Failure(description=f"kill switches: {exc}") from None
        picks_hash = picks_content_hash(path)
        # The gates travel with the picks: enforced from the warehouse, bound to this file's content hash.
        with warehouse.connect() as con:
            failed_gates, gate_source = gate_records.enforced_failures(con, reb, picks_hash)
            overridden = dict(gate_records.overrides(con, reb, picks_hash).select("gate", "overridden_by").iter_rows())
            track = ks.tracked_before(con, reb)
        ecfg = engine.ExecutionConfig(max_gap=max_gap, intraday=config.intraday, force_moo=config.force_moo,
                                      portfolio_value_override=config.portfolio_value, auto_paper=broker.auto_paper)
        submit = config.mode == "execute" and not config.dry_run
        label = "dry_run" if config.mode == "execute" and config.dry_run else ("execute" if submit else "preview")
        out_parent = Path(rebalance_outputs.path).parent  # engine writes <parent>/rebalance/DATE/
        result = None
        try:
            with warehouse.connect() as con, broker.open(con, as_of=as_of) as b:
                approval = approval_for(con, reb)
                switches = ks.evaluate(switch_config, session=b.last_session_change(), track=track,
                                       overrides=overridden)
                ks.record(con, reb, switches, picks_hash, _now())
                plan = engine.preview(b, picks, reb, approval=approval, failed_gates=failed_gates, config=ecfg,
                                      kill_switches=switches, overrides=overridden)
                text = reports.plan_text(plan, desc)
                context.log.info(text)
                if submit:
                    if plan.refusals:
                        reports.write_preview(Path(rebalance_outputs.path) / reb.isoformat(), plan, text, "refused", _now())
                        raise Failure(description=f"execution of {reb} REFUSED, nothing submitted:\n"
                                      + "\n".join(f"- {r}" for r in plan.refusals),
                                      metadata={"plan_text": MetadataValue.text(text)})
                    result = engine.execute(b, picks, reb, con=con, output_dir=out_parent, approval=approval,
                                            failed_gates=failed_gates, config=ecfg, now=as_of,
                                            kill_switches=switches, overrides=overridden)
        except (PlanInputError, ExecutionRefusedError, BrokerError, ValueError) as exc:
            raise Failure(description=f"execution of {reb}: {exc}") from None
        with warehouse.connect() as con:
            report_side_tables(context, con, ["kill_switch_evaluations",
                                              *(["execution_orders", *_book_tables(broker)] if submit else [])])
        md = _plan_metadata(plan, text)
        md.update({"mode": MetadataValue.text(label), "broker": MetadataValue.text(desc),
                   "picks_path": MetadataValue.path(str(path.resolve())), "gates": MetadataValue.text(
                       (", ".join(failed_gates) or "no blocking gate failed") + f" ({gate_source})"),
                   "kill_switches": MetadataValue.md(markdown_table(switches.select(
                       "switch", "blocking", "armed", "tripped", "overridden_by", "detail"))),
                   "kill_switch_state": MetadataValue.text(ks.state_text(switches))})
        if config.trades_path:
            try:
                diff = reports.compare_trades(plan.orders, Path(config.trades_path))
            except reports.ReportInputError as exc:
                raise Failure(description=str(exc)) from None
            md["trades_differences"] = MetadataValue.md(markdown_table(diff, max_rows=50) if diff.height
                                                        else "_plan matches trades.csv_")
        if result is None:
            md["preview_file"] = MetadataValue.path(str(reports.write_preview(
                Path(rebalance_outputs.path) / reb.isoformat(), plan, text, label, _now())))
            md["submitted"] = MetadataValue.int(0)
            yield MaterializeResult(asset_key="execution", metadata=md)
            return
        status_counts = result.orders.group_by("status").len().sort("status")
        md.update({"submitted": MetadataValue.int(result.orders.filter(pl.col("status") != "skipped").height),
                   "orders_csv": MetadataValue.path(str(result.csv_path)),
                   "statuses": MetadataValue.json({s: n for s, n in status_counts.iter_rows()}),
                   "results": MetadataValue.md(markdown_table(result.orders.select(
                       "side", "ticker", "qty", "status", "filled_qty", "filled_avg_price", "reason", "client_order_id"),
                       max_rows=100))})
        errors = result.orders.filter(pl.col("status") == "submit_error")
        if errors.height:
            # Safe to re-run: every order is looked up by its client_order_id before any new submission.
            raise Failure(description=f"{errors.height} order(s) of {reb} could not be confirmed at the broker "
                          f"({errors['ticker'].to_list()[:20]}); re-run `kairos execute --execute`: submitted orders are "
                          f"reconciled by client_order_id, never sent twice", metadata=md)
        yield MaterializeResult(asset_key="execution", metadata=md)

    return execution


def _book_tables(broker: BrokerResource) -> list[str]:
    """The simulated broker's own book (it is the paper account when no Alpaca key is set)."""
    return list(SIM_BOOK) if broker.kind == "simulated" else []


def _verify(context: AssetExecutionContext, reb: dt.date, warehouse: DuckDBWarehouse, broker: BrokerResource,
            as_of: dt.datetime | None) -> Iterator:
    now = as_of or _now()
    try:
        with warehouse.connect() as con, broker.open(con, as_of=as_of) as b:
            report = engine.verify(b, reb, con=con, now=now)
            record_verification(con, report.summary, now)
            report_side_tables(context, con, ["execution_verifications", "execution_orders", *_book_tables(broker)])
    except (BrokerError, ValueError) as exc:
        raise Failure(description=f"verification of {reb}: {exc}") from None
    s, orders = report.summary, report.orders
    context.log.info(f"verification of {reb}: {json.dumps(s)}")
    common = {"fill_rate": MetadataValue.float(significant(float(s["fill_rate"]))),
              "slippage_bps": MetadataValue.float(significant(float(s["slippage_bps"]))) if s["slippage_bps"] is not None
              else MetadataValue.text("n/a (nothing filled)")}
    table = orders.select("side", "ticker", "qty", "status", "outcome", "severity", "filled_qty", "filled_avg_price",
                          "picks_price", "slippage_bps", "reason")
    outcomes = {"no_rejections": ["rejected", "submit_error"], "no_unfilled": ["unfilled"],
                "no_partial_fills": ["partial"], "all_orders_final": ["open"]}
    for name, severity, _ in REPORT_CHECKS:
        bad = table.filter(pl.col("outcome").is_in(outcomes[name]))
        yield AssetCheckResult(
            asset_key="execution_report", check_name=name, passed=bad.height == 0, severity=severity,
            description=(f"{bad.height} order(s): {bad['ticker'].to_list()[:20]}" if bad.height else "none"),
            metadata={**common, "orders": MetadataValue.int(bad.height),
                      "detail": MetadataValue.md(markdown_table(bad, max_rows=50) if bad.height else "_none_")})
    yield MaterializeResult(asset_key="execution_report", metadata={
        **common, "summary": MetadataValue.json(s), "orders": MetadataValue.md(markdown_table(table, max_rows=100)),
        "broker": MetadataValue.text(broker.describe()),
        "report_text": MetadataValue.text(reports.format_report(s, table))})


# -------------------------------------------------------------------------------- performance
def _performance_asset(partitions: PartitionsDefinition) -> AssetsDefinition:
    @asset(
        name="rebalance_performance",
        group_name=GROUP,
        # measured to the next rebalance's open: the next week's sep_base
        deps=["execution", AssetDep("sep_base", partition_mapping=TimeWindowPartitionMapping(
            start_offset=0, end_offset=1, allow_nonexistent_upstream_partitions=True))],
        partitions_def=partitions,
        pool="duckdb",
        io_manager_key="warehouse_io",
        kinds={"duckdb", "polars"},
        metadata={"partition_expr": "date"},
        check_specs=[checks.spec("portfolio_matches_picks", "rebalance_performance",
                                 "After the fills, every held weight is within the tolerance of its picks weight "
                                 "(the runbook's post-trade check).", partitions)],
        description=("Each executed rebalance measured from the broker's own records (execution_orders): the held "
                     "portfolio's return from its fills to the next rebalance's fills, the picks' return at their "
                     "target weights, universe_ew, market and the backtest over the same week, the implementation "
                     "shortfall, the drift from the picks and each position's contribution. Built once the next "
                     "rebalance date's open is in sep_base; weeks with no execution are marked."),
    )
    def rebalance_performance(context: AssetExecutionContext, warehouse: DuckDBWarehouse,
                              rebalance_outputs: RebalanceOutputs) -> Iterator:
        key, reb = week_rebalance_date(context)
        nxt = cal.next_rebalance_after(reb)
        picks_file = reports.default_picks_path(rebalance_outputs.path, reb)
        with warehouse.connect() as con:
            try:
                result = perf.measure_week(con, reb, picks_file)
            except (ValueError, OutputFileError) as exc:
                raise Failure(description=f"performance of {reb}: {exc}") from None
        row = result.summary.row(0, named=True)
        md = {"status": MetadataValue.text(row["status"]), "rebalance_date": MetadataValue.text(reb.isoformat()),
              "dagster/column_schema": column_schema(result.summary),
              "to": MetadataValue.text(nxt.isoformat()), "note": MetadataValue.text(row["note"] or "")}
        for k in ("held_return", "picks_return", "universe_ew_return", "market_return", "backtest_return",
                  "excess_vs_market", "shortfall_bps", "max_drift"):
            if row[k] is not None:
                md[k] = MetadataValue.float(significant(float(row[k])))
        if result.positions.height:
            by = result.positions.sort("contribution", descending=True)
            md["best_five"] = MetadataValue.md(markdown_table(by.head(5).drop("date")))
            md["worst_five"] = MetadataValue.md(markdown_table(by.tail(5).reverse().drop("date")))
            md["orders"] = MetadataValue.md(markdown_table(result.orders.drop("date"), max_rows=100))
        yield Output(result.summary, metadata=md)
        drift = row["max_drift"]
        yield AssetCheckResult(
            check_name="portfolio_matches_picks", passed=drift is None or drift <= row["drift_tolerance"],
            severity=AssetCheckSeverity.WARN,
            description=("not executed: nothing to compare" if drift is None else
                         f"largest drift {drift:.2%} (tolerance {row['drift_tolerance']:.2%})"),
            metadata={"partition": MetadataValue.text(key)})

    return rebalance_performance


def build_execution_assets(weekly_partitions: PartitionsDefinition) -> list[AssetsDefinition]:
    """The approval, the execution multi-asset (execution, execution_report) and the performance tracking."""
    return [_approval_asset(weekly_partitions), _execution_asset(weekly_partitions),
            _performance_asset(weekly_partitions)]
