"""Alerts that reach a person: the real sensors (run failure, checks, dead-man) deliver through the real
notifier to a local SMTP server (aiosmtpd, with login) and a local HTTP receiver on 127.0.0.1; no secret
appears in a message, a webhook body, the alert log or a log line."""

import datetime as dt
import email
import email.policy
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import duckdb
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    Definitions,
    asset,
    build_run_status_sensor_context,
    build_sensor_context,
    define_asset_job,
)

from kairos_dagster.broker import alerts as core
from kairos_dagster.constants import NEW_YORK as NY
from kairos_dagster.definitions import build_definitions
from kairos_dagster.defs.execution import alerting
from kairos_dagster.instance.runner import get_instance, run_selection
from kairos_dagster.resources.alerts import AlertNotifier
from kairos_dagster.resources.broker import BrokerResource
from kairos_dagster.resources.warehouse import DuckDBWarehouse
from kairos_dagster.settings import load_settings
from kairos_dagster_tests.fixtures.execution_setup import REB, WEEK, simulated_env, write_picks

PASSWORD = "smtp-pa55-word-xyz"
TOKEN = "hook-token-7f3a9c"


class Inbox:
    def __init__(self):
        self.messages: list[bytes] = []
        self.logins: list[tuple[str, str]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        self.messages.append(envelope.content)
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=auth_data.password.decode() == PASSWORD)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    def __init__(self, status: int = 200):
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        self.status = status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.paths.append(self.path)
                receiver.bodies.append(json.loads(body))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/{TOKEN}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def channels(tmp_path, monkeypatch):
    inbox = Inbox()
    port = _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, authenticator=inbox.authenticate,
                            auth_require_tls=False)
    controller.start()
    receiver = Receiver()
    env = {"KAIROS_ALERT_EMAIL_TO": "ops@example.com, risk@example.com", "KAIROS_ALERT_EMAIL_FROM": "kairos@example.com",
           "KAIROS_SMTP_HOST": "127.0.0.1", "KAIROS_SMTP_PORT": str(port), "KAIROS_SMTP_USER": "kairos",
           "KAIROS_SMTP_PASSWORD": PASSWORD, "KAIROS_SMTP_STARTTLS": "0", "KAIROS_ALERT_WEBHOOK_URL": receiver.url}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        yield inbox, receiver
    finally:
        controller.stop()
        receiver.close()


def _resources(db, tmp_path):
    notifier = AlertNotifier.from_env(tmp_path / "outputs")
    return {"alerts": notifier, "warehouse": DuckDBWarehouse(path=str(db)),
            "broker": BrokerResource(kind="simulated", warehouse_path=str(db))}


def _no_secret(*texts):
    for t in texts:
        assert PASSWORD not in t and TOKEN not in t


def test_a_refused_execution_alerts_its_failure_and_the_tripped_kill_switch_by_email_and_webhook(
        tmp_path, monkeypatch, channels, caplog):
    inbox, receiver = channels
    db = simulated_env(tmp_path, monkeypatch)
    write_picks(tmp_path / "outputs")
    with duckdb.connect(str(db)) as con:  # the account held AAA and BBB, which halved on the session before REB
        from kairos_dagster.broker.simulated import SimulatedBroker

        SimulatedBroker(con, clock=lambda: dt.datetime(2026, 1, 14, 12, tzinfo=NY), starting_cash=92_000.0)
        con.execute("INSERT INTO sim_positions VALUES ('sim-paper', 'AAA', 80, 50, DATE '2026-01-14'), "
                    "('sim-paper', 'BBB', 40, 100, DATE '2026-01-14')")
        con.execute("UPDATE sep_base SET close = close / 2, closeunadj = closeunadj / 2, closeadj = closeadj / 2 "
                    "WHERE ticker IN ('AAA', 'BBB') AND date = '2026-01-15'")
    monkeypatch.setenv("KAIROS_AUTO_PAPER", "1")
    defs = build_definitions(load_settings())
    instance = get_instance()
    result = run_selection(defs, ["execution"], partition_key=WEEK, instance=instance, raise_on_error=False,
                           run_config={"ops": {"execution": {"config": {"mode": "execute",
                                                                        "as_of": f"{REB}T09:00"}}}})
    assert not result.success
    ctx = build_run_status_sensor_context(
        sensor_name="run_failure_alert_sensor", dagster_instance=instance, dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(), resources=_resources(db, tmp_path)).for_run_failure()
    with caplog.at_level(logging.DEBUG):
        alerting.run_failure_alert_sensor(ctx)
    subjects = sorted(str(email.message_from_bytes(m, policy=email.policy.default)["Subject"]) for m in inbox.messages)
    assert subjects == ["[Kairos CRITICAL] kill switch max_daily_loss tripped for the rebalance of 2026-01-16",
                        "[Kairos HIGH] run of __ASSET_JOB failed (week 2026-01-12)"], subjects
    body = next(m for m in inbox.messages if b"failed (week" in m).decode()
    assert "REFUSED" in body and "max_daily_loss" in body and "Run: " + result.run_id in body
    assert inbox.logins == [("kairos", PASSWORD)] * 2  # the password went to the server, and only there
    assert "HTTP Request: POST http://127.0.0.1" in caplog.text  # httpx logged the request, with the path masked
    assert [b["kind"] for b in receiver.bodies] == ["run_failed", "kill_switch"]
    assert receiver.bodies[1]["severity"] == "CRITICAL" and "kairos override --gate max_daily_loss" in \
        receiver.bodies[1]["action"]
    log_file = (tmp_path / "outputs" / "alerts" / "alerts.jsonl").read_text()
    records = [json.loads(line) for line in log_file.splitlines()]
    assert [r["sent"] for r in records] == [["email", "webhook"]] * 2
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("mail."))  # not the test server's
    _no_secret(*(m.decode() for m in inbox.messages), json.dumps(receiver.bodies), log_file, ours,
               repr(_resources(db, tmp_path)["alerts"]))


