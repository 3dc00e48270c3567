"""No configured secret leaks, and at-rest encryption holds, end to end.

Both gateways run as processes with ``log_level = "debug"`` and at-rest encryption on (a
different key per site, from owner-only files); a mailbox is protected, mail arrives by LMTP
and replicates byte-exact; status, detail, metrics and docs are read; a cutover and a failback
run; requests with a wrong token and bad configurations are tried. Then no secret (tokens,
service passwords, encryption keys in any spelling, the redirect key) may appear in any log
line, API response body or header, or CLI output; and no stored body, skeleton or blob file
holds the mail's plaintext.
"""
from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_cutover_failback import fail_back, post, recovery_mailbox
from tests.support.gateways import ADMIN_TOKEN, INGEST_TOKEN, GatewayPair
from tests.support.mailcompare import assert_same_mailbox

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]

USERS = ["alice", "bob"]
MARK = b"BODY-PLAINTEXT-MARKER-91c4e"
REPO = Path(__file__).resolve().parents[2]


def mail(i: int) -> bytes:
    part = (MARK + b" line %d of a long attachment\r\n" % i) * 1200  # > 16 KiB: travels as a blob
    return (f"From: a@example.org\r\nTo: alice@example.org\r\nSubject: leak test {i}\r\n"
            f"Message-ID: <leak{i}@example.org>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="zz"\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\n'
            ).encode() + MARK + b" in the text\r\n--zz\r\nContent-Type: text/plain\r\n\r\n" + part + b"--zz--\r\n"


def key_file(path: Path, key: bytes, spelling: str) -> Path:
    path.write_text(key.hex() if spelling == "hex" else base64.b64encode(key).decode())
    path.chmod(0o600)
    return path


def spellings(key: bytes) -> list[str]:
    return [key.hex(), key.hex().upper(), base64.b64encode(key).decode(), base64.urlsafe_b64encode(key).decode(),
            repr(key)[2:-1]]


def test_no_secret_in_logs_or_answers_and_nothing_stored_in_clear(dovecot_factory, tmp_path):
    primary = dovecot_factory("primary", USERS, master_password="pw-primary-" + secrets.token_urlsafe(18))
    standby = dovecot_factory("standby", USERS, master_password="pw-standby-" + secrets.token_urlsafe(18))
    src_key, rec_key = os.urandom(32), os.urandom(32)
    key_file(tmp_path / "source.key", src_key, "hex")
    key_file(tmp_path / "recovery.key", rec_key, "base64")
    redirect_key = "redirect-" + secrets.token_urlsafe(24)
    pair = GatewayPair(
        tmp_path, primary, standby, users=USERS,
        source_state=f"sqlite:///{tmp_path}/source.sqlite", recovery_state=f"sqlite:///{tmp_path}/recovery.sqlite",
        source_gateway_extra=f'log_level = "debug"\nencryption_key_file = "{tmp_path}/source.key"\n',
        recovery_gateway_extra=f'log_level = "debug"\nencryption_key_file = "{tmp_path}/recovery.key"\n',
        recovery_extra=f'\n[failover]\nredirect_key = "{redirect_key}"\n', with_primaries=True)
    secret_values = [ADMIN_TOKEN, INGEST_TOKEN, primary.master_password, standby.master_password, redirect_key,
                     *spellings(src_key), *spellings(rec_key)]
    seen: list[str] = []  # every answer and output, checked at the end

    def record(r: httpx.Response) -> httpx.Response:
        seen.append(f"{r.request.method} {r.request.url} -> {r.status_code}\n{r.headers}\n{r.text}")
        return r

    pair.start()
    try:
        for i in range(3):
            primary.deliver("alice", mail(i))
        pair.protect("alice")
        pair.wait_synced(["alice"])
        assert_same_mailbox(primary, standby, "alice")

        for gw in (pair.source, pair.recovery):
            with gw.api() as c:
                for path in ("/api/v1/mailboxes", "/api/v1/mailboxes/alice", "/healthz", "/metrics", "/openapi.json"):
                    assert record(c.get(path)).status_code in (200, 409), path
            wrong = httpx.Client(base_url=gw.url, headers={"Authorization": "Bearer " + ADMIN_TOKEN[:-1] + "x"})
            assert record(wrong.get("/api/v1/mailboxes")).status_code == 401
            change = (wrong.put("/api/v1/mailboxes/alice/protection", json={"enabled": True}) if gw is pair.source
                      else wrong.post("/api/v1/cutover", json={"addresses": ["alice"]}))
            assert record(change).status_code == 401
            wrong.close()
        record(httpx.get(pair.recovery.url + "/auth", headers={"Auth-User": "alice", "Auth-Protocol": "imap",
                                                              "X-Mailrepl-Key": "wrong-key"}))

        # cutover and failback: DR capture writes its own (sealed) outbox at the recovery gateway
        r = record(post(pair, "/api/v1/cutover", {"addresses": ["alice"]}))
        assert r.status_code == 200 and r.json()["results"][0]["state"] == "active-at-dr", r.text
        M = standby.imap("alice")
        M.append("INBOX", None, None, mail(50))
        M.logout()
        fail_back(pair, captured_at_least=1)
        record(httpx.Response(200, json=recovery_mailbox(pair), request=httpx.Request("GET", pair.recovery.url)))
        primary.deliver("alice", mail(60))
        pair.wait_synced(["alice"])
        assert_same_mailbox(primary, standby, "alice")
    finally:
        pair.stop()

    # bad configurations: one line, exit 2, no secret echoed
    for name, text in [
        ("readable.toml", pair.source.config.read_text()),  # holds secrets, mode 0644
        ("reused.toml", pair.source.config.read_text().replace(f'token = "{INGEST_TOKEN}"', f'token = "{ADMIN_TOKEN}"')),
        ("weak.toml", pair.source.config.read_text().replace(ADMIN_TOKEN, ADMIN_TOKEN[:12])),
    ]:
        conf = tmp_path / name
        conf.write_text(text)
        conf.chmod(0o644 if name == "readable.toml" else 0o600)
        out = subprocess.run([sys.executable, "-m", "mailrepl", "source", "check-config", "--config", str(conf)],
                             capture_output=True, text=True, cwd=REPO)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        seen.append(out.stdout + out.stderr)
    ok = subprocess.run([sys.executable, "-m", "mailrepl", "recovery", "check-config", "--config",
                         str(pair.recovery.config)], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0 and "at-rest encryption on" in ok.stdout, ok.stderr
    seen.append(ok.stdout + ok.stderr)

    logs = {p.name: p.read_text(errors="replace") for p in (pair.source.log, pair.recovery.log)}
    assert all(" DEBUG " in text for text in logs.values()), "the gateways logged at DEBUG"
    for value in secret_values:
        assert len(value) >= 16
        for name, text in logs.items():
            assert value not in text, f"a secret appears in {name}"
        for answer in seen:
            assert value not in answer, f"a secret appears in an answer: {answer[:200]}"

    # at rest: state databases (with their WAL), outbox spool segments and blob files hold no
    # plaintext of the mail
    stored = ([p for p in tmp_path.glob("*.sqlite*")] + list(tmp_path.glob("*.outbox/*.seg"))
              + [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()])
    assert any("blobs" in str(p) for p in stored), "parts were stored as blobs"
    for path in stored:
        assert MARK not in path.read_bytes(), f"plaintext mail in {path}"
