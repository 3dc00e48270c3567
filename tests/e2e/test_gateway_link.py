"""The gateway link over real TLS: a recovery gateway process (``mailrepl recovery run``) with
mutual TLS binds each source to its certificate, or to its token with TLS alone, and refuses
anything else before writing a thing; certificates rotate without a restart.

Certificates come from ``mailrepl certs init`` (``init_certificates``); batches are sent with the
source gateway's own peer client (``make_peer_client``). The standby is an IMAP server with a
``users`` list, which is what the address check reads; nothing here needs it to answer.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from mailrepl.shared.cli.certs import init_certificates
from mailrepl.shared.errors import PeerRefused, TransportError
from mailrepl.shared.model import Change, Kind, SeqRange
from mailrepl.shared.protocol.peer_client import client_tls_context, make_peer_client
from mailrepl.shared.protocol.wire import Batch, Segment, encode_batch
from mailrepl.shared.store import open_store
from mailrepl.shared.store.models import InboxBody, InboxRow, Replica
from tests.support.gateways import free_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "link-admin-Vb7Nm3Qw9Er5Ty1Ui8Op2As4"
HQ_TOKEN = "hq-source-Kd6Fg2Hj8Lz4Xc0Vb3Nm7Qw5"
BRANCH_TOKEN = "branch-source-Pl9Ok3Ij7Uh1Yg5Tf2Rd8Es6"


def _recovery_toml(tmp: Path, port: int, gateway_tls: str, sources: str) -> Path:
    conf = tmp / "recovery.toml"
    conf.write_text(f"""
[gateway]
id = "dr"
state_url = "sqlite:///{tmp}/recovery.sqlite"
listen = "127.0.0.1:{port}"
admin_token = "{ADMIN}"
blob_dir = "{tmp}/blobs"
{gateway_tls}
{sources}
[[servers]]
name = "standby"
host = "127.0.0.1"
port = {free_port()}
tls = "none"
service_user = "repl"
service_password = "pw"
users = ["alice", "bob", "carol"]

[failover]
redirect_key = "redirect-Wq3Er6Ty9Ui2Op5As8Df1Gh"
""")
    conf.chmod(0o600)  # it holds secrets
    return conf


class Recovery:
    """``mailrepl recovery run`` in its own process, reached over TLS with ``ca``."""

    def __init__(self, tmp: Path, conf: Path, port: int, ca: Path, client: tuple[Path, Path] | None) -> None:
        self.tmp, self.conf, self.port, self.ca, self.client = tmp, conf, port, ca, client
        self.url = f"https://localhost:{port}"
        self.log = tmp / "recovery.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "mailrepl", "recovery", "run", "--config", str(conf)],
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, cwd=ROOT,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        context = client_tls_context(ca, *(client or (None, None)))
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + "/healthz", verify=context, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("recovery gateway did not come up:\n" + self.log.read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def state(self) -> dict:
        """Row counts and every replica's sequence numbers: what a refused request must not change."""
        store = open_store(f"sqlite:///{self.tmp}/recovery.sqlite")
        try:
            with store.read() as s:
                return dict(
                    replicas=s.scalar(select(func.count()).select_from(Replica)),
                    inbox=s.scalar(select(func.count()).select_from(InboxRow)),
                    bodies=s.scalar(select(func.count()).select_from(InboxBody)),
                    seqs=sorted((r.source_id, r.server, r.address, r.received_seq, r.applied_seq)
                                for r in s.scalars(select(Replica))),
                )
        finally:
            store.dispose()


def batch(source: str, *segments: tuple[str, str, int]) -> bytes:
    """A batch of ``source``: per (server, address, first seq) one folder creation."""
    return encode_batch(Batch(source, tuple(
        Segment(server, address, SeqRange(first, first), (Change(Kind.FOLDER_CREATE, f"F{first}"),))
        for server, address, first in segments)))


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    init_certificates(d, sources=["hq", "branch"], recovery_hosts=[], source_hosts=[])
    init_certificates(d / "other", sources=["hq"], recovery_hosts=[], source_hosts=[])  # another CA
    return d


