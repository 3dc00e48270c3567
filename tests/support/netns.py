"""Network namespaces for a two-site test rig: a namespace joined to the root one by a veth pair.

Everything is named with ``PREFIX`` so that what a killed run left behind can be found and
removed by the next one. The link's root end carries an alias with the owning process id; a
namespace's name holds it too. Addresses come from 10.213.0.0/16, one /30 per link (index
``0..16383``): the root end is ``.1``, the namespace end ``.2``; an ``unreachable`` route for the
/30 (metric 4096) stays in the root namespace for the rig's lifetime, so that with the link down
nothing to the namespace's address can leave another way.

Link impairments, each reversible: loss by an nft table inside the namespace (``numgen random``,
both directions, counted), rate by ``tbf`` on both ends, partition by taking both ends down.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PREFIX", "Link", "NetnsUnavailable", "cleanup_stale", "create_link", "leftovers", "netns_missing_reason",
           "socket_in_netns"]

PREFIX = "mrrig"
NETWORK = (10, 213)
MAX_LINKS = 16384
ALIAS = "mailrepl-rig pid="
LOSS_TABLE = "mailrepl_rig_loss"
_NETNS = re.compile(rf"^{PREFIX}-(\d+)-(\d+)$")
_LINK = re.compile(rf"^{PREFIX}(\d+)a$")
CLONE_NEWNET = 0x40000000


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, or ip/nft/tc missing)."""


def netns_missing_reason() -> str | None:
    """Why no rig can be built on this machine, or None if one can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [b for b in ("ip", "nft", "tc") if _binary(b) is None]
    if missing:
        return f"{', '.join(missing)} not found: install Debian's iproute2 and nftables"
    return None


def _binary(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in ("/usr/sbin", "/sbin") if os.access(f"{d}/{name}", os.X_OK)),
                                      None)


def run(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    """Run a command (``ip``, ``nft``, ``tc`` resolved in sbin too); raise with its stderr on failure."""
    cmd = [_binary(args[0]) or args[0], *args[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _addresses(index: int) -> tuple[str, str, str]:
    """(root address, namespace address, /30 network) of link ``index``."""
    base = index * 4
    third, fourth = divmod(base, 256)
    net = f"{NETWORK[0]}.{NETWORK[1]}.{third}"
    return f"{net}.{fourth + 1}", f"{net}.{fourth + 2}", f"{net}.{fourth}/30"


def _links() -> dict[str, str]:
    """Root-namespace links of the rig: name -> alias (empty when none)."""
    out = run("ip", "-j", "link", "show").stdout
    return {item["ifname"]: item.get("ifalias", "") for item in json.loads(out or "[]")
            if _LINK.match(item["ifname"])}


def _namespaces() -> list[str]:
    out = run("ip", "-j", "netns", "list").stdout
    return [item["name"] for item in json.loads(out or "[]") if _NETNS.match(item["name"])]


def _unreachable_routes() -> list[str]:
    out = run("ip", "-j", "route", "show", "type", "unreachable").stdout
    prefix = f"{NETWORK[0]}.{NETWORK[1]}."
    return [item["dst"] for item in json.loads(out or "[]") if str(item.get("dst", "")).startswith(prefix)]


def leftovers() -> list[str]:
    """Every namespace, link and route of a rig that exists now (for teardown checks)."""
    return _namespaces() + list(_links()) + _unreachable_routes()


def _kill_namespace(name: str) -> None:
    pids = run("ip", "netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass
    run("ip", "netns", "del", name, check=False)


def cleanup_stale() -> list[str]:
    """Remove namespaces, links and routes whose owning process is gone; returns what was removed."""
    removed = []
    for name in _namespaces():
        owner = int(_NETNS.match(name).group(1))
        if not _pid_alive(owner):
            _kill_namespace(name)
            removed.append(name)
    for link, alias in _links().items():
        owner = alias[len(ALIAS):] if alias.startswith(ALIAS) else ""
        if not owner.isdigit() or not _pid_alive(int(owner)):
            run("ip", "link", "del", link, check=False)
            removed.append(link)
    live = {_addresses(int(_LINK.match(link).group(1)))[2] for link in _links()}
    for dst in _unreachable_routes():
        if dst not in live:
            run("ip", "route", "del", "unreachable", dst, check=False)
            removed.append(f"unreachable {dst}")
    return removed


@dataclass
class Link:
    """One namespace joined to the root namespace by a veth pair, with its impairments."""

    index: int
    netns: str
    root_dev: str
    ns_dev: str
    root_addr: str
    ns_addr: str
    network: str
    partitioned: bool = False

    def ns(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        """Run a command inside the namespace."""
        return run("ip", "netns", "exec", self.netns, *args, check=check, input=input)

    @property
    def prefix(self) -> list[str]:
        """Command prefix that runs a program inside the namespace."""
        return [_binary("ip") or "ip", "netns", "exec", self.netns]

    # --- loss ------------------------------------------------------------------------------

    def set_loss(self, percent: float) -> None:
        """Drop ``percent`` % of packets each way on the namespace's end (0 removes the table)."""
        if not 0.0 <= percent <= 100.0:
            raise ValueError(f"loss must be 0..100 %, not {percent}")
        self.ns("nft", "delete", "table", "inet", LOSS_TABLE, check=False)
        if percent == 0:
            return
        threshold = round(percent * 100)  # in 1/10000
        dev = self.ns_dev
        self.ns("nft", "-f", "-", input=f"""
table inet {LOSS_TABLE} {{
  chain ingress_loss {{ type filter hook input priority 0; policy accept;
    iifname "{dev}" numgen random mod 10000 < {threshold} counter drop; }}
  chain egress_loss {{ type filter hook output priority 0; policy accept;
    oifname "{dev}" numgen random mod 10000 < {threshold} counter drop; }}
}}
""")

    def dropped(self) -> dict[str, int]:
        """Packets and bytes dropped by the loss rules so far (zeros without a loss table)."""
        proc = self.ns("nft", "-j", "list", "table", "inet", LOSS_TABLE, check=False)
        total = {"packets": 0, "bytes": 0}
        if proc.returncode != 0:
            return total
        for item in json.loads(proc.stdout).get("nftables", []):
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    total["packets"] += expr["counter"]["packets"]
                    total["bytes"] += expr["counter"]["bytes"]
        return total

    # --- rate ------------------------------------------------------------------------------

    def set_rate(self, mbit: float | None) -> None:
        """Limit both ends to ``mbit`` Mbit/s with tbf (None or 0 removes the limit)."""
        if mbit:
            if mbit < 0.1:
                raise ValueError(f"rate below 0.1 Mbit/s: {mbit}")
            spec = ["root", "tbf", "rate", f"{int(mbit * 1000)}kbit", "burst", "32kb", "latency", "400ms"]
            run("tc", "qdisc", "replace", "dev", self.root_dev, *spec)
            self.ns("tc", "qdisc", "replace", "dev", self.ns_dev, *spec)
        else:
            run("tc", "qdisc", "del", "dev", self.root_dev, "root", check=False)
            self.ns("tc", "qdisc", "del", "dev", self.ns_dev, "root", check=False)

    # --- partition -------------------------------------------------------------------------

    def partition(self) -> None:
        """Take both ends down; the root namespace's unreachable route answers at once."""
        run("ip", "link", "set", self.root_dev, "down")
        run("ip", "-n", self.netns, "link", "set", self.ns_dev, "down")
        self.partitioned = True

    def heal(self) -> None:
        """Bring both ends up again, with their addresses and routes."""
        run("ip", "-n", self.netns, "link", "set", self.ns_dev, "up")
        run("ip", "link", "set", self.root_dev, "up")
        self._ensure_addresses()
        self.partitioned = False

    def _ensure_addresses(self) -> None:
        for cmd, dev, addr in ((["ip"], self.root_dev, self.root_addr),
                               (["ip", "-n", self.netns], self.ns_dev, self.ns_addr)):
            shown = run(*cmd, "-j", "addr", "show", "dev", dev).stdout
            if f'"{addr}"' not in shown:
                run(*cmd, "addr", "replace", f"{addr}/30", "dev", dev)

    # --- counters --------------------------------------------------------------------------

    def bytes_crossed(self) -> dict[str, int]:
        """Bytes the root end sent to and received from the namespace (kernel interface counters)."""
        stats = Path("/sys/class/net") / self.root_dev / "statistics"
        return {"to_ns": int((stats / "tx_bytes").read_text()), "from_ns": int((stats / "rx_bytes").read_text())}

    def clear(self) -> None:
        """Remove every impairment: loss, rate, partition."""
        self.set_loss(0)
        self.set_rate(None)
        if self.partitioned:
            self.heal()

    def destroy(self) -> None:
        """Kill what runs in the namespace, delete it (the veth pair goes with it) and the route."""
        _kill_namespace(self.netns)
        run("ip", "link", "del", self.root_dev, check=False)
        run("ip", "route", "del", "unreachable", self.network, check=False)


