"""Loopback ports and readiness probes for servers started by the tests."""
from __future__ import annotations

import itertools
import os
import random
import socket
import time
from pathlib import Path

__all__ = ["eventually", "free_port", "listens_on", "wait_for_greeting"]

# Ports handed to servers the tests start come from below the kernel's ephemeral range (where
# outgoing connections take their local ports), one slice per pytest-xdist worker, so that two
# workers never hand out the same port and no client connection can take it in between.
PORT_LOW, PORT_HIGH = 20000, 32000


def _slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    count = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), index + 1)
    width = (PORT_HIGH - PORT_LOW) // count
    return range(PORT_LOW + index * width, PORT_LOW + (index + 1) * width)


_PORTS = _slice()
_NEXT = itertools.count(random.randrange(len(_PORTS)))


def free_port() -> int:
    """A TCP port on 127.0.0.1, free a moment ago, from this worker's slice; each call a new one."""
    for _ in range(len(_PORTS)):
        port = _PORTS[next(_NEXT) % len(_PORTS)]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PORTS.start}-{_PORTS.stop - 1}")


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself holds a TCP socket listening on ``port`` (in its own network
    namespace): an answer on the port may otherwise come from another test's server."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            return False
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    if not inodes:
        return False
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def wait_for_greeting(port: int, prefix: bytes, timeout: float, host: str = "127.0.0.1") -> bool:
    """Poll until a fresh connection to ``port`` is greeted with a line starting with ``prefix``.

    Probing the greeting rather than the open port matters: Dovecot's master listens before its
    login processes are ready, and a connect that succeeds too early says nothing about service.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.settimeout(2)
                if s.makefile("rb").readline().startswith(prefix):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def eventually(pred, timeout: float = 60.0, what: str = ""):
    """Poll ``pred`` until it answers something true (returned), or fail after ``timeout`` s
    naming ``what`` and the last answer."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out: {what} (last: {last!r})")
