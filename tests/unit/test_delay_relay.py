"""The rig's delay relay: delays each direction, never reorders a stream, refuses nonsense."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def echo_server():
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()


@pytest.fixture
def relay(echo_server):
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.delay_relay", "127.0.0.1:0",
                             f"127.0.0.1:{echo_server}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=REPO, bufsize=1)
    ready = proc.stdout.readline().split()
    assert ready[0] == "ready", ready

    def command(line: str) -> str:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    yield int(ready[1]), command
    proc.stdin.close()
    proc.wait(10)


def round_trip(port: int, payload: bytes) -> tuple[float, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        start = time.monotonic()
        conn.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = conn.recv(65536)
            assert chunk, "relay closed early"
            got += chunk
        return time.monotonic() - start, got


def median_round_trip(port: int) -> float:
    times = sorted(round_trip(port, b"x")[0] for _ in range(3))
    return times[1]


def fastest_round_trip(port: int, tries: int = 5) -> float:
    return min(round_trip(port, b"x")[0] for _ in range(tries))


def test_delay_applies_to_both_directions_and_can_be_changed(relay):
    # A delay is a lower bound whatever the host's load: 60 ms each way means no round trip
    # under 120 ms (one direction delayed alone would allow 60 ms). A busy host only adds time,
    # so the bounds are on the fastest of several trips, not on differences of two noisy ones.
    port, command = relay
    assert command("delay 60 0") == "ok"
    delayed = fastest_round_trip(port)
    assert delayed >= 0.119, delayed  # 60 ms each way (monotonic clock granularity aside)
    assert command("delay 0 0") == "ok"
    undelayed = fastest_round_trip(port)
    assert undelayed < 0.060, undelayed  # neither direction is held 60 ms any more


def test_jitter_never_reorders_bytes(relay):
    port, command = relay
    assert command("delay 15 15") == "ok"  # each chunk 0..30 ms: reordering would show at once
    payload = b"".join(f"{i:06d}".encode() for i in range(3000))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        for i in range(0, len(payload), 600):  # many small writes, each its own chunk
            conn.sendall(payload[i:i + 600])
            time.sleep(0.001)
        got = b""
        while len(got) < len(payload):
            chunk = conn.recv(65536)
            assert chunk
            got += chunk
    assert got == payload


def test_bad_commands_are_refused_and_change_nothing(relay):
    port, command = relay
    assert command("delay 10 20").startswith("error")  # jitter larger than the mean
    assert command("delay -1 0").startswith("error")
    assert command("delay x 0").startswith("error")
    assert command("drop everything").startswith("error")
    assert command("stats").startswith("connections=")
    assert command("delay 50 0") == "ok"
    assert median_round_trip(port) >= 0.095  # the last good setting holds
    assert command("delay 50 60").startswith("error")
    assert median_round_trip(port) >= 0.095