def test_failed_checks_alert_at_the_seeds_severity_after_a_successful_run(tmp_path, monkeypatch, channels):
    inbox, receiver = channels
    db = simulated_env(tmp_path, monkeypatch)

    @asset(check_specs=[AssetCheckSpec("no_partial_fills", asset="fills"), AssetCheckSpec("odd_check", asset="fills")])
    def fills():
        yield AssetCheckResult(check_name="no_partial_fills", passed=False, severity=AssetCheckSeverity.WARN,
                               description="1 order(s): ['BBB']")
        yield AssetCheckResult(check_name="odd_check", passed=True)
        from dagster import MaterializeResult

        yield MaterializeResult()

    job = define_asset_job("fills_job", selection=["fills"])
    defs = Definitions(assets=[fills], jobs=[job])
    instance = get_instance()
    result = defs.get_job_def("fills_job").execute_in_process(instance=instance)
    ctx = build_run_status_sensor_context(
        sensor_name="check_alert_sensor", dagster_instance=instance, dagster_run=result.dagster_run,
        dagster_event=result.get_run_success_event(), resources=_resources(db, tmp_path))
    assert alerting.check_alert_sensor(ctx) is None
    assert [(b["kind"], b["severity"], b["title"]) for b in receiver.bodies] == [
        ("check", "MEDIUM", "Partial fill: no_partial_fills failed")]
    assert receiver.bodies[0]["action"] == "may need manual completion"
    assert len(inbox.messages) == 1 and b"[Kairos MEDIUM] Partial fill" in inbox.messages[0]


def test_the_deadman_alerts_each_missed_deadline_once(tmp_path, monkeypatch, channels):
    inbox, receiver = channels
    db = simulated_env(tmp_path, monkeypatch)
    defs = build_definitions(load_settings())
    write_picks(tmp_path / "outputs")  # the rebalance of 2026-01-16 ran (its gate verdicts are stored)

    instance = DagsterInstance.ephemeral()
    # The Friday run of the week of 2026-01-05 succeeded.
    instance.add_run(DagsterRun(job_name="weekly_pipeline_job", run_id="friday-0105", status=DagsterRunStatus.SUCCESS,
                                tags={"dagster/partition": "2026-01-05"}))

    def tick(when, cursor=None):
        monkeypatch.setattr(alerting, "_now", lambda: when)
        ctx = build_sensor_context(instance=instance, repository_def=defs.get_repository_def(), cursor=cursor,
                                   resources=_resources(db, tmp_path))
        return alerting.deadman_sensor.evaluate_tick(ctx)

    # Friday 2026-01-16 12:00: last week's Friday run succeeded, this rebalance ran, nothing approved.
    res = tick(dt.datetime(2026, 1, 16, 12, tzinfo=NY))
    assert "every deadline met" in res.skip_message and not receiver.bodies
    # Saturday 07:00: no successful weekly_pipeline_job run for the week of 2026-01-12.
    res = tick(dt.datetime(2026, 1, 17, 7, tzinfo=NY), res.cursor)
    assert [b["key"] for b in receiver.bodies] == ["deadman:friday_run:2026-01-12"]
    assert "did not succeed by 2026-01-17 06:00 New York" in receiver.bodies[0]["title"]
    assert "already alerted" in tick(dt.datetime(2026, 1, 17, 8, tzinfo=NY), res.cursor).skip_message
    # Approved on the rebalance day, but no order by 16:00.
    from typer.testing import CliRunner

    from kairos_dagster.cli.main import app

    out = CliRunner().invoke(app, ["approve", "--date", REB.isoformat(), "--by", "alice"])
    assert out.exit_code == 0, out.output
    receiver.bodies.clear()
    res = tick(dt.datetime(2026, 1, 16, 16, 30, tzinfo=NY), res.cursor)
    assert [b["key"] for b in receiver.bodies] == ["deadman:execution:2026-01-16"]
    assert "approved, but execution_orders has no order" in receiver.bodies[0]["detail"]
    # The next rebalance day 2026-01-23, 09:30: its rebalance never ran.
    receiver.bodies.clear()
    tick(dt.datetime(2026, 1, 23, 9, 30, tzinfo=NY), res.cursor)
    assert [b["key"] for b in receiver.bodies] == ["deadman:rebalance:2026-01-23"]
    assert inbox.messages and all(b"[Kairos HIGH]" in m for m in inbox.messages)


def test_a_failing_webhook_is_retried_then_reported_without_its_token(tmp_path):
    bad = Receiver(status=503)
    try:
        notifier = core.Notifier(core.NotifierSettings(webhook_url=bad.url), log_path=tmp_path / "alerts.jsonl")
        rec = notifier.send(core.run_failure_alert("weekly_pipeline_job", "r1", "2026-01-12", ["sync: boom"]))
    finally:
        bad.close()
    assert len(bad.bodies) == 3 and rec["sent"] == [] and "503" in rec["errors"]["webhook"]
    assert "127.0.0.1" in rec["errors"]["webhook"]
    _no_secret(json.dumps(rec), (tmp_path / "alerts.jsonl").read_text())
    low = core.Notifier(core.NotifierSettings(webhook_url="http://127.0.0.1:9/x", min_severity="HIGH"))
    assert low.send(core.Alert("k", "check", "MEDIUM", "t", "d"))["sent"] == []  # below the minimum: not sent
    with pytest.raises(ValueError, match="KAIROS_ALERT_MIN_SEVERITY"):
        AlertNotifier.from_env(tmp_path, {"KAIROS_ALERT_MIN_SEVERITY": "loud"})
