"""Wake-ups from EWS streaming notifications, for ``EwsSession.wait_for_change``.

A background thread subscribes to all folders of the mailbox (``Subscribe`` with a
``StreamingSubscriptionRequest``, ``SubscribeToAllFolders``) and keeps a ``GetStreamingEvents``
request open, reconnecting whenever the server closes it. Any item or folder event sets a flag
that ``wait_for_change`` waits on. Notifications are hints only: capture always re-reads the
folders with SyncFolderItems, so a lost event costs at most one poll interval. When the
subscription fails (no such subscription, the server refuses streaming), the thread ends and
the next ``wait_for_change`` starts a new one after a pause.
"""
from __future__ import annotations

import logging
import threading
import time

from exchangelib import errors as ex
from exchangelib.services import GetStreamingEvents, SubscribeToStreaming, Unsubscribe

__all__ = ["StreamWatcher", "STREAM_MINUTES", "EVENT_TYPES"]

log = logging.getLogger("mailrepl.ews")

STREAM_MINUTES = 10  # ConnectionTimeout of each GetStreamingEvents request (EWS allows 1..30)
EVENT_TYPES = ("CopiedEvent", "CreatedEvent", "DeletedEvent", "ModifiedEvent", "MovedEvent", "NewMailEvent")
_RESTART_PAUSE = 5.0


class StreamWatcher:
    def __init__(self, account, name: str) -> None:
        self.account, self.name = account, name
        self.changed = threading.Event()
        self.stopping = threading.Event()
        self.failed_at = 0.0
        self._thread: threading.Thread | None = None
        self._svc: GetStreamingEvents | None = None
        self._sid: str | None = None

    def ensure_running(self) -> bool:
        """Start the thread if it is not running (and did not just fail); True if it runs."""
        if self._thread is not None and self._thread.is_alive():
            return True
        if time.monotonic() - self.failed_at < _RESTART_PAUSE:
            return False
        self._thread = threading.Thread(target=self._run, name=f"ews-stream-{self.name}", daemon=True)
        self._thread.start()
        return True

    def _run(self) -> None:
        try:
            self._sid = list(SubscribeToStreaming(account=self.account).call(folders=None, event_types=EVENT_TYPES))[0]
            if isinstance(self._sid, Exception):
                raise self._sid
            while not self.stopping.is_set():
                self._svc = GetStreamingEvents(account=self.account)
                for note in self._svc.call(subscription_ids=[self._sid], connection_timeout=STREAM_MINUTES):
                    if isinstance(note, Exception):
                        raise note
                    if any(type(e).__name__ != "StatusEvent" for e in note.events or ()):
                        self.changed.set()
                    if self.stopping.is_set():
                        break
        except (ex.EWSError, OSError, ValueError) as exc:
            if not self.stopping.is_set():
                log.info("%s: streaming notifications stopped (%s: %s); polling goes on", self.name,
                         type(exc).__name__, exc)
                self.failed_at = time.monotonic()
                self.changed.set()  # something may have been missed: let capture look
        except Exception:  # a watcher thread must never take anything down
            log.exception("%s: streaming notifications failed", self.name)
            self.failed_at = time.monotonic()

    def stop(self) -> None:
        self.stopping.set()
        svc, sid = self._svc, self._sid
        if svc is not None:
            try:
                svc.stop_streaming()
            except Exception:  # noqa: BLE001 (closing a stream that is already gone)
                pass
        if sid is not None:
            try:
                list(Unsubscribe(account=self.account).call(subscription_id=sid))
            except Exception:  # noqa: BLE001 (the subscription expires on its own)
                pass
