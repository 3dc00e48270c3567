"""A two-site rig: the primary site in the root network namespace, the DR site in its own.

::

    root namespace (primary site)                       namespace mrrig-PID-N (DR site)
    primary Dovecot (127.0.0.1)                         standby Dovecot (127.0.0.1 + .2)
    source gateway (127.0.0.1) ── [delay relay] ── veth 10.213.x.1 ══ 10.213.x.2 ── recovery gateway

The gateways talk only across the veth pair, so the link's impairments hit their traffic: delay
(a userspace relay between the source gateway and the link, since the kernel has no netem),
loss (nft ``numgen random`` in the namespace, both directions), rate (tbf on both ends),
partition (both ends down; an ``unreachable`` route keeps anything from leaking another way).
Every control is reversible at run time; ``clear()`` removes them all. Traffic goes only to
loopback and the rig's own addresses. Teardown removes the namespace, the veth pair, the route,
the relay and every process, also when a test fails; a rig left by a killed run is removed by
the next ``TwoSiteRig`` (by name prefix and owning pid).

Reading the standby: ``rig.standby`` is reached through the link (its ``host`` is the
namespace's address), which a partition cuts, and which loss and delay slow down;
``rig.standby_local`` reaches the same Dovecot on the namespace's loopback, through a socket made
inside the namespace (``socket_in_netns``), relayed to a root loopback port: it carries no
gateway traffic and works during a partition. Use it for checks and for observers.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.support.dovecot import DovecotServer
from tests.support.gateways import ADMIN_TOKEN, GatewayPair
from tests.support.net import free_port
from tests.support.netns import Link, create_link, socket_in_netns

__all__ = ["LocalPort", "TwoSiteRig", "user_names", "write_gateway_configs"]

REPO = Path(__file__).resolve().parents[2]

# a request caught on a link that goes down (a partition, through the delay relay's open
# connection) is given up after this long, not after the product's default of a minute
WAN_PEER_TIMEOUT = 20.0


def user_names(count: int, prefix: str = "user") -> list[str]:
    """``count`` mailbox names that sort in creation order (``user000``, ``user001``, …)."""
    if not 1 <= count <= 10_000:
        raise ValueError(f"1..10000 users, not {count}")
    return [f"{prefix}{i:03d}" for i in range(count)]


def write_gateway_configs(tmp: Path, primary, standby, users: list[str], *, link: Link, peer_url: str | None = None,
                          state: str = "sqlite", poll_interval: float = 0.5, **options) -> GatewayPair:
    """Write both gateways' configs for ``users`` (all protected on one primary and one standby):
    the source gateway in the root namespace, the recovery gateway inside ``link``'s namespace
    listening on its address. Returns the (not yet started) ``GatewayPair``."""
    if state != "sqlite":
        raise ValueError("the rig's gateways keep SQLite state (a PostgreSQL on the root loopback is not "
                         "reachable from the namespace)")
    return GatewayPair(tmp, primary, standby, users=users, source_state=f"sqlite:///{tmp}/source.sqlite",
                       recovery_state=f"sqlite:///{tmp}/recovery.sqlite", poll_interval=poll_interval,
                       recovery_prefix=link.prefix, recovery_host=link.ns_addr, peer_url=peer_url,
                       **{"peer_timeout": WAN_PEER_TIMEOUT, **options})


class LocalPort:
    """A root-loopback port relayed to ``address`` inside a namespace (threads; for test-side reads).

    Has ``host``/``imap_port``/``master_user``/``master_password`` when built for a Dovecot, so
    ``mailcompare.snapshot`` and ``assert_same_mailbox`` take it like a ``DovecotServer``.
    """

    host = "127.0.0.1"

    def __init__(self, netns: str, address: tuple[str, int], server: DovecotServer | None = None) -> None:
        self.netns, self.address = netns, address
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.imap_port = self._listener.getsockname()[1]
        if server is not None:
            self.master_user, self.master_password = server.master_user, server.master_password
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name=f"local-port-{self.port}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket_in_netns(self.netns, self.address)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_copy, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._listener.close()


def _copy(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            src.close()


class DelayRelay:
    """The delay relay as its own process (``tests/support/delay_relay.py``), steered by stdin.

    ``listen_port`` 0 lets the relay pick a free port (``port`` holds the one it took)."""

    def __init__(self, listen_port: int, target: tuple[str, int], log: Path, *, listen_host: str = "127.0.0.1") -> None:
        self.host, self.port = listen_host, listen_port
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.delay_relay", f"{listen_host}:{listen_port}", f"{target[0]}:{target[1]}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, cwd=REPO, text=True, bufsize=1)
        ready = self.proc.stdout.readline().split()
        if ready[:1] != ["ready"] or len(ready) != 2:
            self.close()
            raise RuntimeError(f"delay relay did not start: {ready!r}\n{log.read_text()[-2000:]}")
        self.port = int(ready[1])

    def command(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer or answer.startswith("error"):
            raise RuntimeError(f"delay relay refused {line!r}: {answer or 'no answer'}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class TwoSiteRig:
    """Primary Dovecot + source gateway here, standby Dovecot + recovery gateway in a namespace.

    ``users``: names or a count (``user_names``). ``relay``: put the delay relay between the
    source gateway and the link (needed for ``set_delay``; with delay 0 it only forwards).
    ``primary_extra``: lines appended to the primary Dovecot's configuration (plugins).
    Nothing is protected on start: call ``protect_all()`` or ``pair.protect(...)``.
    """

    def __init__(self, tmp: Path, users: list[str] | int, *, relay: bool = True, poll_interval: float = 0.5,
                 mail_fsync: str = "never", primary_extra: str = "", **gateway_options) -> None:
        self.tmp = Path(tmp)
        self.users = user_names(users) if isinstance(users, int) else list(users)
        self._relay_wanted, self._poll_interval, self._fsync = relay, poll_interval, mail_fsync
        self._gateway_options = gateway_options
        self._primary_extra = primary_extra
        self.link: Link | None = None
        self.relay: DelayRelay | None = None
        self.primary: DovecotServer | None = None
        self.standby: DovecotServer | None = None
        self.standby_local: LocalPort | None = None
        self.pair: GatewayPair | None = None

    # --- lifetime --------------------------------------------------------------------------

    def __enter__(self) -> TwoSiteRig:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.link = create_link()
        self.primary = DovecotServer("primary", self.users, mail_fsync=self._fsync, extra_config=self._primary_extra)
        self.primary.start()
        self.standby = DovecotServer("standby", self.users, mail_fsync=self._fsync, netns=self.link.netns,
                                     host=self.link.ns_addr)
        self.standby.start()
        self.standby_local = LocalPort(self.link.netns, ("127.0.0.1", self.standby.imap_port), self.standby)
        relay_port = free_port() if self._relay_wanted else None
        peer_url = f"http://127.0.0.1:{relay_port}" if relay_port else None
        self.pair = write_gateway_configs(self.tmp, self.primary, self.standby, self.users, link=self.link,
                                          peer_url=peer_url, poll_interval=self._poll_interval,
                                          **self._gateway_options)
        if relay_port:
            self.relay = DelayRelay(relay_port, (self.link.ns_addr, self.pair.recovery.port), self.tmp / "relay.log")
        self.pair.start()

    def close(self) -> None:
        """Stop everything and remove the namespace, link and route; never raises for what is gone."""
        errors = []
        steps = [
            lambda: self.pair and self.pair.stop(),
            lambda: self.relay and self.relay.close(),
            lambda: self.standby_local and self.standby_local.close(),
            lambda: self.standby and self.standby.cleanup(),
            lambda: self.primary and self.primary.cleanup(),
            lambda: self.link and self.link.destroy(),
        ]
        for step in steps:
            try:
                step()
            except Exception as exc:  # keep tearing down the rest
                errors.append(repr(exc))
        self.pair = self.relay = self.standby_local = self.standby = self.primary = self.link = None
        if errors:
            raise RuntimeError("two-site rig teardown: " + "; ".join(errors))

    # --- controls --------------------------------------------------------------------------

    def set_delay(self, mean_ms: float, jitter_ms: float = 0.0) -> None:
        """One-way delay of the gateway link (each direction; a round trip gains ~2 × mean)."""
        if self.relay is None:
            raise RuntimeError("this rig was built without the delay relay (relay=False)")
        self.relay.command(f"delay {mean_ms:g} {jitter_ms:g}")

    def set_loss(self, percent: float) -> None:
        self.link.set_loss(percent)

    def set_rate(self, mbit: float | None) -> None:
        self.link.set_rate(mbit)

    def partition(self) -> None:
        self.link.partition()

    def heal(self) -> None:
        self.link.heal()

    def clear(self) -> None:
        """No delay, no loss, no rate limit, no partition."""
        if self.relay is not None:
            self.relay.command("delay 0 0")
        self.link.clear()

    # --- what tests read -------------------------------------------------------------------

    @property
    def source_url(self) -> str:
        return self.pair.source.url

    @property
    def recovery_url(self) -> str:
        """The recovery gateway's admin API, across the link (a partition cuts it)."""
        return self.pair.recovery.url

    def bytes_crossed(self) -> dict[str, int]:
        return self.link.bytes_crossed()

    def dropped(self) -> dict[str, int]:
        return self.link.dropped()

    def protect_all(self) -> None:
        """Protect every user of the primary with one request."""
        with httpx.Client(base_url=self.source_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                          timeout=60, trust_env=False) as client:
            r = client.put("/api/v1/servers/primary/protection", json={"enabled": True})
            if r.status_code != 200:
                raise RuntimeError(f"protecting every mailbox failed: {r.status_code} {r.text[:500]}")

    def in_namespace(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run a command inside the DR namespace (e.g. a probe that must not cross the link)."""
        return subprocess.run([*self.link.prefix, *args], capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ))

    def primary_imap_relay(self) -> DelayRelay:
        """A delay relay on the link's root address in front of the primary's IMAP, so that a
        client at the DR site (inside the namespace) reaches the primary across the link, delayed
        like the gateways' traffic (``relay.command("delay MS JITTER")``). The caller closes it."""
        return DelayRelay(0, ("127.0.0.1", self.primary.imap_port), self.tmp / "primary-relay.log",
                          listen_host=self.link.root_addr)

    def peer_request_seconds(self, port: int | None = None, timeout: float = 5.0) -> float:
        """Seconds one ``GET /healthz`` on a new connection takes along the source gateway's path to
        the recovery gateway (through the relay when there is one)."""
        if self.relay is not None and port is None:
            host, port = "127.0.0.1", self.relay.port
        else:
            host, port = self.link.ns_addr, port or self.pair.recovery.port
        start = time.monotonic()
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(b"GET /healthz HTTP/1.0\r\nHost: rig\r\n\r\n")
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        if not answer.startswith(b"HTTP/1.") or b" 200 " not in answer[:16]:
            raise RuntimeError(f"/healthz did not answer 200: {answer[:100]!r}")
        return time.monotonic() - start
