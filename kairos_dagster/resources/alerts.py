"""AlertNotifier: where alerts go (email over SMTP, a JSON webhook), from the environment; secrets as EnvVar."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from dagster import ConfigurableResource, EnvVar
from pydantic import Field

from kairos_dagster.broker.alerts import SEVERITIES, Notifier, NotifierSettings

ALERT_LOG = Path("alerts") / "alerts.jsonl"  # under $KAIROS_OUTPUT_DIR


class AlertNotifier(ConfigurableResource):
    """KAIROS_ALERT_EMAIL_TO (comma-separated), KAIROS_ALERT_EMAIL_FROM, KAIROS_SMTP_HOST, KAIROS_SMTP_PORT,
    KAIROS_SMTP_USER, KAIROS_SMTP_PASSWORD (EnvVar), KAIROS_SMTP_STARTTLS, KAIROS_ALERT_WEBHOOK_URL (EnvVar: a
    webhook URL often carries its token), KAIROS_ALERT_MIN_SEVERITY. No channel set: alerts are only logged."""

    email_to: str = Field(default="", description="KAIROS_ALERT_EMAIL_TO: recipients, comma-separated")
    email_from: str = Field(default="kairos@localhost", description="KAIROS_ALERT_EMAIL_FROM")
    smtp_host: str | None = Field(default=None, description="KAIROS_SMTP_HOST")
    smtp_port: int = Field(default=587, description="KAIROS_SMTP_PORT")
    smtp_user: str | None = Field(default=None, description="KAIROS_SMTP_USER (login when set)")
    smtp_password: str | None = Field(default=None, description="EnvVar KAIROS_SMTP_PASSWORD")
    smtp_starttls: bool = Field(default=True, description="KAIROS_SMTP_STARTTLS (0 for a local relay)")
    webhook_url: str | None = Field(default=None, description="EnvVar KAIROS_ALERT_WEBHOOK_URL")
    min_severity: str = Field(default="LOW", description="KAIROS_ALERT_MIN_SEVERITY: " + " < ".join(SEVERITIES))
    log_path: str = Field(description="the alert log (JSON lines): $KAIROS_OUTPUT_DIR/alerts/alerts.jsonl")

    @classmethod
    def from_env(cls, output_dir: Path, env: Mapping[str, str] | None = None) -> AlertNotifier:
        """Raises ValueError naming a variable with a value that cannot be used (never the value of a secret)."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            return env.get(name, "").strip() or None

        port = get("KAIROS_SMTP_PORT") or "587"
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"KAIROS_SMTP_PORT must be a port number, got {port!r}")
        severity = (get("KAIROS_ALERT_MIN_SEVERITY") or "LOW").upper()
        if severity not in SEVERITIES:
            raise ValueError(f"KAIROS_ALERT_MIN_SEVERITY must be one of {', '.join(SEVERITIES)}, got {severity!r}")
        tls = (get("KAIROS_SMTP_STARTTLS") or "1").lower()
        if tls not in {"1", "0", "true", "false", "yes", "no"}:
            raise ValueError(f"KAIROS_SMTP_STARTTLS must be 1/0, got {tls!r}")
        url = get("KAIROS_ALERT_WEBHOOK_URL")
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError("KAIROS_ALERT_WEBHOOK_URL must be an http(s) URL")
        return cls(email_to=get("KAIROS_ALERT_EMAIL_TO") or "", email_from=get("KAIROS_ALERT_EMAIL_FROM") or
                   "kairos@localhost", smtp_host=get("KAIROS_SMTP_HOST"), smtp_port=int(port),
                   smtp_user=get("KAIROS_SMTP_USER"),
                   smtp_password=EnvVar("KAIROS_SMTP_PASSWORD") if get("KAIROS_SMTP_PASSWORD") else None,
                   smtp_starttls=tls in {"1", "true", "yes"},
                   webhook_url=EnvVar("KAIROS_ALERT_WEBHOOK_URL") if url else None, min_severity=severity,
                   log_path=str(output_dir / ALERT_LOG))

    def __repr__(self) -> str:  # a resolved resource holds the secrets
        return f"AlertNotifier(email_to={self.email_to!r}, smtp_host={self.smtp_host!r}, webhook={'set' if self.webhook_url else 'unset'})"

    __str__ = __repr__

    def notifier(self) -> Notifier:
        return Notifier(NotifierSettings(
            email_to=tuple(a.strip() for a in self.email_to.split(",") if a.strip()), email_from=self.email_from,
            smtp_host=self.smtp_host, smtp_port=self.smtp_port, smtp_user=self.smtp_user,
            smtp_password=self.smtp_password, smtp_starttls=self.smtp_starttls, webhook_url=self.webhook_url,
            min_severity=self.min_severity), log_path=Path(self.log_path))