@pytest.fixture
def mtls(tmp_path, certs):
    port = free_port()
    conf = _recovery_toml(tmp_path, port, f"""
tls_cert = "{tmp_path}/recovery.pem"
tls_key = "{tmp_path}/recovery.key"
tls_client_ca = "{certs}/ca.pem"
""", """
[[sources]]
id = "hq"
certificate_cn = "hq"
servers = ["primary"]

[[sources]]
id = "branch"
certificate_cn = "branch"
servers = ["branch"]
mailboxes = ["carol"]
""")
    for ext in ("pem", "key"):  # copies: the rotation test replaces them
        shutil.copy(certs / f"recovery.{ext}", tmp_path / f"recovery.{ext}")
    gw = Recovery(tmp_path, conf, port, certs / "ca.pem", (certs / "source-hq.pem", certs / "source-hq.key"))
    yield gw
    gw.stop()


def peer(gw: Recovery, certs: Path, source_id: str, cert: str | None = "hq", *, ca: Path | None = None,
         token: str | None = None):
    pair = dict(client_cert=certs / f"{cert}.pem", client_key=certs / f"{cert}.key") if cert else {}
    return make_peer_client(gw.url, token=token, source_id=source_id, timeout=10, ca_file=ca or certs / "ca.pem",
                            **pair)


def test_mutual_tls_refuses_clients_without_a_certificate_of_its_ca(mtls, certs):
    before = mtls.state()
    for client in (peer(mtls, certs, "hq", cert=None),  # no certificate at all
                   peer(mtls, certs, "hq", cert="other/source-hq")):  # CN "hq", but another CA signed it
        with pytest.raises(TransportError):
            client.send_batch(batch("hq", ("primary", "alice", 1)))
        client.close()
    assert mtls.state() == before


def test_a_source_writes_only_its_own_mailboxes_and_refusals_change_nothing(mtls, certs):
    hq = peer(mtls, certs, "hq", cert="source-hq")
    ack = hq.send_batch(batch("hq", ("primary", "alice", 1)))
    assert [r.status for r in ack.results] == ["ok"]
    before = mtls.state()
    assert before["replicas"] == 1 and before["inbox"] == 1
    assert before["seqs"] == [("hq", "primary", "alice", 1, 0)]

    refusals = {
        "another source's id in the header": (batch("branch", ("branch", "carol", 1)), 403, "may not act as source"),
        "a primary server not assigned to it": (batch("hq", ("branch", "carol", 1)), 403, "primary server 'branch'"),
        "an address the standby lacks": (batch("hq", ("primary", "mallory", 1)), 422, "has no mailbox 'mallory'"),
        "a good mailbox with a bad one": (batch("hq", ("primary", "alice", 2), ("primary", "mallory", 1)), 422,
                                          "has no mailbox 'mallory'"),
        "another mailbox with a forged first sequence": (batch("hq", ("primary", "bob", 1), ("branch", "carol", 1)),
                                                         403, "primary server 'branch'"),
    }
    for what, (data, status, detail) in refusals.items():
        with pytest.raises(PeerRefused) as err:
            hq.send_batch(data)
        assert err.value.status_code == status, what
        assert detail in str(err.value), what
        assert mtls.state() == before, what

    # the other routes: only its own source id, only its own mailboxes
    as_branch = hq.over(hq.http)
    as_branch.source_id = "branch"
    for call in (as_branch.progress, as_branch.sites, lambda: hq.resync("branch", "carol"),
                 lambda: hq.reverse([dict(server="branch", address="carol", received=0, applied=0)])):
        with pytest.raises(PeerRefused) as err:
            call()
        assert err.value.status_code == 403
    assert [r.address for r in hq.progress().results] == ["alice"]
    assert mtls.state() == before

    # the branch source, with its own certificate, for its one listed mailbox only
    branch = peer(mtls, certs, "branch", cert="source-branch")
    with pytest.raises(PeerRefused) as err:
        branch.send_batch(batch("branch", ("branch", "bob", 1)))
    assert err.value.status_code == 403 and "may not send mailbox 'bob'" in str(err.value)
    assert mtls.state() == before
    assert [r.status for r in branch.send_batch(batch("branch", ("branch", "carol", 1))).results] == ["ok"]
    after = mtls.state()
    assert after["seqs"] == sorted(before["seqs"] + [("branch", "branch", "carol", 1, 0)])
    hq.close()
    branch.close()


