"""Settings of alerts (``[alerts]``, optional in both gateways' configs).

::

    [alerts]
    lag_seconds = 300             # a mailbox whose lag is over this: alarm
    copy_queue = 10000            # a mailbox whose copy (or replay) queue is over this: alarm
    certificate_days = 14         # a configured TLS certificate expiring within this: alarm
    interval = 15                 # seconds between two evaluations
    webhook_url = "https://chat.example.org/hooks/…"   # JSON POST per alert (optional)
    webhook_format = "json"       # or "alertmanager" (POST to Alertmanager's /api/v2/alerts)
    webhook_secret = "…"          # HMAC-SHA256 key of X-Mailrepl-Signature (or MAILREPL_WEBHOOK_SECRET)
    webhook_attempts = 8          # tries per alert (5xx, 429, unreachable: retried with back-off)
    smtp_host = "localhost"       # mail to the admins (optional)
    smtp_port = 25
    mail_from = "mailrepl@example.org"
    admins = ["oncall@example.org"]
    notify_users = false          # a notice mail to a user whose mailbox was cut over or failed back

Read only here; the alert classes take these typed values.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mailrepl.shared.config.toml_reader import Table

__all__ = ["AlertSettings", "read_alerts", "ENV_WEBHOOK_SECRET", "WEBHOOK_FORMATS"]

ENV_WEBHOOK_SECRET = "MAILREPL_WEBHOOK_SECRET"
WEBHOOK_FORMATS = ("json", "alertmanager")

DEFAULT_LAG_SECONDS = 300.0
DEFAULT_COPY_QUEUE = 10_000
DEFAULT_CERTIFICATE_DAYS = 14
DEFAULT_INTERVAL = 15.0
DEFAULT_WEBHOOK_ATTEMPTS = 8


@dataclass(frozen=True, kw_only=True)
class AlertSettings:
    lag_seconds: float = DEFAULT_LAG_SECONDS
    copy_queue: int = DEFAULT_COPY_QUEUE
    certificate_days: int = DEFAULT_CERTIFICATE_DAYS
    interval: float = DEFAULT_INTERVAL
    webhook_url: str | None = None
    webhook_format: str = "json"
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_attempts: int = DEFAULT_WEBHOOK_ATTEMPTS
    webhook_retry_initial: float = 1.0
    smtp_host: str | None = None
    smtp_port: int = 25
    mail_from: str = "mailrepl@localhost"
    admins: tuple[str, ...] = ()
    notify_users: bool = False

    def describe(self) -> str:
        out = [f"alerts: lag > {self.lag_seconds:g} s, queue > {self.copy_queue}, "
               f"certificates within {self.certificate_days} days, every {self.interval:g} s"]
        if self.webhook_url:
            out.append(f"webhook ({self.webhook_format}, {'signed' if self.webhook_secret else 'unsigned'})")
        if self.smtp_host:
            out.append(f"mail via {self.smtp_host}:{self.smtp_port} to {len(self.admins)} admins"
                       + (", notices to users" if self.notify_users else ""))
        return "; ".join(out)


def read_alerts(table: Table) -> AlertSettings:
    """``[alerts]`` (an empty table when the config has none)."""
    url = table.http_url("webhook_url") if "webhook_url" in table.keys() else None
    secret = table.secret("webhook_secret", ENV_WEBHOOK_SECRET, token=True, required=False)
    if url is not None and secret is None:
        raise table.error("webhook_secret", f"missing: a webhook needs a secret to sign with (or {ENV_WEBHOOK_SECRET})")
    smtp_host = table.string("smtp_host", None)
    admins = table.strings("admins", ())
    notify_users = table.boolean("notify_users", False)
    if (admins or notify_users) and smtp_host is None:
        raise table.error("smtp_host", "missing: mail to admins or users needs an SMTP server")
    for i, a in enumerate(admins):
        if "@" not in a or any(c.isspace() or ord(c) < 32 for c in a):
            raise table.error(f"admins[{i}]", f"not a mail address: {a!r}")
    settings = AlertSettings(
        lag_seconds=table.seconds("lag_seconds", DEFAULT_LAG_SECONDS),
        copy_queue=table.integer("copy_queue", DEFAULT_COPY_QUEUE, minimum=1),
        certificate_days=table.integer("certificate_days", DEFAULT_CERTIFICATE_DAYS, minimum=0),
        interval=table.seconds("interval", DEFAULT_INTERVAL),
        webhook_url=url,
        webhook_format=table.choice("webhook_format", WEBHOOK_FORMATS, "json"),
        webhook_secret=secret,
        webhook_attempts=table.integer("webhook_attempts", DEFAULT_WEBHOOK_ATTEMPTS, minimum=1),
        webhook_retry_initial=table.seconds("webhook_retry_initial", 1.0),
        smtp_host=smtp_host,
        smtp_port=table.integer("smtp_port", 25, minimum=1),
        mail_from=table.string("mail_from", "mailrepl@localhost"),
        admins=admins,
        notify_users=notify_users,
    )
    table.finish()
    return settings
