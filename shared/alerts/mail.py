"""Alerts by mail to the admins, and an optional notice to a user whose mailbox moved.

Plain SMTP (``smtplib``) to the configured relay, from a background thread; a relay that does
not answer is retried a few times, then the mail is dropped with a warning (the webhook and
``/metrics`` remain the primary channels).
"""
from __future__ import annotations

import logging
import queue
import smtplib
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from mailrepl.shared.alerts.model import Alert
from mailrepl.shared.runtime.background import Background

__all__ = ["MailSender", "user_notice"]

log = logging.getLogger("mailrepl.alerts")

ATTEMPTS = 3


def _clean(text: str) -> str:
    return " ".join(text.split())[:200]  # a header line: no CR/LF from mail data


def user_notice(address: str, after: str) -> tuple[str, str] | None:
    """(subject, text) of the notice to a user whose mailbox's site state became ``after``."""
    if after == "active-at-dr":
        return ("Your mailbox has moved to the standby server",
                "Your mailbox is now served by the standby server while the primary mail server is "
                "unavailable. Your mail client keeps working with the same settings; mail that arrived "
                "before the move is there.\n")
    if after == "replicating":
        return ("Your mailbox is back on the primary server",
                "Your mailbox is served by the primary mail server again, with the changes you made "
                "in the meantime. Nothing needs to be done on your side.\n")
    return None


class MailSender:
    def __init__(self, host: str, port: int, mail_from: str, admins: tuple[str, ...], *, timeout: float = 20.0) -> None:
        self.host, self.port, self.mail_from, self.admins, self.timeout = host, port, mail_from, admins, timeout
        self.queue: queue.Queue[EmailMessage] = queue.Queue(1000)
        self.loop = Background("alert-mail", self._run)
        self.sent = 0

    def send(self, alert: Alert) -> None:
        if not self.admins:
            return
        msg = self._message(self.admins, _clean(alert.text()),
                            f"{alert.text()}\n\nsince: {alert.alarm.since.isoformat()}\nid: {alert.id}\n")
        self._queue(msg)

    def notify_user(self, address: str, subject: str, text: str) -> None:
        self._queue(self._message((address,), subject, text))

    def _message(self, to: tuple[str, ...], subject: str, text: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = self.mail_from, ", ".join(to), _clean(subject)
        msg["Date"], msg["Message-ID"] = formatdate(localtime=False), make_msgid(domain="mailrepl")
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(text)
        return msg

    def _queue(self, msg: EmailMessage) -> None:
        try:
            self.queue.put_nowait(msg)
        except queue.Full:
            log.warning("mail queue full: dropped %s", msg["Subject"])

    def start(self) -> None:
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop(timeout=5)

    def _run(self) -> None:
        while not self.loop.stopping.is_set():
            try:
                msg = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                        smtp.send_message(msg)
                    self.sent += 1
                    break
                except (OSError, smtplib.SMTPException) as exc:
                    log.warning("mail to %s: attempt %d failed: %s", msg["To"], attempt, exc)
                    if attempt == ATTEMPTS or self.loop.stopping.wait(2.0 * attempt):
                        break
