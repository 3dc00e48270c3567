"""Certificates close to expiry: an alarm producer over the certificate files a gateway uses."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable

from mailrepl.shared.alerts.model import Alarm

__all__ = ["certificate_expiry", "expiry_producer"]

log = logging.getLogger("mailrepl.alerts")


def certificate_expiry(path: Path) -> datetime | None:
    """When the first certificate of a PEM file expires (UTC); None if it cannot be read."""
    from cryptography import x509  # only where certificate files are configured (TLS)

    try:
        data = path.read_bytes()
        if len(data) > 1024 * 1024:
            raise ValueError("larger than 1 MiB")
        cert = x509.load_pem_x509_certificates(data)[0]
    except (OSError, ValueError, IndexError) as exc:
        log.warning("certificate %s: cannot read its expiry: %s", path, exc)
        return None
    return cert.not_valid_after_utc


def expiry_producer(files: Iterable[tuple[str, Path]], days: int,
                    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> Callable[[], list[Alarm]]:
    """Alarms for each ``(what, file)`` whose certificate expires within ``days`` (read at each call:
    a rotated file is seen)."""
    files = tuple(files)

    def produce() -> list[Alarm]:
        out = []
        t = now()
        for what, path in files:
            end = certificate_expiry(path)
            if end is None or end - t > timedelta(days=days):
                continue
            left = (end - t).total_seconds() / 86400
            text = (f"the {what} certificate ({path.name}) expired on {end:%Y-%m-%d %H:%M} UTC" if left <= 0 else
                    f"the {what} certificate ({path.name}) expires on {end:%Y-%m-%d %H:%M} UTC, in {left:.1f} days")
            out.append(Alarm("certificate-expiry", "critical" if left <= 2 else "warning", text, t, detail=str(path)))
        return out

    return produce
