"""Alerts that reach a person (no dagster import): what is alerted, how it reads, and the notifier that sends it.

What: the seed's alert table, mapped from the checks and gates that detect each condition,

| condition | severity | detected by |
|---|---|---|
| Data >1 day stale | CRITICAL | gate feat_matrix_has_signal_date |
| <50 stocks pass filter | CRITICAL | gate min_eligible_block |
| Turnover >50% | WARNING | gate turnover |
| Single position >5% | WARNING | gate max_position |
| Order rejection | HIGH | check no_rejections (and no_unfilled) |
| Partial fill | MEDIUM | check no_partial_fills |

plus any other failed check at its own severity (ERROR -> HIGH, WARN -> WARNING), failed runs (HIGH), tripped
kill switches (CRITICAL when blocking, WARNING otherwise) and the dead-man checks: the Friday run, the
rebalance or an approved execution that did not happen by its deadline (`deadman_alerts`, HIGH).

How: `Notifier` sends each alert by email (SMTP, STARTTLS unless disabled, login when a user is set) and/or
as JSON POSTed to a webhook, with a short retry on each. Secrets (the SMTP password, a webhook URL, which
often carries a token) never appear in an alert, a log line or an error: errors name the channel and the
host only. Every alert is appended to alerts.jsonl (what was sent where, and any delivery error).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from kairos_dagster import calendar as cal
from kairos_dagster.constants import NEW_YORK

log = logging.getLogger(__name__)

SEVERITIES = ("LOW", "MEDIUM", "WARNING", "HIGH", "CRITICAL")  # ascending
_RANK = {"LOW": 0, "MEDIUM": 1, "WARNING": 1, "HIGH": 2, "CRITICAL": 3}
# check or gate name -> (the seed's condition, its severity)
SEED_ALERTS: dict[str, tuple[str, str]] = {
    "feat_matrix_has_signal_date": ("Data >1 day stale", "CRITICAL"),
    "min_eligible_block": ("<50 stocks pass filter", "CRITICAL"),
    "turnover": ("Turnover >50%", "WARNING"),
    "max_position": ("Single position >5%", "WARNING"),
    "no_rejections": ("Order rejection", "HIGH"),
    "no_unfilled": ("Order rejection", "HIGH"),
    "no_partial_fills": ("Partial fill", "MEDIUM"),
}
ACTIONS = {
    "Data >1 day stale": "block the rebalance, investigate the sync",
    "<50 stocks pass filter": "block the rebalance, check the data",
    "Turnover >50%": "review before proceeding",
    "Single position >5%": "check the cap logic",
    "Order rejection": "check the account, retry",
    "Partial fill": "may need manual completion",
}
# Dead-man deadlines, New York time.
FRIDAY_RUN_DEADLINE = dt.time(6, 0)  # the morning after the week's last session
REBALANCE_DEADLINE = dt.time(9, 0)  # the rebalance day, before the open
EXECUTION_DEADLINE = dt.time(16, 0)  # the rebalance day's close (paper's window; live's ends at 09:28)


@dataclass(frozen=True)
class Alert:
    key: str  # identity: the same condition never alerts twice under one key
    kind: str  # check | gate | run_failed | kill_switch | deadman
    severity: str
    title: str
    detail: str
    week: str | None = None
    run_id: str | None = None
    action: str | None = None

    def __post_init__(self) -> None:
        if self.severity not in _RANK:
            raise ValueError(f"alert severity must be one of {SEVERITIES}, got {self.severity!r}")

    @property
    def subject(self) -> str:
        return f"[Kairos {self.severity}] {self.title}"

    def payload(self) -> dict:
        return {"source": "kairos", **asdict(self)}


def at_least(severity: str, minimum: str) -> bool:
    return _RANK[severity] >= _RANK[minimum]


def check_alert(check_name: str, asset: str, passed: bool, dagster_severity: str | None, description: str | None,
                *, week: str | None, run_id: str) -> Alert | None:
    """The alert of one asset-check evaluation (None when it passed)."""
    if passed:
        return None
    seed = SEED_ALERTS.get(check_name)
    severity = seed[1] if seed else ("HIGH" if (dagster_severity or "ERROR") == "ERROR" else "WARNING")
    title = f"{seed[0]}: {check_name} failed" if seed else f"check {asset}.{check_name} failed"
    return Alert(key=f"check:{run_id}:{asset}:{check_name}:{week}", kind="check", severity=severity,
                 title=title + (f" (week {week})" if week else ""), detail=description or "",
                 week=week, run_id=run_id, action=ACTIONS.get(seed[0]) if seed else None)


def run_failure_alert(job: str, run_id: str, week: str | None, causes: Sequence[str]) -> Alert:
    return Alert(key=f"run_failed:{run_id}", kind="run_failed", severity="HIGH",
                 title=f"run of {job} failed" + (f" (week {week})" if week else ""),
                 detail="\n".join(causes) or "the run failed (see its page in the UI)", week=week, run_id=run_id,
                 action="read the cause; re-run after fixing it (writes are atomic)")


def kill_switch_alerts(rows: Sequence[dict], *, run_id: str | None = None) -> list[Alert]:
    """`kill_switch_evaluations` rows: an alert per tripped switch (CRITICAL when it blocks execution)."""
    out = []
    for r in rows:
        if not r["tripped"]:
            continue
        blocking = bool(r["blocking"]) and r.get("overridden_by") is None
        out.append(Alert(
            key=f"kill_switch:{r['rebalance_date']}:{r['switch']}:{r.get('overridden_by')}", kind="kill_switch",
            severity="CRITICAL" if blocking else "WARNING",
            title=f"kill switch {r['switch']} tripped for the rebalance of {r['rebalance_date']}",
            detail=str(r["detail"]), week=None, run_id=run_id,
            action=("execution is blocked until `kairos override --gate " + r["switch"] + "`") if blocking else
            ("overridden: execution goes ahead" if r.get("overridden_by") else "warning only: look at live vs backtest")))
    return out


@dataclass(frozen=True)
class WeekActivity:
    """What happened for the latest weeks, as the dead-man check needs it (read by the shell)."""

    friday_run_ok: dict[str, bool] = field(default_factory=dict)  # week key -> a successful Friday pipeline run
    rebalanced: set[dt.date] = field(default_factory=set)  # rebalance dates with gate verdicts in the warehouse
    approved: set[dt.date] = field(default_factory=set)  # rebalance dates with an approval
    executed: set[dt.date] = field(default_factory=set)  # rebalance dates with orders in execution_orders


def _latest_passed(day: dt.date, deadline) -> dt.date | None:
    """The Monday of the latest week (this one or the two before) whose `deadline(monday)` has passed."""
    for back in range(3):
        monday = cal.week_start(day) - dt.timedelta(weeks=back)
        if deadline(monday):
            return monday
    return None


def deadman_alerts(now: dt.datetime, activity: WeekActivity, *, auto_paper: bool = False) -> list[Alert]:
    """The deadlines passed by `now` (the latest of each kind) whose work did not happen:
    - the Friday run (the schedule fires Friday 21:00): a successful weekly_pipeline_job run of the week by
      Saturday 06:00 New York;
    - the rebalance: gate verdicts for the rebalance date by 09:00 New York that day;
    - the execution, once approved (or with KAIROS_AUTO_PAPER=1): orders for the date by 16:00 that day."""
    local = now.astimezone(NEW_YORK)
    day = local.date()
    out: list[Alert] = []

    def at(d: dt.date, t: dt.time) -> dt.datetime:
        return dt.datetime.combine(d, t, NEW_YORK)

    monday = _latest_passed(day, lambda m: cal.rebalance_date_for_week(m) is not None
                            and at(m + dt.timedelta(days=5), FRIDAY_RUN_DEADLINE) <= local)
    if monday is not None and not activity.friday_run_ok.get(monday.isoformat(), False):
        week = monday.isoformat()
        out.append(Alert(key=f"deadman:friday_run:{week}", kind="deadman", severity="HIGH",
                         title=f"the Friday run of the week of {week} did not succeed by "
                               f"{monday + dt.timedelta(days=5)} {FRIDAY_RUN_DEADLINE:%H:%M} New York",
                         detail="no successful weekly_pipeline_job run for that partition: the week's data and "
                                "features are not built", week=week,
                         action="look at the schedule and the daemon; materialize the week in the UI"))
    monday = _latest_passed(day, lambda m: (r := cal.rebalance_date_for_week(m)) is not None
                            and at(r, REBALANCE_DEADLINE) <= local)
    if monday is not None:
        reb, week = cal.rebalance_date_for_week(monday), monday.isoformat()
        if reb not in activity.rebalanced:
            out.append(Alert(key=f"deadman:rebalance:{reb}", kind="deadman", severity="HIGH",
                             title=f"the rebalance of {reb} did not run by {REBALANCE_DEADLINE:%H:%M} New York",
                             detail="no gate verdicts for that date in the warehouse (rebalance_gate_results)",
                             week=week, action="look at rebalance_day_sensor; run `kairos rebalance`"))
    monday = _latest_passed(day, lambda m: (r := cal.rebalance_date_for_week(m)) is not None
                            and at(r, EXECUTION_DEADLINE) <= local)
    if monday is not None:
        reb, week = cal.rebalance_date_for_week(monday), monday.isoformat()
        if (reb in activity.approved or auto_paper) and reb not in activity.executed:
            out.append(Alert(key=f"deadman:execution:{reb}", kind="deadman", severity="HIGH",
                             title=f"the execution of {reb} did not happen by {EXECUTION_DEADLINE:%H:%M} New York",
                             detail=("approved, " if reb in activity.approved else "KAIROS_AUTO_PAPER=1, ")
                             + "but execution_orders has no order for that date", week=week,
                             action="look at execution_sensor and the execution run's page"))
    return out


# ------------------------------------------------------------------------------------ delivery
class DeliveryError(RuntimeError):
    """A channel could not deliver (names the channel and host, never a secret)."""


@dataclass(frozen=True)
class NotifierSettings:
    email_to: tuple[str, ...] = ()
    email_from: str = "kairos@localhost"
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_starttls: bool = True
    webhook_url: str | None = field(default=None, repr=False)
    min_severity: str = "LOW"
    timeout_s: float = 10.0

    @property
    def channels(self) -> list[str]:
        return (["email"] if self.email_to and self.smtp_host else []) + (["webhook"] if self.webhook_url else [])


def _email(alert: Alert, s: NotifierSettings) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = alert.subject
    msg["From"] = s.email_from
    msg["To"] = ", ".join(s.email_to)
    lines = [alert.title, "", alert.detail, ""]
    if alert.action:
        lines.append(f"Action: {alert.action}")
    lines += [f"Severity: {alert.severity}", f"Kind: {alert.kind}"]
    if alert.week:
        lines.append(f"Week: {alert.week}")
    if alert.run_id:
        lines.append(f"Run: {alert.run_id}")
    msg.set_content("\n".join(lines) + "\n")
    return msg


_RETRY = dict(stop=stop_after_attempt(3), wait=wait_exponential(multiplier=0.2, max=2), reraise=True,
              retry=retry_if_exception_type((OSError, smtplib.SMTPException, httpx.TransportError, DeliveryError)))


class _Redact(logging.Filter):
    """Masks secrets in the records of a library logger (httpx logs every request's full URL at INFO)."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = [x for x in secrets if x]

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if any(x in text for x in self.secrets):
            for x in self.secrets:
                text = text.replace(x, "***")
            record.msg, record.args = text, None
        return True


class Notifier:
    def __init__(self, settings: NotifierSettings, *, log_path: Path | None = None) -> None:
        self.settings = settings
        self.log_path = log_path

    def __repr__(self) -> str:
        return f"Notifier(channels={self.settings.channels})"

    @retry(**_RETRY)
    def _send_email(self, alert: Alert) -> None:
        s = self.settings
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.timeout_s) as smtp:
            if s.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if s.smtp_user:
                smtp.login(s.smtp_user, s.smtp_password or "")
            smtp.send_message(_email(alert, s))

    @retry(**_RETRY)
    def _post_webhook(self, alert: Alert) -> None:
        url = self.settings.webhook_url or ""
        parts = urlsplit(url)  # the host stays readable; the path, query and any password are the secret
        redact = _Redact([x for x in (parts.path if len(parts.path) > 1 else "", parts.query, parts.password) if x])
        loggers = [logging.getLogger(name) for name in ("httpx", "httpcore")]
        for lg in loggers:
            lg.addFilter(redact)
        try:
            r = httpx.post(url, json=alert.payload(), timeout=self.settings.timeout_s)
        finally:
            for lg in loggers:
                lg.removeFilter(redact)
        if r.status_code >= 500:
            raise DeliveryError(f"webhook answered {r.status_code}")
        if r.status_code >= 400:
            raise DeliveryError(f"webhook refused the alert: HTTP {r.status_code}")

    def send(self, alert: Alert, now: dt.datetime | None = None) -> dict:
        """Deliver on every configured channel at or above the minimum severity; never raises. Returns the
        record appended to the alert log: channels sent, and per-channel errors (secret-free)."""
        sent, errors = [], {}
        if at_least(alert.severity, self.settings.min_severity):
            for channel, fn in (("email", self._send_email), ("webhook", self._post_webhook)):
                if channel not in self.settings.channels:
                    continue
                try:
                    fn(alert)
                    sent.append(channel)
                except Exception as exc:  # any failure of a channel: report it without the secret
                    errors[channel] = self._safe_error(channel, exc)
                    log.warning("alert %s: %s delivery failed: %s", alert.key, channel, errors[channel])
        record = {"at": (now or dt.datetime.now(dt.UTC)).isoformat(), "sent": sent, "errors": errors,
                  **alert.payload()}
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        return record

    def _safe_error(self, channel: str, exc: Exception) -> str:
        s = self.settings
        where = (f"{s.smtp_host}:{s.smtp_port}" if channel == "email"
                 else (urlsplit(s.webhook_url or "").hostname or "the webhook"))
        text = f"{type(exc).__name__} via {where}"
        if isinstance(exc, (DeliveryError, smtplib.SMTPResponseException)):
            text += f": {getattr(exc, 'smtp_code', '')} {exc}".rstrip()
        for secret in (s.smtp_password, s.webhook_url):
            if secret:
                text = text.replace(secret, "***")
        return text
