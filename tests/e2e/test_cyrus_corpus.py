"""The public corpus (tricky and realistic) across server kinds: Dovecot -> Cyrus in both
configurations, and Cyrus -> Dovecot.

The standby must equal the primary except for the messages the standby refused or altered, and
each of those must be reported with its identity and reason. The suite runs an evenly spread
subset (``MAILREPL_CYRUS_CORPUS``, default 40 messages; ``all`` for the whole corpus, about
3,600 messages, several minutes per direction), Dovecot -> Debian-default Cyrus; the other
directions with ``MAILREPL_CYRUS_FULL=1``::

    MAILREPL_CYRUS_FULL=1 MAILREPL_CYRUS_CORPUS=all python -m pytest -q -s tests/e2e/test_cyrus_corpus.py
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import re
from datetime import datetime, timezone

import pytest

from mailrepl.shared.adapters.base import AppendItem
from mailrepl.shared.content.standby_copy import identity
from mailrepl.shared.errors import MessageRejected
from tests.support.canonical_compare import adapter_for, canonical_snapshot
from tests.support.cyrus import full_only
from tests.support.gateways import GatewayPair
from tests.support.mailcompare import corpus_files

pytestmark = [pytest.mark.dovecot, pytest.mark.cyrus]

DATE = datetime(2024, 2, 3, 4, 5, 6, tzinfo=timezone.utc)


def subset() -> list:
    files = corpus_files()
    wanted = os.environ.get("MAILREPL_CYRUS_CORPUS", "40")
    if wanted == "all":
        return files
    step = max(1, len(files) // int(wanted))
    return files[::step][: int(wanted)]


def store_corpus(server, user: str) -> tuple[int, int]:
    """Append the subset to ``server`` (folders "tricky", "realistic"); (stored, refused by it).
    A message refused for its bare LF line ends is stored with CRLF, as an MTA delivering it by
    LMTP or SMTP would have sent it."""
    session = adapter_for(server).open(user)
    stored = refused = 0
    try:
        for path in subset():
            folder = "tricky" if "/tricky/" in str(path) else "realistic"
            body = path.read_bytes()
            for attempt in (body, re.sub(rb"(?<!\r)\n", b"\r\n", body)):
                try:
                    session.append(folder, [AppendItem(attempt, frozenset({"$Corpus"}), DATE)])
                    stored += 1
                    break
                except MessageRejected:
                    if attempt is not body or attempt == re.sub(rb"(?<!\r)\n", b"\r\n", body):
                        refused += 1
                        break
    finally:
        session.close()
    return stored, refused


def messages(snap: dict) -> collections.Counter:
    out: collections.Counter = collections.Counter()
    for folder, keys in snap.items():
        if not isinstance(folder, tuple):
            out.update({(folder, k[0]): n for k, n in keys.items()})
    return out


def identities(server, user: str, wanted: collections.Counter) -> collections.Counter:
    """(folder, Message-ID, subject, date) of the messages ``wanted`` holds (by folder and SHA-256)."""
    out: collections.Counter = collections.Counter()
    session = adapter_for(server).open(user)
    try:
        for folder in {f for f, _ in wanted}:
            info = session.folder_info(folder)
            for m in session.fetch(folder, list(range(1, info.uidnext))):
                n = wanted.get((folder, hashlib.sha256(m.body).hexdigest()), 0)
                if n:
                    who = identity(m.body)
                    out[(folder, who.message_id, who.subject, who.date)] += n
    finally:
        session.close()
    return out


def run(tmp_path, primary, standby, user: str) -> dict:
    stored, refused_by_primary = store_corpus(primary, user)
    pair = GatewayPair(tmp_path, primary, standby, users=[user], poll_interval=0.3,
                       source_state=f"sqlite:///{tmp_path}/s.sqlite", recovery_state=f"sqlite:///{tmp_path}/r.sqlite")
    pair.start()
    try:
        pair.protect(user)
        pair.wait_synced([user], timeout=600)
        with pair.recovery.api() as rec:
            detail = rec.get(f"/api/v1/mailboxes/{user}").raise_for_status().json()
    finally:
        pair.stop()
    sent, held = messages(canonical_snapshot(primary, user)), messages(canonical_snapshot(standby, user))
    altered = {(a["folder"], a["sha256"]): a for a in detail["altered_messages"]}
    rejected = detail["rejected_messages"]
    assert sum(sent.values()) == stored
    # every message the standby holds is a primary message, as sent or as reported altered, once
    expected = collections.Counter()
    for (folder, sha), n in sent.items():
        a = altered.get((folder, sha))
        expected[(folder, a["standby_sha256"] if a else sha)] += n
    missing = expected - held
    assert not held - expected, f"the standby holds what the primary does not: {list(held - expected)[:3]}"
    assert sum(missing.values()) == len(rejected), (len(rejected), list(missing)[:3])
    # each refusal named: the server's reason and the message as people know it (what it has of
    # Message-ID, subject and date)
    assert all(r["reason"] for r in rejected)
    named = collections.Counter((r["folder"], r["message_id"], r["subject"], r["date"]) for r in rejected)
    assert named == identities(primary, user, missing), (named, identities(primary, user, missing))
    for a in altered.values():
        assert a["what"] and a["standby_sha256"] != a["sha256"]
    figures = {"stored_on_primary": stored, "refused_by_primary": refused_by_primary,
               "refused_by_standby": len(rejected), "altered_by_standby": len(altered)}
    print(json.dumps(figures))
    return figures


@pytest.mark.parametrize("profile", ["debian-default", pytest.param("recommended", marks=full_only)])
def test_corpus_dovecot_to_cyrus(profile, cyrus_instances, dovecot_factory, tmp_path):
    cyrus = cyrus_instances(profile)
    user = cyrus.unique_user("corp")
    figures = run(tmp_path, dovecot_factory("primary", [user]), cyrus, user)
    if profile == "recommended":
        assert figures["altered_by_standby"] == 0  # munge8bit: no
    assert figures["stored_on_primary"] >= len(subset()) - 5


@full_only
def test_corpus_cyrus_to_dovecot(cyrus_instances, dovecot_factory, tmp_path):
    cyrus = cyrus_instances("recommended")
    user = cyrus.unique_user("corq")
    figures = run(tmp_path, cyrus, dovecot_factory("standby", [user]), user)
    assert figures["refused_by_standby"] == 0  # what Dovecot alters, if anything, was reported (see run)
