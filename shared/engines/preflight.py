"""The pre-flight check of a mail server (``mailrepl check-servers``, the API, and automatically
before the first protection of a server).

:func:`check_server` opens one mailbox through the service account, reads what the server says
about itself (IMAP: ``server_facts``), then writes probe messages into a scratch folder it
removes afterwards: one with 8-bit header bytes (Cyrus ``munge8bit`` rewrites them) and one with
bare LF line ends, reads them back and compares; the internal date the server gave the probe
measures clock skew. The findings come from ``preflight_rules.analyse``. It never raises for a
server problem: an unreachable server is a ``blocker`` finding.
"""
from __future__ import annotations

import time
import uuid
from datetime import timezone

from mailrepl.shared.adapters.base import Adapter, AppendItem, MailboxSession
from mailrepl.shared.content.standby_copy import describe_change
from mailrepl.shared.engines.preflight_rules import Finding, ProbeOutcome, ServerProbe, analyse
from mailrepl.shared.errors import MailreplError, MessageRejected

__all__ = ["PROBES", "check_server", "probe_server"]

SCRATCH_PREFIX = "mailrepl-preflight-"


def _probes(token: str) -> tuple[tuple[str, bytes], ...]:
    return (
        ("8-bit header", ("From: mailrepl pre-flight <preflight@invalid>\r\nSubject: mailrepl pre-flight "
                          "H\u00c4NSCHEL\r\nMessage-ID: <" + token + ".8bit@preflight.invalid>\r\n\r\nK\u00f6rper\r\n"
                          ).encode()),
        ("bare LF", ("Subject: mailrepl pre-flight bare LF\nMessage-ID: <" + token + ".lf@preflight.invalid>\n\n"
                     "line one\nline two\n").encode()),
    )


PROBES = tuple(name for name, _ in _probes(""))


def probe_server(name: str, kind: str, adapter: Adapter, address: str) -> ServerProbe:
    try:
        session = adapter.open(address)
    except MailreplError as exc:
        return ServerProbe(name, kind, error=f"cannot open mailbox {address!r}: {exc}")
    try:
        facts = getattr(session, "server_facts", None)
        f = facts() if facts is not None else None
        outcomes, skew = _write_probes(session)
        if f is None:
            return ServerProbe(name, kind, outcomes=outcomes, skew_seconds=skew)
        return ServerProbe(name, kind, capabilities=f.capabilities, separator=f.separator, prefix=f.prefix,
                           rights=f.rights, server_id=f.server_id, outcomes=outcomes, skew_seconds=skew)
    except MailreplError as exc:
        return ServerProbe(name, kind, error=f"probing mailbox {address!r} failed: {exc}")
    finally:
        session.close()


def _write_probes(session: MailboxSession) -> tuple[tuple[ProbeOutcome, ...], float | None]:
    token = uuid.uuid4().hex[:12]
    scratch = SCRATCH_PREFIX + token
    session.create_folder(scratch)
    outcomes = []
    skew = None
    try:
        for probe_name, body in _probes(token):
            before = time.time()
            try:
                res = session.append(scratch, [AppendItem(body, frozenset(), None)])
            except MessageRejected as exc:
                outcomes.append(ProbeOutcome(probe_name, False, reason=str(exc)))
                continue
            after = time.time()
            (stored,) = list(session.fetch(scratch, list(res.uids))) or [None]
            if stored is None:
                outcomes.append(ProbeOutcome(probe_name, False, reason="stored but not found again"))
                continue
            if skew is None and stored.internaldate is not None:
                server_time = stored.internaldate.astimezone(timezone.utc).timestamp()
                if server_time < before - 1:
                    skew = server_time - before
                elif server_time > after + 1:
                    skew = server_time - after
                else:
                    skew = 0.0
            if stored.body == body or (probe_name == "bare LF" and stored.body == body.replace(b"\n", b"\r\n")):
                outcomes.append(ProbeOutcome(probe_name, True))  # CRLF for bare LF: stable, see the contract
            else:
                outcomes.append(ProbeOutcome(probe_name, True, altered=describe_change(body, stored.body)))
    finally:
        session.delete_folder(scratch)
    return tuple(outcomes), skew


def check_server(name: str, kind: str, adapter: Adapter, address: str | None) -> list[Finding]:
    if address is None:
        return [Finding(name, "blocker", "mailbox", "no mailbox to probe: the server lists no users",
                        "list users for the server in the config, or give --address")]
    return analyse(probe_server(name, kind, adapter, address))
