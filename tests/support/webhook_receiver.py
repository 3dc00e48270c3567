"""A webhook receiver for alert tests: a real HTTP server on loopback that records every POST
and can answer 500 to the first attempt of each alert (to see the sender retry)."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["WebhookReceiver", "Delivery"]


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered

    @property
    def json(self):
        return json.loads(self.body)


class WebhookReceiver:
    def __init__(self, *, fail_first: bool = False, always: int | None = None) -> None:
        self.fail_first, self.always = fail_first, always
        self.deliveries: list[Delivery] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(min(length, 1024 * 1024))
                alert_id = self.headers.get("x-mailrepl-alert-id", "")
                with receiver._lock:
                    status = 200
                    if receiver.fail_first and alert_id not in receiver._seen:
                        status = 500
                    if receiver.always is not None:
                        status = receiver.always
                    receiver._seen.add(alert_id)
                    receiver.deliveries.append(Delivery({k.lower(): v for k, v in self.headers.items()}, body, status))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def accepted(self) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.status == 200]

    def wait(self, pred, timeout: float = 30.0, what: str = "") -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [d for d in self.accepted() if pred(d.json)]
            if got:
                return got
            time.sleep(0.1)
        raise AssertionError(f"no webhook delivery for {what} within {timeout}s; got "
                             f"{[d.json for d in self.accepted()]}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
