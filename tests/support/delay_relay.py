"""A TCP relay that delays every byte by ``delay ± jitter`` milliseconds, in each direction.

The kernel of the test machines has no ``tc netem``; this userspace relay stands in for its
``delay``. Each chunk read from one side is written to the other side once its due time has
come, and a chunk is never due before the chunk read before it, so jitter varies the delay but
never reorders bytes within a TCP stream. Both directions are delayed: a round trip grows by
about ``2 × delay``.

Run as its own process (so that it competes with nothing in the caller's interpreter)::

    python -m tests.support.delay_relay LISTEN_HOST:PORT TARGET_HOST:PORT

and steered through its standard input, one command per line, each answered by one line:

    delay MEAN_MS JITTER_MS   ->  ok
    stats                     ->  connections=N bytes=N

It prints ``ready PORT`` once it listens (PORT 0 in the address picks a free one) and ends when
its standard input closes.
"""
from __future__ import annotations

import asyncio
import random
import sys
import time

__all__ = ["DelayState", "main"]

CHUNK = 65536
MAX_DELAY_MS = 10_000.0


class DelayState:
    """The current delay, shared by every connection; read per chunk, so a change applies at once."""

    def __init__(self) -> None:
        self.mean_ms = 0.0
        self.jitter_ms = 0.0
        self.connections = 0
        self.bytes = 0

    def set(self, mean_ms: float, jitter_ms: float) -> None:
        if not (0.0 <= mean_ms <= MAX_DELAY_MS and 0.0 <= jitter_ms <= mean_ms):
            raise ValueError(f"need 0 <= jitter <= mean <= {MAX_DELAY_MS:g} ms, not {mean_ms:g} ± {jitter_ms:g}")
        self.mean_ms, self.jitter_ms = mean_ms, jitter_ms

    def next_delay(self) -> float:
        """Seconds to hold the next chunk."""
        return (self.mean_ms + random.uniform(-self.jitter_ms, self.jitter_ms)) / 1000.0


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: DelayState) -> None:
    queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()

    async def send() -> None:
        try:
            while True:
                due, data = await queue.get()
                if data is None:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
                state.bytes += len(data)
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass

    sender = asyncio.create_task(send())
    last_due = 0.0
    try:
        while data := await reader.read(CHUNK):
            # never due before the previous chunk: jitter must not reorder the stream
            last_due = max(last_due, time.monotonic() + state.next_delay())
            queue.put_nowait((last_due, data))
    except (ConnectionError, OSError):
        pass
    queue.put_nowait((0.0, None))
    await sender


async def _serve(listen: tuple[str, int], target: tuple[str, int], state: DelayState) -> None:
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(asyncio.open_connection(*target), 10)
        except (OSError, TimeoutError):
            client_writer.close()
            return
        state.connections += 1
        try:
            await asyncio.gather(_pump(client_reader, upstream_writer, state),
                                 _pump(upstream_reader, client_writer, state))
        finally:
            for w in (client_writer, upstream_writer):
                w.close()

    server = await asyncio.start_server(handle, *listen)
    port = server.sockets[0].getsockname()[1]
    print(f"ready {port}", flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    async with server:
        while line := await stdin.readline():
            print(_command(line.decode(errors="replace").split(), state), flush=True)


def _command(words: list[str], state: DelayState) -> str:
    try:
        if words[:1] == ["delay"] and len(words) == 3:
            state.set(float(words[1]), float(words[2]))
            return "ok"
        if words == ["stats"]:
            return f"connections={state.connections} bytes={state.bytes}"
        return f"error unknown command {' '.join(words)[:80]!r}"
    except ValueError as exc:
        return f"error {exc}"


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: delay_relay LISTEN_HOST:PORT TARGET_HOST:PORT", file=sys.stderr)
        return 2
    asyncio.run(_serve(_address(argv[0]), _address(argv[1]), DelayState()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
