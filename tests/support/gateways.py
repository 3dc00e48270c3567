"""Run a source and a recovery gateway as real processes (`mailrepl ... run --config`) for e2e tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.net import free_port, listens_on

ADMIN_TOKEN = "admin-secret-Wd4Fg7Hj0Kl3Zx6Cv9Bn2M"
INGEST_TOKEN = "ingest-secret-Qp8Ow5Ie2Ur9Yt6Tr3Ew0Q"
REDIRECT_KEY = "redirect-secret-Jk2Lm5Nb8Vc1Xz4As7Df0G"


def _server_toml(name: str, server, users, section: str = "servers") -> str:
    if hasattr(server, "endpoint"):  # the EWS protocol-shape responder
        return f"""
[[{section}]]
name = "{name}"
kind = "ews"
endpoint = "{server.endpoint}"
service_user = "{server.user}"
service_password = "{server.password}"
retry_max_wait = 5
users = [{", ".join(f'"{u}"' for u in users)}]
"""
    return f"""
[[{section}]]
name = "{name}"
kind = "imap"
host = "127.0.0.1"
port = {server.imap_port}
tls = "none"
service_user = "{server.master_user}"
service_password = "{server.master_password}"
auth = "sasl-plain"
users = [{", ".join(f'"{u}"' for u in users)}]
"""


class GatewayProcess:
    """``prefix`` runs the command under another one (``ip netns exec NAME``); ``host`` is the
    address its admin API is reached at from the test side."""

    def __init__(self, role: str, config: Path, port: int, log: Path, *, prefix: list[str] | None = None,
                 host: str = "127.0.0.1") -> None:
        self.role, self.config, self.port, self.log = role, config, port, log
        self.prefix = list(prefix or [])
        self.proc: subprocess.Popen | None = None
        self.url = f"http://{host}:{port}"

    def start(self, wait: float = 30.0) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "mailrepl", self.role, "run", "--config", str(self.config)],
            stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parents[2],
            start_new_session=True,
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.role} gateway exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                # the answer must come from this process, not from another test's gateway that
                # holds the port (this one then fails to bind and exits)
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200 and listens_on(self.proc.pid, self.port):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.role} gateway did not come up:\n{self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)


class GatewayPair:
    """A source gateway watching ``primary`` and a recovery gateway replaying into ``standby``."""

    def __init__(self, tmp: Path, primary, standby, *, users, source_state: str, recovery_state: str,
                 poll_interval: float = 0.5, fetch_chunk: int = 200, part_threshold: int | None = None,
                 recovery_extra: str = "", with_primaries: bool = False, source_gateway_extra: str = "",
                 recovery_gateway_extra: str = "", recovery_prefix: list[str] | None = None,
                 recovery_host: str = "127.0.0.1", peer_url: str | None = None,
                 source_workers: int = 4, recovery_workers: int = 4, peer_timeout: float | None = None,
                 server_extra: str = "", source_extra: str = "", source_port: int | None = None) -> None:
        """``recovery_prefix``/``recovery_host``: run the recovery gateway under a command prefix
        (a network namespace) listening on that address; ``peer_url``: where the source gateway
        sends to (default: the recovery gateway itself); ``server_extra``: lines added to both
        gateways' mail server tables (``max_connections = 6``); ``source_extra``: tables added to the
        source gateway's config (``[link]``)."""
        self.tmp = tmp
        sport, rport = source_port or free_port(), free_port()
        peer_url = peer_url or f"http://{recovery_host}:{rport}"
        src = tmp / "source.toml"
        src.write_text(
            f"""
[gateway]
id = "hq"
state_url = "{source_state}"
listen = "127.0.0.1:{sport}"
admin_token = "{ADMIN_TOKEN}"
plaintext = true
poll_interval = {poll_interval}
workers = {source_workers}
fetch_chunk = {fetch_chunk}
{source_gateway_extra}
[peer]
url = "{peer_url}"
token = "{INGEST_TOKEN}"
retry_initial = 0.2
retry_max = 2.0
"""
            + (f"part_threshold = {part_threshold}\n" if part_threshold is not None else "")
            + (f"timeout = {peer_timeout:g}\n" if peer_timeout is not None else "")
            + _server_toml("primary", primary, users) + server_extra + "\n"
            + source_extra
        )
        rec = tmp / "recovery.toml"
        rec.write_text(
            f"""
[gateway]
id = "dr"
state_url = "{recovery_state}"
listen = "{recovery_host}:{rport}"
admin_token = "{ADMIN_TOKEN}"
plaintext = true
workers = {recovery_workers}
blob_dir = "{tmp}/blobs"
{recovery_gateway_extra}

[[sources]]
id = "hq"
token = "{INGEST_TOKEN}"
servers = ["primary"]
"""
            + _server_toml("standby", standby, users) + server_extra + "\n"
            + (_server_toml("primary", primary, users, "primaries") if with_primaries else "")
            + recovery_extra
            # the login redirect needs a key; tests with their own [failover] table give theirs
            + ("" if "[failover]" in recovery_extra else f'\n[failover]\nredirect_key = "{REDIRECT_KEY}"\n')
        )
        src.chmod(0o600)  # they hold secrets
        rec.chmod(0o600)
        self.source = GatewayProcess("source", src, sport, tmp / "source.log")
        self.recovery = GatewayProcess("recovery", rec, rport, tmp / "recovery.log", prefix=recovery_prefix,
                                       host=recovery_host)

    def start(self) -> None:
        self.recovery.start()
        self.source.start()

    def stop(self) -> None:
        self.source.stop()
        self.recovery.stop()

    def preflight(self, server: str = "primary", address: str | None = None) -> dict:
        """Run the source gateway's pre-flight check of ``server`` now (it otherwise runs at the
        first protection): benchmarks that time a seed do it at start-up, untimed."""
        with self.source.api() as c:
            r = c.post("/api/v1/servers/check", json={"server": server, "address": address})
            assert r.status_code == 200, r.text
            return r.json()

    def protect(self, *addresses: str) -> None:
        with self.source.api() as c:
            for a in addresses:
                r = c.put(f"/api/v1/mailboxes/{a}/protection", json={"enabled": True})
                assert r.status_code == 200, r.text

    def status(self) -> dict[str, dict]:
        with self.source.api() as c:
            r = c.get("/api/v1/mailboxes")
            r.raise_for_status()
            return {m["address"]: m for m in r.json()["mailboxes"]}

    def wait_synced(self, addresses, timeout: float = 120.0, settle: float = 1.5) -> dict[str, dict]:
        """Wait until every address is fully captured, shipped and applied, and stays so for ``settle`` s."""
        deadline = time.monotonic() + timeout
        stable_since = None
        last = None
        while time.monotonic() < deadline:
            try:
                st = self.status()
            except httpx.HTTPError:
                st = {}
            ok = all(
                a in st and st[a]["phase"] == "replicating" and st[a]["copy_queue"] == 0
                and st[a]["replay_queue"] == 0 and st[a]["last_applied_seq"] == st[a]["last_captured_seq"]
                for a in addresses
            )
            snap = {a: st.get(a, {}).get("last_captured_seq") for a in addresses}
            if ok and snap == last:
                stable_since = stable_since or time.monotonic()
                if time.monotonic() - stable_since >= settle:
                    return st
            else:
                stable_since = None
            last = snap
            time.sleep(0.2)
        raise AssertionError(
            f"not in sync after {timeout}s: {self.status()}\n--- source log ---\n"
            f"{self.source.log.read_text()[-4000:]}\n--- recovery log ---\n{self.recovery.log.read_text()[-4000:]}"
        )

    def wire_bytes(self) -> float:
        r = httpx.get(self.source.url + "/metrics", timeout=10, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        for line in r.text.splitlines():
            if line.startswith("mailrepl_source_wire_bytes "):
                return float(line.split()[1])
        raise AssertionError("no mailrepl_source_wire_bytes metric")

    def collect_garbage(self, grace_seconds: float = 0.0) -> dict:
        """Run the recovery gateway's garbage collection of bodies and parts now."""
        with self.recovery.api() as c:
            r = c.post("/api/v1/gc", params={"grace_seconds": grace_seconds})
            r.raise_for_status()
            return r.json()

    def blob_files(self) -> dict[str, int]:
        """Parts in the recovery gateway's blob store: key -> size."""
        root = self.tmp / "blobs"
        return {p.name: p.stat().st_size for p in root.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*") if p.is_file()}
