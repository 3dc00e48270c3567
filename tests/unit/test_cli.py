"""The ``mailrepl`` command line, run as a subprocess like an operator runs it.

The admin commands talk over real sockets to a real source gateway (``mailrepl.gateway.app.SourceGateway``
built from a TOML config by ``load_source_settings``) shipping to a real recovery gateway, both
served in this process; only the mail servers are in-memory stand-ins. One of the two primary
servers is down, as a gateway must serve its API and report the error while its server is out.
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from rich.console import Console

import mailrepl.gateway.app
import mailrepl.recovery.app
from mailrepl.gateway.settings import load_source_settings
from mailrepl.recovery.settings import load_recovery_settings
from mailrepl.shared.errors import ServerUnavailable
from mailrepl.shared.cli.status_view import overview
from tests.unit.memory_server import MemoryServer

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "deploy" / "examples"
TOKEN = "cli-admin-token-Rt5Yu8Io1Pa4Sd7Fg0Hj"


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailrepl", *args], cwd=REPO, env=_env(env),
                          capture_output=True, text=True, timeout=timeout)


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILREPL_")}
    env.update(COLUMNS="250", NO_COLOR="1", **(extra or {}))
    return env


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mailrepl: error: "), lines[0]
    return lines[0]


def closed_port() -> int:
    with bound_socket() as sock:  # bound, never listening: connections are refused
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------- configs


def test_bad_config_exits_2_with_one_line_naming_the_key(tmp_path):
    bad = tmp_path / "source.toml"
    bad.write_text((EXAMPLES / "source.toml").read_text().replace("port = 10143", 'port = "abc"'))
    for action in ("check-config", "run"):
        result = cli("source", action, "--config", str(bad))
        assert result.returncode == 2
        assert one_error_line(result) == (
            f'mailrepl: error: {bad}: servers[0].port: expected an integer 1-65535, got "abc"')
        assert result.stdout == ""


def test_missing_secret_names_the_environment_variable(tmp_path):
    conf = tmp_path / "recovery.toml"
    conf.write_text((EXAMPLES / "recovery.toml").read_text().replace('token = "demo-source-Hf5Jk9Lw3Np7Rt2Vx8Zb4Cd"\n', ""))
    result = cli("recovery", "run", "--config", str(conf))
    assert result.returncode == 2
    assert "sources[0].certificate_cn: missing" in one_error_line(result)
    assert "MAILREPL_SOURCE_HQ_TOKEN" in result.stderr
    ok = cli("recovery", "check-config", "--config", str(conf), env={"MAILREPL_SOURCE_HQ_TOKEN": "from-env-Lm7No0Pq3Rs6Tu9Vw2Xy5Za8"})
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("role", ["source", "recovery"])
def test_check_config_prints_ok_and_a_summary_without_secrets(role):
    result = cli(role, "check-config", "--config", str(EXAMPLES / f"{role}.toml"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"ok: {EXAMPLES / f'{role}.toml'}"
    assert f"{role} gateway" in lines[1]
    server = "primary" if role == "source" else "standby"
    port = 10143 if role == "source" else 11143
    assert f'server "{server}" (imap): 127.0.0.1:{port}, tls none, sasl-plain as "repl", 4 users' in result.stdout
    shown = result.stdout.replace(str(REPO), "")  # the checkout's path may contain any word
    assert "secret" not in shown and "demo-admin-Qm2xV7pL4sK8nR3tW6yZ1cB" not in shown
    assert "demo-ingest-Hf5Jk9Lw3Np7Rt2Vx8Zb4Cd" not in shown


def test_usage_errors_exit_2():
    for args in (["protect"], ["protect", "--all"], ["protect", "alice", "--all", "--server", "x"],
                 ["status", "--json", "--watch"], ["status", "--server", "primary"],
                 ["unprotect", "alice", "--wait"], ["protect", "alice", "--wait-timeout", "5"]):
        result = cli(*args, "--token", "t")
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_admin_command_without_a_token_exits_2():
    result = cli("status", "--url", "http://127.0.0.1:1")
    assert result.returncode == 2
    assert "no admin token" in one_error_line(result)


def test_unreachable_api_exits_1_naming_the_url():
    url = f"http://127.0.0.1:{closed_port()}"
    result = cli("status", "--url", url, "--token", "t")
    assert result.returncode == 1
    assert f"cannot reach the source gateway API at {url}" in one_error_line(result)
    result = cli("protect", "alice", env={"MAILREPL_URL": url, "MAILREPL_ADMIN_TOKEN": "t"})
    assert result.returncode == 1
    assert url in one_error_line(result)


# ---------------------------------------------------------------------------- rendering


def test_status_view_shows_a_progress_bar_per_seeding_mailbox():
    def status(address, phase, **kw):
        base = dict(address=address, server="primary", protected=phase != "idle", phase=phase, active_site="primary",
                    copy_queue=0, replay_queue=0, lag_seconds=0.0, last_captured_seq=0, last_applied_seq=0,
                    error=None, rejected=0)
        return {**base, **kw}

    seeding = status("alice", "seeding", copy_queue=40, last_captured_seq=40, lag_seconds=75.0,
                     seeding=dict(messages_done=120, messages_total=400, bytes_done=3_000_000, bytes_total=10_000_000),
                     folders=[], rejected_messages=[])
    mailboxes = [seeding, status("bob", "idle"), status("carol", "error", error="ServerUnavailable: down")]
    out = io.StringIO()
    Console(file=out, width=250, color_system=None).print(overview(mailboxes, [seeding], source="http://gw"))
    text = out.getvalue()
    assert "http://gw: 3 mailboxes" in text
    alice_row = next(line for line in text.splitlines() if "alice" in line and "primary" in line)
    assert alice_row.split()[:9] == ["│", "alice", "│", "primary", "│", "yes", "│", "seeding", "│"]
    assert "1m15s" in alice_row
    assert "ServerUnavailable: down" in text
    bar_row = next(line for line in text.splitlines() if "alice" in line and "120/400" in line)
    assert "━" in bar_row and "30%" in bar_row and "3.0 MB / 10.0 MB" in bar_row


# ---------------------------------------------------------------------------- against live gateways


class MemoryAdapter:
    """The adapter contract over an in-memory server; lists its users like a configured user list."""

    def __init__(self, name: str, server: MemoryServer) -> None:
        self.name, self.server = name, server

    def open(self, address: str):
        return self.server.open(address)

    def list_mailboxes(self) -> list[str]:
        return sorted(self.server.boxes)

    def check(self) -> None:
        if self.server.down:
            raise ServerUnavailable("memory server is down")


def bound_socket() -> socket.socket:
    """A port reserved before the config naming it is written; uvicorn then listens on it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