def _served_serial(gw: Recovery, certs: Path) -> str:
    context = client_tls_context(certs / "ca.pem", certs / "source-hq.pem", certs / "source-hq.key")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.getpeercert()["serialNumber"]


def test_a_rotated_server_certificate_is_served_without_a_restart(mtls, certs, tmp_path):
    first = _served_serial(mtls, certs)
    fresh = tmp_path / "fresh"
    shutil.copytree(certs, fresh, ignore=shutil.ignore_patterns("other", "recovery.*", "source-*"))
    init_certificates(fresh, sources=[], recovery_hosts=[], source_hosts=[])  # same CA, a new certificate
    for ext in ("key", "pem"):
        os.replace(fresh / f"recovery.{ext}", tmp_path / f"recovery.{ext}")
    second = _served_serial(mtls, certs)
    assert second != first
    assert mtls.proc.poll() is None  # the same process
    hq = peer(mtls, certs, "hq", cert="source-hq")
    assert [r.status for r in hq.send_batch(batch("hq", ("primary", "bob", 1))).results] == ["ok"]
    hq.close()


def test_per_source_tokens_with_tls_terminated_without_client_certificates(tmp_path, certs):
    port = free_port()
    conf = _recovery_toml(tmp_path, port, f"""
tls_cert = "{certs}/recovery.pem"
tls_key = "{certs}/recovery.key"
""", f"""
[[sources]]
id = "hq"
token = "{HQ_TOKEN}"
servers = ["primary"]

[[sources]]
id = "branch"
token = "{BRANCH_TOKEN}"
servers = ["branch"]
""")
    gw = Recovery(tmp_path, conf, port, certs / "ca.pem", None)
    try:
        hq = peer(gw, certs, "hq", cert=None, token=HQ_TOKEN)
        assert [r.status for r in hq.send_batch(batch("hq", ("primary", "alice", 1))).results] == ["ok"]
        before = gw.state()
        # hq's token cannot act as branch, nor send branch's server; a wrong token is nobody
        for client, data, status in ((hq, batch("branch", ("branch", "carol", 1)), 403),
                                     (hq, batch("hq", ("branch", "carol", 1)), 403),
                                     (peer(gw, certs, "branch", cert=None, token="wrong-token-0123456789"),
                                      batch("branch", ("branch", "carol", 1)), 401),
                                     (peer(gw, certs, "branch", cert=None, token=None),
                                      batch("branch", ("branch", "carol", 1)), 401)):
            with pytest.raises(PeerRefused) as err:
                client.send_batch(data)
            assert err.value.status_code == status
        assert gw.state() == before
        branch = peer(gw, certs, "branch", cert=None, token=BRANCH_TOKEN)
        assert [r.status for r in branch.send_batch(batch("branch", ("branch", "carol", 1))).results] == ["ok"]
        # the admin API over HTTPS through the CLI, verified with the CA
        result = subprocess.run([sys.executable, "-m", "mailrepl", "cutover", "nobody", "--url", gw.url,
                                 "--token", ADMIN, "--ca-file", str(certs / "ca.pem")],
                                capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert result.returncode == 1 and "no replicated mailbox 'nobody'" in result.stderr, result.stderr
        for client in (hq, branch):
            client.close()
    finally:
        gw.stop()


def test_the_admin_cli_reaches_a_mutual_tls_api_from_the_gateway_config(mtls):
    result = subprocess.run([sys.executable, "-m", "mailrepl", "cutover", "nobody", "--config", str(mtls.conf)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1 and "no replicated mailbox 'nobody'" in result.stderr, result.stderr


def test_plain_http_only_when_configured(tmp_path, certs):
    conf = _recovery_toml(tmp_path, free_port(), "", f"""
[[sources]]
id = "hq"
token = "{HQ_TOKEN}"
servers = ["primary"]
""")
    result = subprocess.run([sys.executable, "-m", "mailrepl", "recovery", "run", "--config", str(conf)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "gateway.tls_cert: missing" in line and "plaintext = true" in line
    old = conf.read_text().replace(f'admin_token = "{ADMIN}"', f'admin_token = "{ADMIN}"\ningest_token = "x-y-z"')
    conf.write_text(old)
    result = subprocess.run([sys.executable, "-m", "mailrepl", "recovery", "check-config", "--config", str(conf)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2 and "gateway.ingest_token: replaced by [[sources]]" in result.stderr
    # with plaintext = true it starts, and says what it risks
    port = free_port()
    conf = _recovery_toml(tmp_path, port, "plaintext = true", f"""
[[sources]]
id = "hq"
token = "{HQ_TOKEN}"
servers = ["primary"]
""")
    log = tmp_path / "plain.log"
    proc = subprocess.Popen([sys.executable, "-m", "mailrepl", "recovery", "run", "--config", str(conf)],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert "WARNING" in log.read_text() and "plain HTTP" in log.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)


def test_the_login_redirect_has_a_plain_loopback_listener_for_nginx(tmp_path, certs):
    """nginx's auth_http speaks no TLS: with ``redirect_listen`` the recovery gateway also serves
    ``GET /auth`` (and nothing else) over plain HTTP on loopback, beside its HTTPS API."""
    port, plain = free_port(), free_port()
    conf = _recovery_toml(tmp_path, port, f"""
tls_cert = "{certs}/recovery.pem"
tls_key = "{certs}/recovery.key"
""", f"""
[[sources]]
id = "hq"
token = "{HQ_TOKEN}"
servers = ["primary"]
""")
    key = "redirect-Wq3Er6Ty9Ui2Op5As8Df1Gh"
    text = conf.read_text()
    assert text.count(f'redirect_key = "{key}"') == 1
    conf.write_text(text.replace(f'redirect_key = "{key}"', f'redirect_key = "{key}"\nredirect_listen = "127.0.0.1:{plain}"'))
    gw = Recovery(tmp_path, conf, port, certs / "ca.pem", None)
    try:
        headers = {"Auth-User": "alice", "Auth-Pass": "x", "Auth-Protocol": "imap", "Auth-Method": "plain"}
        r = httpx.get(f"http://127.0.0.1:{plain}/auth", headers={**headers, "X-Mailrepl-Key": key}, timeout=10)
        assert r.status_code == 200 and "Auth-Status" in r.headers
        refused = httpx.get(f"http://127.0.0.1:{plain}/auth", headers={**headers, "X-Mailrepl-Key": "wrong"}, timeout=10)
        assert refused.headers["Auth-Status"].startswith("Temporary server problem") and "Auth-Server" not in refused.headers
        assert r.headers["Auth-Status"] != refused.headers["Auth-Status"]
        for path in ("/healthz", "/api/v1/mailboxes", "/metrics", "/openapi.json", "/api/v1/ingest/progress"):
            assert httpx.get(f"http://127.0.0.1:{plain}{path}", timeout=10).status_code == 404, path
        # the API itself stays HTTPS only
        assert httpx.get(gw.url + "/healthz", verify=client_tls_context(certs / "ca.pem", None, None),
                         timeout=10).status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        gw.stop()
    # never anywhere but loopback: the listener is plain HTTP
    conf.write_text(conf.read_text().replace(f"127.0.0.1:{plain}", f"0.0.0.0:{plain}"))
    result = subprocess.run([sys.executable, "-m", "mailrepl", "recovery", "check-config", "--config", str(conf)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2 and "failover.redirect_listen: expected a loopback address" in result.stderr
