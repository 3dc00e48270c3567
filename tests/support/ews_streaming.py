"""Streaming notifications for the EWS protocol-shape responder.

- ``Subscribe`` with ``StreamingSubscriptionRequest`` (``SubscribeToAllFolders`` or FolderIds)
  answers a ``SubscriptionId`` (subscribe-operation; streamingsubscriptionrequest).
- ``Unsubscribe`` drops it (unsubscribe-operation).
- ``GetStreamingEvents`` keeps the HTTP response open (chunked) and writes one SOAP envelope per
  batch of notifications, each ``<m:Notification>`` holding ``CreatedEvent`` / ``ModifiedEvent``
  / ``DeletedEvent`` elements with ``TimeStamp``, ``ItemId`` or ``FolderId`` and
  ``ParentFolderId``; the last envelope says ``<m:ConnectionStatus>Closed</m:ConnectionStatus>``
  (getstreamingevents-operation, notification-ex15websvcsotherref). The responder closes after
  ``ConnectionTimeout`` minutes or ``stream_seconds``, whichever comes first (Exchange may also
  close a stream early; clients reconnect).
"""
from __future__ import annotations

import time

from tests.support.ews_mailstore import MailStore, StoreError
from tests.support.ews_soap import M, T, envelope, q, response_message, sub

__all__ = ["subscribe", "unsubscribe", "stream_events"]


def subscribe(req, ctx):
    from tests.support.ews_operations import folder_ids, new_response

    resp, msgs = new_response("Subscribe")
    request = req.find(q(M, "StreamingSubscriptionRequest"))
    msg = response_message(msgs, "Subscribe")
    try:
        if request is None:
            raise StoreError("ErrorInvalidSubscriptionRequest", "Only streaming subscriptions are supported here.")
        if request.get("SubscribeToAllFolders") in ("true", "1"):
            if ctx.box is None:
                raise StoreError("ErrorMissingEmailAddress", "A mailbox is needed.")
            box, folders = ctx.box, None
        else:
            found = [ctx.folder(el) for el in folder_ids(request.find(q(T, "FolderIds")))]
            box, folders = found[0][0], {f.id for _, f in found}
        sid = ctx.store.subscribe(box, folders)
    except StoreError as exc:
        msgs.remove(msg)
        response_message(msgs, "Subscribe", exc.code, str(exc))
        return resp
    sub(msg, M, "SubscriptionId", sid)
    return resp


def unsubscribe(req, ctx):
    from tests.support.ews_operations import new_response

    resp, msgs = new_response("Unsubscribe")
    ctx.store.subscriptions.pop(req.findtext(q(M, "SubscriptionId")) or "", None)
    response_message(msgs, "Unsubscribe")
    return resp


def _document(status: str, notifications=()) -> bytes:
    from tests.support.ews_operations import new_response

    resp, msgs = new_response("GetStreamingEvents")
    msg = response_message(msgs, "GetStreamingEvents")
    if notifications:
        container = sub(msg, M, "Notifications")
        for sid, events in notifications:
            note = sub(container, M, "Notification")
            sub(note, T, "SubscriptionId", sid)
            for event, obj_id, parent_id, is_folder, stamp in events:
                el = sub(note, T, event)
                sub(el, T, "TimeStamp", stamp.strftime("%Y-%m-%dT%H:%M:%SZ"))
                sub(el, T, "FolderId" if is_folder else "ItemId", Id=obj_id, ChangeKey="AAAA")
                if parent_id:
                    sub(el, T, "ParentFolderId", Id=parent_id, ChangeKey="AAAA")
    sub(msg, M, "ConnectionStatus", status)
    return envelope(resp)


def stream_events(handler, store: MailStore, op_el, stream_seconds: float) -> None:
    """Answer GetStreamingEvents on ``handler`` (an http.server handler), chunk by chunk."""
    sids = [el.text for el in op_el.iter(q(T, "SubscriptionId"))]
    minutes = int(op_el.findtext(q(M, "ConnectionTimeout")) or "1")
    deadline = time.monotonic() + min(minutes * 60, stream_seconds)
    with store.lock:
        missing = [s for s in sids if s not in store.subscriptions]
    if missing or not sids:
        from tests.support.ews_operations import new_response

        resp, msgs = new_response("GetStreamingEvents")
        response_message(msgs, "GetStreamingEvents", "ErrorSubscriptionNotFound", "The specified subscription was not found.")
        handler._send(200, envelope(resp))
        return
    handler.send_response(200)
    handler.send_header("Content-Type", "text/xml; charset=utf-8")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()

    def chunk(data: bytes) -> None:
        handler.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        handler.wfile.flush()

    try:
        chunk(_document("OK"))
        while True:
            with store.changed:
                batch = []
                while True:
                    batch = [(s, store.subscriptions[s][2][:]) for s in sids
                             if s in store.subscriptions and store.subscriptions[s][2]]
                    left = deadline - time.monotonic()
                    if batch or left <= 0 or handler.server.stopping:
                        break
                    store.changed.wait(min(left, 0.5))
                for s, events in batch:
                    del store.subscriptions[s][2][: len(events)]
            if batch:
                chunk(_document("OK", batch))
            if time.monotonic() >= deadline or handler.server.stopping:
                chunk(_document("Closed"))
                handler.wfile.write(b"0\r\n\r\n")
                handler.wfile.flush()
                return
    except OSError:  # the client went away or the responder was stopped
        handler.close_connection = True