class Served:
    """A gateway's ASGI app served on ``sock`` by uvicorn, in a thread of this process."""

    def __init__(self, app, sock: socket.socket) -> None:
        self.sock = sock
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "gateway did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


class Site:
    """A source gateway (servers "primary" up, "branch" down) and a recovery gateway."""

    def __init__(self, tmp_path: Path, monkeypatch) -> None:
        self.primary = MemoryServer(["alice", "bob", "carol"])
        self.branch = MemoryServer(["erin"])
        self.branch.down = True
        self.standby = MemoryServer(["alice", "bob", "carol", "erin"])
        for i in range(12):
            body = f"Subject: a{i}\r\n\r\nhello {i}\r\n".encode()
            self.primary.deliver("alice", body, flags={"\\Seen"} if i % 2 else ())
        self.primary.deliver("alice", b"Subject: list\r\n\r\nlist mail\r\n", folder="Lists/dev")
        self.primary.deliver("bob", b"Subject: b\r\n\r\nhi bob\r\n")
        adapters = {"primary": self.primary, "branch": self.branch, "standby": self.standby}

        def make(srv) -> MemoryAdapter:
            return MemoryAdapter(srv.name, adapters[srv.name])

        monkeypatch.setattr(mailrepl.gateway.app, "make_adapter", make)
        monkeypatch.setattr(mailrepl.recovery.app, "make_adapter", make)

        rec_sock, src_sock = bound_socket(), bound_socket()
        rec_port, src_port = rec_sock.getsockname()[1], src_sock.getsockname()[1]
        rec_conf = tmp_path / "recovery.toml"
        rec_conf.write_text(f"""
[gateway]
id = "dr"
state_url = "sqlite:///state/recovery.sqlite"
listen = "127.0.0.1:{rec_port}"
admin_token = "{TOKEN}"
plaintext = true

[[sources]]
id = "hq"
token = "ingest-token-Kl3Zx6Cv9Bn2Mq5We8Rt1"
servers = ["primary", "branch"]

[failover]
redirect_key = "redirect-key-Ab5Cd8Ef1Gh4Ij7Kl0Mn3Op"

[[servers]]
name = "standby"
host = "127.0.0.1"
tls = "none"
service_user = "repl"
service_password = "secret"
""")
        self.source_conf = tmp_path / "source.toml"
        self.source_conf.write_text(f"""
[gateway]
id = "hq"
state_url = "sqlite:///state/source.sqlite"
listen = "127.0.0.1:{src_port}"
admin_token = "{TOKEN}"
plaintext = true
poll_interval = 0.2
fetch_chunk = 5

[peer]
url = "http://127.0.0.1:{rec_port}"
token = "ingest-token-Kl3Zx6Cv9Bn2Mq5We8Rt1"
retry_initial = 0.2
retry_max = 1.0
""" + "".join(f"""
[[servers]]
name = "{name}"
host = "127.0.0.1"
tls = "none"
service_user = "repl"
service_password = "secret"
users = {json.dumps(sorted(adapters[name].boxes))}
""" for name in ("primary", "branch")))
        rec_conf.chmod(0o600)
        self.source_conf.chmod(0o600)
        self.recovery_conf = rec_conf
        self.recovery = Served(mailrepl.recovery.app.RecoveryGateway(load_recovery_settings(rec_conf, {})).app(), rec_sock)
        self.source = Served(mailrepl.gateway.app.SourceGateway(load_source_settings(self.source_conf, {})).app(), src_sock)
        self.url = f"http://127.0.0.1:{src_port}"
        self.recovery_url = f"http://127.0.0.1:{rec_port}"

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)

    def statuses(self) -> dict[str, dict]:
        with self.api() as c:
            return {m["address"]: m for m in c.get("/api/v1/mailboxes").raise_for_status().json()["mailboxes"]}

    def cli(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return cli(*args, "--url", self.url, "--token", TOKEN, **kw)

    def stop(self) -> None:
        self.source.stop()
        self.recovery.stop()


@pytest.fixture
def site(tmp_path, monkeypatch):
    s = Site(tmp_path, monkeypatch)
    try:
        yield s
    finally:
        s.stop()


def eventually(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def connected_to(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a TCP connection to 127.0.0.1:``port`` (Linux /proc)."""
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")}
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == port and fields[9] in inodes:
            return True
    return False


def table_row(text: str, first_cell: str) -> list[str]:
    """The cells of the rich table row (or header) whose first cell is ``first_cell``."""
    for line in text.splitlines():
        cells = [cell.strip() for cell in re.split("[│┃]", line.strip())[1:-1]]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{text}")


def test_status_table_lists_configured_mailboxes(site):
    result = site.cli("status")
    assert result.returncode == 0, result.stderr
    assert f"{site.url}: 4 mailboxes" in result.stdout
    assert table_row(result.stdout, "Address")[1:] == [
        "Server", "Protected", "Phase", "Active site", "Copy queue", "Replay queue", "Lag",
        "Last captured", "Last applied", "Rejected", "Shipped", "Wire", "Saved dedup/zstd", "Error"]
    assert table_row(result.stdout, "alice")[:5] == ["alice", "primary", "no", "idle", "primary"]
    assert table_row(result.stdout, "erin")[:4] == ["erin", "branch", "no", "idle"]


def test_status_json_is_the_api_document(site):
    result = site.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert sorted((m["server"], m["address"]) for m in data["mailboxes"]) == [
        ("branch", "erin"), ("primary", "alice"), ("primary", "bob"), ("primary", "carol")]
    assert data == {"mailboxes": list(site.statuses().values())}


def test_protect_wait_returns_once_in_sync(site):
    # the API location comes from the source config this time
    result = cli("protect", "alice", "bob", "--wait", "--wait-timeout", "60", "--config", str(site.source_conf))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 mailboxes replicating, queues empty" in result.stdout
    progress = result.stdout[result.stdout.index("Waiting for 2 mailboxes"):]
    assert table_row(progress, "alice")[:2] == ["alice", "replicating"]  # the final progress view

    st = site.statuses()
    for address in ("alice", "bob"):
        assert st[address]["protected"] and st[address]["phase"] == "replicating"
        assert st[address]["copy_queue"] == st[address]["replay_queue"] == 0
        assert st[address]["last_applied_seq"] == st[address]["last_captured_seq"] > 0
    assert st["carol"]["protected"] is False
    bodies = lambda srv, user: sorted(m.body for f in srv.box(user).values() for m in f.msgs.values())  # noqa: E731
    assert bodies(site.standby, "alice") == bodies(site.primary, "alice")
    assert len(bodies(site.standby, "alice")) == 13
    assert bodies(site.standby, "carol") == []

    result = site.cli("status", "alice")
    assert result.returncode == 0, result.stderr
    assert table_row(result.stdout, "alice")[:4] == ["alice", "primary", "yes", "replicating"]
    assert table_row(result.stdout, "Lists/dev")[:3] == ["Lists/dev", "1", "0"]  # the folder table


def test_unprotect(site):
    assert site.cli("protect", "carol").returncode == 0
    assert site.statuses()["carol"]["protected"] is True
    result = site.cli("unprotect", "carol")
    assert result.returncode == 0, result.stderr
    assert table_row(result.stdout, "carol")[:4] == ["carol", "primary", "no", "idle"]
    assert site.statuses()["carol"]["protected"] is False


def test_protecting_a_server_that_is_down_shows_its_error(site):
    result = site.cli("protect", "--all", "--server", "branch")
    assert result.returncode == 0, result.stderr
    assert table_row(result.stdout, "erin")[:3] == ["erin", "branch", "yes"]
    erin = eventually(lambda: (m := site.statuses()["erin"])["error"] and m)
    assert erin["phase"] == "error" and "memory server is down" in erin["error"]

    result = site.cli("status")
    row = table_row(result.stdout, "erin")
    assert row[:4] == ["erin", "branch", "yes", "error"]
    assert "ServerUnavailable: memory server is down" in row[-1]
    assert table_row(result.stdout, "alice")[3] == "idle"  # the other server is unaffected

    result = site.cli("protect", "erin", "--server", "branch", "--wait", "--wait-timeout", "1")
    assert result.returncode == 1
    assert "not in sync after 1 s" in result.stdout


def test_wrong_token_exits_1_saying_so(site):
    result = cli("status", "--url", site.url, "--token", "wrong")
    assert result.returncode == 1
    line = one_error_line(result)
    assert site.url in line and "refused the admin token (missing or wrong)" in line


def test_unknown_mailbox_prints_the_api_detail(site):
    result = site.cli("status", "nobody", "--server", "primary")
    assert result.returncode == 1
    assert one_error_line(result) == "mailrepl: error: mailbox 'nobody' is not known on server 'primary' (HTTP 404)"
    result = site.cli("protect", "alice", "nobody", "--server", "primary")
    assert result.returncode == 1
    assert "server 'primary' has no mailbox 'nobody'" in one_error_line(result)
    assert table_row(result.stdout, "alice")[:3] == ["alice", "primary", "yes"]  # done before the refusal
    result = site.cli("protect", "--all", "--server", "nowhere")
    assert result.returncode == 1
    assert "unknown server 'nowhere'" in one_error_line(result)


def test_status_watch_redraws_until_interrupted(site):
    proc = subprocess.Popen([sys.executable, "-m", "mailrepl", "status", "--watch", "0.2", "--url", site.url,
                             "--token", TOKEN], cwd=REPO, env=_env(None), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        # interrupt once it is polling the API (a loaded machine may take seconds to start it)
        port = int(site.url.rsplit(":", 1)[1].split("/")[0])
        eventually(lambda: proc.poll() is not None or connected_to(proc.pid, port), timeout=60)
        time.sleep(1.0)  # a few redraws
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert table_row(out, "alice")[:2] == ["alice", "primary"]


def test_admin_commands_reach_the_gateway_whose_config_is_given(site):
    assert site.cli("protect", "alice", "--wait", "--wait-timeout", "60").returncode == 0
    from_source = cli("status", "--json", "--config", str(site.source_conf))
    assert from_source.returncode == 0, from_source.stderr
    from_recovery = cli("status", "--json", "--config", str(site.recovery_conf))
    assert from_recovery.returncode == 0, from_recovery.stderr
    assert "unknown key" not in from_recovery.stderr
    with httpx.Client(base_url=site.recovery_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as c:
        expected = c.get("/api/v1/mailboxes").raise_for_status().json()
    recovery_view = json.loads(from_recovery.stdout)
    assert "alice" in {m["address"] for m in recovery_view["mailboxes"]}
    assert sorted(m["address"] for m in recovery_view["mailboxes"]) == sorted(m["address"] for m in expected["mailboxes"])
    assert json.loads(from_source.stdout) != recovery_view  # two gateways, two views
    # a file that is neither gateway's config: the error of the expected role, naming the key
    bad = site.recovery_conf.parent / "bad.toml"
    bad.write_text(site.recovery_conf.read_text().replace("[gateway]", "[gateway]\nnot_a_key = 1", 1))
    bad.chmod(0o600)
    refused = cli("status", "--config", str(bad))
    assert refused.returncode == 2 and "not_a_key" in refused.stderr
    cutover_with_source = cli("cutover", "alice", "--config", str(site.source_conf))
    assert cutover_with_source.returncode == 2


def test_cutover_and_failback_commands(site):
    assert site.cli("protect", "alice", "--wait", "--wait-timeout", "60").returncode == 0
    rec = ("--url", site.recovery_url, "--token", TOKEN)
    result = cli("cutover", "alice", *rec)
    assert result.returncode == 0, result.stderr
    assert table_row(result.stdout, "alice")[:4] == ["alice", "primary", "active-at-dr", "ok"]
    site.standby.deliver("alice", b"Subject: at dr\r\n\r\nwritten at DR\r\n")
    refused = cli("cutover", "nobody", *rec)
    assert refused.returncode == 1 and "no replicated mailbox 'nobody'" in refused.stderr
    result = cli("failback", "alice", "--confirm", "--wait", "--wait-timeout", "60", *rec)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 mailboxes back at the primary, replicating" in result.stdout
    assert any(b"written at DR" in m.body for m in site.primary.box("alice")["INBOX"].msgs.values())
    again = cli("failback", "alice", *rec)  # replicating: nothing to fail back
    assert again.returncode == 1 and "cut over first" in again.stderr