def create_link() -> Link:
    """A new namespace and veth pair at the first free index (stale ones of dead runs removed first)."""
    reason = netns_missing_reason()
    if reason:
        raise NetnsUnavailable(reason)
    cleanup_stale()
    pid = os.getpid()
    taken = {int(_NETNS.match(n).group(2)) for n in _namespaces()} | {int(_LINK.match(n).group(1)) for n in _links()}
    for index in range(MAX_LINKS):
        if index in taken:
            continue
        root_dev, ns_dev = f"{PREFIX}{index}a", f"{PREFIX}{index}b"
        # creating the root end is the lock: a parallel rig that took this index makes it fail
        if run("ip", "link", "add", root_dev, "type", "veth", "peer", "name", ns_dev, check=False).returncode != 0:
            continue
        root_addr, ns_addr, network = _addresses(index)
        link = Link(index, f"{PREFIX}-{pid}-{index}", root_dev, ns_dev, root_addr, ns_addr, network)
        try:
            run("ip", "link", "set", root_dev, "alias", f"{ALIAS}{pid}")
            run("ip", "netns", "add", link.netns)
            run("ip", "link", "set", ns_dev, "netns", link.netns)
            run("ip", "addr", "add", f"{root_addr}/30", "dev", root_dev)
            run("ip", "link", "set", root_dev, "up")
            run("ip", "-n", link.netns, "addr", "add", f"{ns_addr}/30", "dev", ns_dev)
            run("ip", "-n", link.netns, "link", "set", ns_dev, "up")
            run("ip", "-n", link.netns, "link", "set", "lo", "up")
            run("ip", "route", "add", "unreachable", network, "metric", "4096")
        except Exception:
            link.destroy()
            raise
        return link
    raise RuntimeError(f"no free rig link index below {MAX_LINKS}")


_libc = ctypes.CDLL(None, use_errno=True)


def socket_in_netns(netns: str, address: tuple[str, int], timeout: float = 10.0) -> socket.socket:
    """A TCP connection made from inside ``netns`` (e.g. to its own loopback).

    The namespace is entered by a short-lived thread (setns changes only the calling thread);
    the socket stays in that namespace after the thread ends, so it does not cross the link and
    works while the link is partitioned.
    """
    result: dict[str, object] = {}

    def connect() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result["socket"] = socket.create_connection(address, timeout=timeout)
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    worker = threading.Thread(target=connect, name=f"connect-in-{netns}")
    worker.start()
    worker.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["socket"]  # type: ignore[return-value]
