"""`ops_report` (weekly): the week's self-contained HTML ops report, its job and the Saturday schedule.

A thin shell over broker/ops_report.py: the week's runs and their failed or warned asset checks come from
the Dagster instance (runs whose partition or range covers the week), everything else from the warehouse.
"""

import datetime as dt
from pathlib import Path

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetSelection,
    DagsterEventType,
    DagsterInstance,
    Failure,
    MaterializeResult,
    MetadataValue,
    PartitionsDefinition,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SkipReason,
    asset,
    define_asset_job,
    schedule,
)

from kairos_dagster import calendar as cal
from kairos_dagster.backtest.report import write_report
from kairos_dagster.broker import ops_report as core
from kairos_dagster.constants import EXCHANGE_TIMEZONE, NEW_YORK
from kairos_dagster.defs.metadata import add_images
from kairos_dagster.defs.partitions import run_covers_week, week_key, window_dates
from kairos_dagster.defs.tags import RANGE_END_TAG, RANGE_START_TAG
from kairos_dagster.resources.rebalance_outputs import RebalanceOutputs
from kairos_dagster.resources.warehouse import DuckDBWarehouse
from kairos_dagster.warehouse.summary import markdown_table, significant

RUNS_LOOKED_AT = 2000  # the most recent runs searched for the week's (a year of weekly operation is ~300)


def week_runs(instance: DagsterInstance, key: str, exclude: str | None = None) -> pl.DataFrame:
    """The runs whose partition or partition range covers week `key` (RUN_COLUMNS), newest first."""
    rows = []
    for rec in instance.get_run_records(RunsFilter(), limit=RUNS_LOOKED_AT):
        run, tags = rec.dagster_run, rec.dagster_run.tags
        if run.run_id == exclude or not run_covers_week(tags, key):
            continue
        start, end = rec.start_time, rec.end_time
        trigger = (tags.get("kairos/trigger") or tags.get("dagster/schedule_name") or tags.get("dagster/sensor_name")
                   or ("backfill" if tags.get("dagster/backfill") else "ui"))
        parts = tags.get("dagster/partition") or f"{tags.get(RANGE_START_TAG)} .. {tags.get(RANGE_END_TAG)}"
        rows.append({"run_id": run.run_id, "job": run.job_name, "status": run.status.value, "trigger": trigger,
                     "partitions": parts,
                     "started": dt.datetime.fromtimestamp(start, dt.UTC) if start else None,
                     "duration_s": (end - start) if start and end else None})
    return pl.DataFrame(rows, schema=core.RUN_COLUMNS)


def week_checks(instance: DagsterInstance, run_ids: list[str], key: str) -> pl.DataFrame:
    """The failed (or warned) asset-check evaluations of those runs; in a run over several weeks, those of
    week `key` where the evaluation names its week (metadata `partition` or `week`)."""
    rows = []
    for run_id in run_ids:
        for event in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
            ev = event.dagster_event.event_specific_data
            if ev.passed:
                continue
            md = {k: getattr(v, "value", v) for k, v in (ev.metadata or {}).items()}
            week = md.get("partition") or md.get("week")
            if week is not None and str(week) != key:
                continue
            rows.append({"asset": ev.asset_key.to_user_string(), "check": ev.check_name, "passed": ev.passed,
                         "severity": ev.severity.value if ev.severity else None,
                         "description": ev.description, "run_id": run_id})
    return pl.DataFrame(rows, schema=core.CHECK_COLUMNS)


def build_ops_report_asset(partitions: PartitionsDefinition):
    @asset(
        name="ops_report",
        group_name="execution",
        deps=["rebalance_picks", "execution", "execution_report", "rebalance_performance"],
        partitions_def=partitions,
        pool="duckdb",
        kinds={"html", "duckdb"},
        description=("The week's ops report, one self-contained HTML file ($KAIROS_OUTPUT_DIR/reports/"
                     "ops_report_YYYYMMDD.html): runs, data freshness, failed and warned checks and gates, the picks "
                     "against their sector caps, the trades and their execution, performance against the benchmarks "
                     "and the backtest, the kill switches and the ML alpha's trailing out-of-sample IC."),
    )
    def ops_report(context: AssetExecutionContext, warehouse: DuckDBWarehouse,
                   rebalance_outputs: RebalanceOutputs) -> MaterializeResult:
        start, end = window_dates(context.partition_time_window)
        if (end - start).days != 7:
            raise Failure(description=f"ops_report is one week per run, got the window {start}..{end}")
        key = start.isoformat()
        runs = week_runs(context.instance, key, exclude=context.run.run_id)
        checks = week_checks(context.instance, runs["run_id"].to_list(), key)
        output_dir = Path(rebalance_outputs.path).parent
        try:
            with warehouse.connect(read_only=True) as con:
                week = core.gather(con, start, output_dir, runs=runs, checks=checks)
        except ValueError as exc:
            raise Failure(description=f"ops report of the week of {key}: {exc}") from None
        pngs = core.pictures(week)
        now = dt.datetime.now(dt.UTC)
        path = write_report(output_dir / core.REPORT_SUBDIR, core.report_name(week.rebalance_date),
                            core.render_html(week, pngs, generated_at=now))
        h = week.headline
        context.log.info(f"ops report of {week.rebalance_date}: {path}")
        md = {"report": MetadataValue.path(str(path)), "rebalance_date": MetadataValue.text(str(week.rebalance_date)),
              **{k: (MetadataValue.int(v) if isinstance(v, int) else MetadataValue.text(str(v)))
                 for k, v in h.items() if k != "week_return"},
              "stale_tables_list": MetadataValue.text(", ".join(week.freshness.filter(pl.col("stale"))["table"])
                                                      or "none"),
              "performance": MetadataValue.md(markdown_table(core.performance_periods(
                  week.performance, week.rebalance_date))),
              "pictures": MetadataValue.text(", ".join(pngs) or "none")}
        if h["week_return"] is not None:
            md["week_return"] = MetadataValue.float(significant(float(h["week_return"])))
        add_images(md, **pngs)  # the report's pictures, shown in the UI too
        return MaterializeResult(metadata=md)

    return ops_report


ops_report_job = define_asset_job(
    "ops_report_job", selection=AssetSelection.assets("ops_report"),
    description="Write one week's ops report (HTML under $KAIROS_OUTPUT_DIR/reports).")


@schedule(name="ops_report_schedule", job=ops_report_job, cron_schedule="0 8 * * 6",
          execution_timezone=EXCHANGE_TIMEZONE,
          description="Saturday 08:00 New York: the ops report of the week that just ended.")
def ops_report_schedule(context: ScheduleEvaluationContext):
    day = context.scheduled_execution_time.astimezone(NEW_YORK).date()
    monday = day - dt.timedelta(days=day.weekday())
    if cal.rebalance_date_for_week(monday) is None:
        return SkipReason(f"the week of {monday} has no NYSE session: nothing to report")
    key = week_key(monday)
    return RunRequest(run_key=f"ops-report-{key}", partition_key=key, tags={"kairos/trigger": "ops_report_schedule"})

