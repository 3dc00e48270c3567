"""Console sessions, kept in the gateway's memory (a restart signs everybody out).

A session holds the API token it was opened with (never sent back to the browser: the cookie
carries a random session id only), the principal's name and role at sign-in, and a CSRF token
the pages send with every state-changing request. Sessions end after ``idle_seconds`` without a
request or ``max_seconds`` in all; at most ``max_sessions`` exist (the least recently used goes).
"""
from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["Session", "SessionStore", "DEFAULT_IDLE_SECONDS", "DEFAULT_MAX_SECONDS", "DEFAULT_MAX_SESSIONS"]

DEFAULT_IDLE_SECONDS = 8 * 3600.0
DEFAULT_MAX_SECONDS = 24 * 3600.0
DEFAULT_MAX_SESSIONS = 1000


@dataclass
class Session:
    id: str
    token: str = field(repr=False)
    name: str
    role: str
    csrf: str = field(repr=False)
    created: float
    seen: float

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(presented.encode("utf-8", "replace"), self.csrf.encode())


class SessionStore:
    def __init__(self, *, idle_seconds: float = DEFAULT_IDLE_SECONDS, max_seconds: float = DEFAULT_MAX_SECONDS,
                 max_sessions: int = DEFAULT_MAX_SESSIONS, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle, self.max_age, self.max_sessions, self.clock = idle_seconds, max_seconds, max_sessions, clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def create(self, token: str, name: str, role: str) -> Session:
        now = self.clock()
        s = Session(id=secrets.token_urlsafe(32), token=token, name=name, role=role,
                    csrf=secrets.token_urlsafe(32), created=now, seen=now)
        with self._lock:
            self._sessions[s.id] = s
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return s

    def get(self, sid: str | None) -> Session | None:
        if not sid or len(sid) > 128:
            return None
        now = self.clock()
        with self._lock:
            s = self._sessions.get(sid)
            if s is None:
                return None
            if now - s.seen > self.idle or now - s.created > self.max_age:
                del self._sessions[sid]
                return None
            s.seen = now
            self._sessions.move_to_end(sid)
            return s

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._sessions.pop(sid or "", None)

    def __len__(self) -> int:
        return len(self._sessions)
