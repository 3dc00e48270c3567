"""A source side and a recovery gateway in the test's own process, over real mail servers.

The recovery gateway is the real application (``RecoveryGateway`` from the configuration that
``GatewayPair`` writes), reached through its ASGI app; the source side is a state store with the
mailboxes registered, a capture engine and a shipper. Tests and benchmarks then drive capture,
shipping and replay passes one step at a time and can count or time each.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient
from mailrepl.gateway.shipper import Shipper
from mailrepl.recovery.app import RecoveryGateway
from mailrepl.recovery.settings import load_recovery_settings
from mailrepl.shared.engines.capture import CaptureEngine
from mailrepl.shared.store import Store, open_store
from mailrepl.shared.store.models import Mailbox
from sqlalchemy import select

from tests.support.gateways import INGEST_TOKEN, GatewayPair

__all__ = ["InProcessPair", "in_process_pair", "seeding_mailboxes"]


@dataclass
class InProcessPair:
    recovery: RecoveryGateway
    source: Store
    mailbox_ids: dict[str, int]  # address -> the source's mailbox id
    shipper: Shipper
    capture: CaptureEngine


def seeding_mailboxes(src, users: list[str]) -> dict[str, int]:
    """``users`` of server "primary" protected (phase seeding) in the source state ``src``;
    address -> mailbox id."""
    with src.tx() as s:
        for user in users:
            s.add(Mailbox(server="primary", address=user, protected=True, phase="seeding"))
    with src.read() as s:
        return dict(s.execute(select(Mailbox.address, Mailbox.id)).all())


def in_process_pair(tmp: Path, primary, standby, users: list[str]) -> InProcessPair:
    """``users`` protected (phase seeding) on a fresh SQLite source state under ``tmp``."""
    GatewayPair(tmp, primary, standby, users=users, source_state=f"sqlite:///{tmp}/source.sqlite",
                recovery_state=f"sqlite:///{tmp}/recovery.sqlite")  # writes both configuration files
    gw = RecoveryGateway(load_recovery_settings(tmp / "recovery.toml", dict(os.environ)))
    src = open_store(f"sqlite:///{tmp}/source.sqlite")
    src.migrate()
    mids = seeding_mailboxes(src, users)
    shipper = Shipper(src, "hq", TestClient(gw.app(), base_url="http://recovery"), token=INGEST_TOKEN)
    return InProcessPair(gw, src, mids, shipper, CaptureEngine(src))
