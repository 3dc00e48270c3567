"""SQLAlchemy 2 models of the state store.

Two groups of tables, one per side of the data path. A gateway uses the capture tables for
the mailboxes it captures (the source gateway; the recovery gateway after cutover) and the
replay tables for the mailboxes it replays into its server.

Capture side: ``mailbox`` (one per protected or known account), ``folder_state`` (cursor and
pending capture work per folder), ``catalog`` (what capture knows of each message: mid, uid,
GUID, hash, flags), ``outbox`` (sequenced changes, kept until the peer has applied them) and
``outbox_body`` (message bodies by SHA-256, shared by outbox rows).

Replay side: ``replica`` (one per mailbox received from a peer), ``inbox`` (received changes
by sequence number, with their digest kept after application for idempotency), ``inbox_body``
(message skeletons by SHA-256, kept while a standby message or a waiting change refers to them),
``inbox_part`` (which content-addressed parts of the blob store each skeleton refers to),
``idmap`` (mid -> folder/uid on this server), ``replay_intent`` (a write in flight, to recover
the id map from the server after a crash), ``orphan`` (messages of a folder being reset) and
``rejected_message``. History (``mailrepl.recovery.history``): applied ``inbox`` rows are kept for
the mailbox's retention, with ``history_snapshot`` (the mailbox's catalogue at one sequence
number, a restore's starting point) and ``history_snapshot_body`` (the bodies a snapshot refers to,
which garbage collection keeps). ``restore_job``: point-in-time restores asked for, their progress
and result (a job under way when the gateway stopped is taken up again at start).
``delete_guard``: mailboxes whose deletions the mass-delete guard holds (the held changes are
``inbox`` rows in state ``held``).

Admin API (both gateways): ``api_token`` (tokens with a role, stored as their SHA-256 only) and
``audit_log`` (every state-changing admin call and every refused one: who, what, outcome).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mailrepl.shared.model import utcnow

__all__ = [
    "Base",
    "Mailbox",
    "FolderState",
    "CatalogEntry",
    "OutboxRow",
    "OutboxBody",
    "Replica",
    "InboxRow",
    "InboxBody",
    "InboxPart",
    "IdMapEntry",
    "ReplicaFolder",
    "ReplayIntent",
    "Orphan",
    "RejectedMessage",
    "AlteredMessage",
    "FolderAlias",
    "SiteTransition",
    "MidAlias",
    "ServerHealth",
    "ApiToken",
    "AuditEntry",
    "VerifyResult",
    "HistorySnapshot",
    "HistorySnapshotBody",
    "RestoreJob",
    "DeleteGuardState",
]


class Base(DeclarativeBase):
    pass


def _ts() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


# --------------------------------------------------------------------------- capture side


class Mailbox(Base):
    __tablename__ = "mailbox"
    __table_args__ = (UniqueConstraint("server", "address", name="uq_mailbox_server_address"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    server: Mapped[str] = mapped_column(String(200), nullable=False)
    address: Mapped[str] = mapped_column(String(320), nullable=False)
    protected: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    phase: Mapped[str] = mapped_column(String(20), default="idle", nullable=False)
    active_site: Mapped[str] = mapped_column(String(10), default="primary", nullable=False)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)  # last captured
    acked_seq: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)  # received by peer
    applied_seq: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)  # applied by peer
    error: Mapped[str | None] = mapped_column(Text)
    ship_error: Mapped[str | None] = mapped_column(Text)  # conflict/gap reported by the peer
    rejected: Mapped[str | None] = mapped_column(Text)  # JSON list the peer reported: seq, folder, reason
    dr_error: Mapped[str | None] = mapped_column(Text)  # what blocks the mailbox at the DR site, as the peer reports it
    seed_msgs_total: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    seed_msgs_done: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    seed_bytes_total: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    seed_bytes_done: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    last_capture_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # bytes accounting: bodies as captured; bodies the shipped changes refer to (raw), what was
    # put on the wire for them before compression (skeletons + parts not already at DR) and after
    captured_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0", nullable=False)
    shipped_raw_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0", nullable=False)
    shipped_payload_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0", nullable=False)
    shipped_wire_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0", nullable=False)
    # the site state (``mailrepl.shared.site_state``) the gateway last learned for this mailbox
    site_state: Mapped[str] = mapped_column(String(20), default="replicating", server_default="replicating",
                                            nullable=False)
    created_at: Mapped[datetime] = _ts()


class FolderState(Base):
    __tablename__ = "folder_state"
    __table_args__ = (UniqueConstraint("mailbox_id", "name", name="uq_folder_mailbox_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(String(1000), nullable=False)
    fid: Mapped[str] = mapped_column(String(200), default="", nullable=False)
    cursor: Mapped[str | None] = mapped_column(Text)  # Cursor text once committed (EWS: with sync state)
    pending_cursor: Mapped[str | None] = mapped_column(Text)  # target of work in progress
    pending_uids: Mapped[str | None] = mapped_column(Text)  # UidSet text still to capture
    pending_replace: Mapped[str | None] = mapped_column(Text)  # JSON {uid: old_mid} (draft edits)
    resetting: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    messages: Mapped[int | None] = mapped_column(Integer)


class CatalogEntry(Base):
    __tablename__ = "catalog"
    __table_args__ = (
        Index("ix_catalog_folder_uid", "folder_id", "uid", unique=True),
        Index("ix_catalog_mailbox_guid", "mailbox_id", "guid"),
        # a message id is never handed out twice (SQLite would reuse the newest one once deleted)
        {"sqlite_autoincrement": True},
    )

    mid: Mapped[int] = mapped_column(Integer, primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailbox.id", ondelete="CASCADE"), nullable=False)
    folder_id: Mapped[int] = mapped_column(ForeignKey("folder_state.id", ondelete="CASCADE"), nullable=False)
    uid: Mapped[int] = mapped_column(BigInteger, nullable=False)
    guid: Mapped[str | None] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    flags: Mapped[str] = mapped_column(Text, default="", nullable=False)  # space-separated, sorted


class OutboxRow(Base):
    __tablename__ = "outbox"

    mailbox_id: Mapped[int] = mapped_column(
        ForeignKey("mailbox.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    change: Mapped[str] = mapped_column(Text, nullable=False)  # Change JSON
    digest: Mapped[str] = mapped_column(String(64), nullable=False)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)  # body reference
    size: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    created_at: Mapped[datetime] = _ts()


class OutboxBody(Base):
    """A queued body: in ``data``, or stored in a segment of the outbox spool
    (``mailrepl.shared.store.body_spool``) at ``seg_offset``, ``seg_length`` bytes as sealed."""

    __tablename__ = "outbox_body"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    data: Mapped[bytes | None] = mapped_column(LargeBinary)
    segment: Mapped[str | None] = mapped_column(String(40), index=True)
    seg_offset: Mapped[int | None] = mapped_column(BigInteger)
    seg_length: Mapped[int | None] = mapped_column(BigInteger)


# --------------------------------------------------------------------------- replay side


class Replica(Base):
    __tablename__ = "replica"
    __table_args__ = (
        UniqueConstraint("source_id", "server", "address", name="uq_replica_source_server_address"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_id: Mapped[str] = mapped_column(String(200), nullable=False)
    server: Mapped[str] = mapped_column(String(200), nullable=False)  # the capturing side's server
    address: Mapped[str] = mapped_column(String(320), nullable=False)
    target: Mapped[str] = mapped_column(String(200), nullable=False)  # server replayed into
    received_seq: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    applied_seq: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    phase: Mapped[str] = mapped_column(String(20), default="replicating", nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    last_received_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_applied_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # cutover and failback (``mailrepl.shared.site_state``)
    site_state: Mapped[str] = mapped_column(String(20), default="replicating", server_default="replicating",
                                            nullable=False)
    site_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cutover_seq: Mapped[int | None] = mapped_column(BigInteger)  # applied on the standby at cutover
    final_seq: Mapped[int | None] = mapped_column(BigInteger)  # last standby change to replay on switch-back
    failback_report: Mapped[str | None] = mapped_column(Text)  # JSON
    # the applied sequence number at which the DR capture state of the standby copy (the
    # "standby view", ``mailrepl.recovery.standby_view``) was last brought up to date; None: not built
    view_seq: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = _ts()


class InboxRow(Base):
    __tablename__ = "inbox"

    replica_id: Mapped[int] = mapped_column(
        ForeignKey("replica.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    change: Mapped[str] = mapped_column(Text, nullable=False)
    digest: Mapped[str] = mapped_column(String(64), nullable=False)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(10), default="received", nullable=False)
    captured_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = _ts()


class InboxBody(Base):
    """A received message body as its skeleton (``mailrepl.shared.content.mime_split``); the parts are in the blob store."""

    __tablename__ = "inbox_body"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)  # of the whole message
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)  # the skeleton


class InboxPart(Base):
    """Skeleton ``sha256`` refers to part ``key``: the blob store keeps every part referenced here."""

    __tablename__ = "inbox_part"
    __table_args__ = (Index("ix_inbox_part_key", "key"),)

    sha256: Mapped[str] = mapped_column(ForeignKey("inbox_body.sha256", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(32), primary_key=True)


class IdMapEntry(Base):
    __tablename__ = "idmap"
    __table_args__ = (Index("ix_idmap_replica_folder_uid", "replica_id", "folder", "uid"), Index("ix_idmap_sha256", "sha256"))

    replica_id: Mapped[int] = mapped_column(
        ForeignKey("replica.id", ondelete="CASCADE"), primary_key=True
    )
    mid: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    folder: Mapped[str] = mapped_column(String(1000), nullable=False)
    uidvalidity: Mapped[int] = mapped_column(BigInteger, nullable=False)
    uid: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)


class ReplicaFolder(Base):
    """A folder the applied changes say the replica's copy has (``capture_state.replica_folders``):
    empty folders included, which the id map cannot name."""

    __tablename__ = "replica_folder"

    replica_id: Mapped[int] = mapped_column(ForeignKey("replica.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(1000), primary_key=True)
    special_use: Mapped[str | None] = mapped_column(String(200))  # space-separated, as it was created


class ReplayIntent(Base):
    """A write that creates messages on the server is in flight (or was, before a crash)."""

    __tablename__ = "replay_intent"

    replica_id: Mapped[int] = mapped_column(
        ForeignKey("replica.id", ondelete="CASCADE"), primary_key=True
    )
    folder: Mapped[str] = mapped_column(String(1000), nullable=False)
    uidvalidity: Mapped[int] = mapped_column(BigInteger, nullable=False)
    uidnext: Mapped[int] = mapped_column(BigInteger, nullable=False)
    first_seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    last_seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = _ts()


class Orphan(Base):
    """A message of a folder under reset, waiting to be claimed by a re-add or removed."""

    __tablename__ = "orphan"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    replica_id: Mapped[int] = mapped_column(ForeignKey("replica.id", ondelete="CASCADE"), nullable=False)
    folder: Mapped[str] = mapped_column(String(1000), nullable=False)
    uidvalidity: Mapped[int] = mapped_column(BigInteger, nullable=False)
    uid: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)


class RejectedMessage(Base):
    __tablename__ = "rejected_message"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    replica_id: Mapped[int] = mapped_column(ForeignKey("replica.id", ondelete="CASCADE"), nullable=False)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    mid: Mapped[int | None] = mapped_column(BigInteger)
    folder: Mapped[str] = mapped_column(String(1000), nullable=False)
    sha256: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    at: Mapped[datetime] = _ts()
    # the refused message as people know it (from its header; None where it has none)
    message_id: Mapped[str | None] = mapped_column(String(1000))
    subject: Mapped[str | None] = mapped_column(String(1000))
    msg_date: Mapped[str | None] = mapped_column(String(200))


class FolderAlias(Base):
    """A source folder paired with the standby's own special folder, or a parent folder the
    standby created by itself (``engines/special_folders``)."""

    __tablename__ = "folder_alias"
    __table_args__ = (UniqueConstraint("server", "address", "source_name", name="uq_folder_alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    server: Mapped[str] = mapped_column(String(200), nullable=False)  # the standby server
    address: Mapped[str] = mapped_column(String(320), nullable=False)
    source_name: Mapped[str] = mapped_column(String(1000), nullable=False)
    standby_name: Mapped[str] = mapped_column(String(1000), nullable=False)
    # "special": paired with the standby's own special folder; "implicit": a parent the standby made
    kind: Mapped[str] = mapped_column(String(20), nullable=False, default="special", server_default="special")


class AlteredMessage(Base):
    """A message the standby stored with other bytes than were sent (e.g. 8-bit header bytes
    rewritten): replicated, but not byte-exact; ``standby_sha256`` is what the standby holds."""

    __tablename__ = "altered_message"
    __table_args__ = (Index("ix_altered_message_replica", "replica_id", "sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    replica_id: Mapped[int] = mapped_column(ForeignKey("replica.id", ondelete="CASCADE"), nullable=False)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    mid: Mapped[int | None] = mapped_column(BigInteger)
    folder: Mapped[str] = mapped_column(String(1000), nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    standby_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    sent_size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    stored_size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    what: Mapped[str] = mapped_column(Text, nullable=False)
    message_id: Mapped[str | None] = mapped_column(String(1000))
    subject: Mapped[str | None] = mapped_column(String(1000))
    msg_date: Mapped[str | None] = mapped_column(String(200))
    at: Mapped[datetime] = _ts()


# --------------------------------------------------------------------------- cutover / failback


class SiteTransition(Base):
    """One change of a mailbox's site state: when, from what, to what, and who asked."""

    __tablename__ = "site_transition"
    __table_args__ = (Index("ix_site_transition_replica", "replica_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    replica_id: Mapped[int] = mapped_column(ForeignKey("replica.id", ondelete="CASCADE"), nullable=False)
    before: Mapped[str] = mapped_column(String(20), nullable=False)
    after: Mapped[str] = mapped_column(String(20), nullable=False)
    actor: Mapped[str] = mapped_column(String(20), nullable=False)  # admin, auto, source
    detail: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = _ts()


class MidAlias(Base):
    """A standby message captured at DR (``dr_mid``) is the source's message ``source_mid``."""

    __tablename__ = "mid_alias"

    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailbox.id", ondelete="CASCADE"), primary_key=True)
    dr_mid: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    source_mid: Mapped[int] = mapped_column(BigInteger, nullable=False)


class ServerHealth(Base):
    """The automatic failover's view of one primary server."""

    __tablename__ = "server_health"

    server: Mapped[str] = mapped_column(String(200), primary_key=True)
    up: Mapped[bool] = mapped_column(Boolean, nullable=False)
    down_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_check: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    failed_over_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# --------------------------------------------------------------------------- admin API


class ApiToken(Base):
    """An admin API token: its name and role; the token itself only as its SHA-256 (hex)."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    role: Mapped[str] = mapped_column(String(20), nullable=False)  # viewer, operator, admin
    hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    created_at: Mapped[datetime] = _ts()
    created_by: Mapped[str] = mapped_column(String(200), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEntry(Base):
    """One admin API call that changed (or tried to change) state, or was refused."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = _ts()
    principal: Mapped[str | None] = mapped_column(String(200))  # None: not authenticated
    role: Mapped[str | None] = mapped_column(String(20))
    method: Mapped[str] = mapped_column(String(10), nullable=False)
    path: Mapped[str] = mapped_column(String(2000), nullable=False)
    target: Mapped[str | None] = mapped_column(Text)  # short summary: addresses, server, token name
    status: Mapped[int] = mapped_column(Integer, nullable=False)


# --------------------------------------------------------------------------- verify


class VerifyResult(Base):
    """The last verify verdict of one mailbox (source gateway)."""

    __tablename__ = "verify_result"

    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailbox.id", ondelete="CASCADE"), primary_key=True)
    job: Mapped[str] = mapped_column(String(40), nullable=False)
    verdict: Mapped[str] = mapped_column(String(20), nullable=False)  # equal, different, error, in_flight
    kinds: Mapped[str] = mapped_column(Text, nullable=False)  # JSON {kind: count}
    report: Mapped[str] = mapped_column(Text, nullable=False)  # JSON: the mailbox's report
    at: Mapped[datetime] = _ts()


# --------------------------------------------------------------------------- history


class HistorySnapshot(Base):
    """A replica's catalogue (folders, messages, renames) as it was after applying ``seq``."""

    __tablename__ = "history_snapshot"
    __table_args__ = (UniqueConstraint("replica_id", "seq", name="uq_history_snapshot_replica_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    replica_id: Mapped[int] = mapped_column(ForeignKey("replica.id", ondelete="CASCADE"), nullable=False)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # capture time of change ``seq`` (None: the empty start, seq 0): the mailbox time it shows
    at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    messages: Mapped[int] = mapped_column(BigInteger, nullable=False)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)  # zlib-compressed catalogue JSON
    taken_at: Mapped[datetime] = _ts()


class HistorySnapshotBody(Base):
    """Snapshot ``snapshot_id`` refers to body ``sha256``: garbage collection keeps it."""

    __tablename__ = "history_snapshot_body"
    __table_args__ = (Index("ix_history_snapshot_body_sha256", "sha256"),)

    snapshot_id: Mapped[int] = mapped_column(ForeignKey("history_snapshot.id", ondelete="CASCADE"),
                                             primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)


class RestoreJob(Base):
    """A point-in-time restore: what was asked, how far it got, what it wrote."""

    __tablename__ = "restore_job"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    replica_id: Mapped[int] = mapped_column(ForeignKey("replica.id", ondelete="CASCADE"), nullable=False)
    request: Mapped[str] = mapped_column(Text, nullable=False)  # JSON: time, target, filters
    state: Mapped[str] = mapped_column(String(10), nullable=False)  # running, done, error
    messages_total: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    messages_done: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    result: Mapped[str | None] = mapped_column(Text)  # JSON
    error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = _ts()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DeleteGuardState(Base):
    """The mass-delete guard tripped for this replica: its deletions are held until released."""

    __tablename__ = "delete_guard"

    replica_id: Mapped[int] = mapped_column(ForeignKey("replica.id", ondelete="CASCADE"), primary_key=True)
    since: Mapped[datetime] = _ts()
    deletions: Mapped[int] = mapped_column(BigInteger, nullable=False)  # in the window when it tripped
    mailbox_messages: Mapped[int] = mapped_column(BigInteger, nullable=False)  # on the standby then
