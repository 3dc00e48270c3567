"""One background thread and the event that stops it: the scaffolding the gateways' loops share
(shipper, failback puller, failover monitor, blob garbage collection). Each loop keeps its own
policy (back-off, wake-ups, interval) and waits on ``stopping``."""
from __future__ import annotations

import threading
from typing import Callable

__all__ = ["Background"]


class Background:
    def __init__(self, name: str, run: Callable[[], None]) -> None:
        self.name = name
        self.run = run
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
