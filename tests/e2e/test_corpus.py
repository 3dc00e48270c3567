"""Every corpus message the primary accepts replicates byte-exactly.

The corpus (tricky and realistic public messages: malformed MIME, 8-bit, bare LF/CR, NUL bytes,
mbox "From " lines, S/MIME, TNEF...) is stored on the primary with APPEND of the exact file bytes.
After seeding, the SHA-256 of BODY[] as each server returns it must match for every message.
"""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from mailrepl.shared.adapters.base import AppendItem
from mailrepl.shared.adapters.imap import ImapAdapter, ImapEndpoint
from mailrepl.shared.errors import MessageRejected
from tests.support.gateways import GatewayPair
from tests.support.mailcompare import assert_same_mailbox, corpus_files, snapshot

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]


def endpoint(server) -> ImapEndpoint:
    return ImapEndpoint(host="127.0.0.1", port=server.imap_port, tls="none", service_user=server.master_user,
                        service_password=server.master_password, auth="sasl-plain")


def test_corpus_replicates_byte_exactly(dovecot_factory, tmp_path):
    primary = dovecot_factory("primary", ["alice"])
    standby = dovecot_factory("standby", ["alice"])
    files = sorted(corpus_files())
    assert len(files) > 3000, "the handbook corpus is missing"
    session = ImapAdapter("primary", endpoint(primary)).open("alice")
    date = datetime(2024, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    accepted, refused = 0, []
    try:
        for i in range(0, len(files), 100):
            group = files[i : i + 100]
            folder = "tricky" if "/tricky/" in str(group[0]) else "realistic"
            items = [AppendItem(p.read_bytes(), frozenset(), date) for p in group]
            try:
                session.append(folder, items)
                accepted += len(items)
            except MessageRejected:
                for p, item in zip(group, items):
                    try:
                        session.append(folder, [item])
                        accepted += 1
                    except MessageRejected as exc:
                        refused.append((p.name, str(exc)))
    finally:
        session.close()
    assert accepted >= len(files) - 50, f"the primary refused too many: {refused[:5]}"

    pair = GatewayPair(tmp_path, primary, standby, users=["alice"],
                       source_state=f"sqlite:///{tmp_path}/s.sqlite", recovery_state=f"sqlite:///{tmp_path}/r.sqlite")
    pair.start()
    try:
        pair.protect("alice")
        st = pair.wait_synced(["alice"], timeout=300)
        assert st["alice"]["rejected"] == 0
        assert_same_mailbox(primary, standby, "alice")
        snap = snapshot(primary, "alice")
        assert sum(sum(c.values()) for c in snap.values()) == accepted
    finally:
        pair.stop()
    print(f"corpus: {accepted} stored and replicated byte-exactly, {len(refused)} refused by the primary")
