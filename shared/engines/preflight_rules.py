"""Pre-flight findings from what was learnt about a server (pure; no I/O).

One :class:`Finding` per fact: capabilities mailrepl uses or misses, the service account's
rights, namespace and separator, connection limits, settings that alter or refuse messages
(found by the probe messages), clock skew — each with what to change where there is something
to change. A ``blocker`` makes ``mailrepl check-servers`` exit non-zero.
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["LEVELS", "Finding", "ProbeOutcome", "ServerProbe", "analyse"]

LEVELS = ("ok", "note", "warning", "blocker")
SKEW_WARNING = 60.0  # seconds
REQUIRED_RIGHTS = {"l": "list", "r": "read", "s": "keep seen", "w": "write flags", "i": "insert",
                   "t": "delete messages", "e": "expunge", "k": "create folders", "x": "delete folders"}


@dataclass(frozen=True)
class Finding:
    server: str
    level: str  # one of LEVELS
    topic: str
    text: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.server}: {self.level:<7} {self.topic}: {self.text}" + (f" -- change: {self.fix}" if self.fix else "")

    def to_dict(self) -> dict:
        return {"server": self.server, "level": self.level, "topic": self.topic, "text": self.text, "fix": self.fix}


@dataclass(frozen=True)
class ProbeOutcome:
    """What the server did with one probe message: stored as sent, altered (``what``), refused (``reason``)."""

    name: str
    stored: bool
    altered: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ServerProbe:
    server: str
    kind: str  # imap | ews
    error: str | None = None  # the server could not be reached or probed
    capabilities: frozenset[str] = frozenset()
    separator: str | None = "/"
    prefix: str = ""
    rights: str | None = None
    server_id: dict[str, str] = field(default_factory=dict)
    outcomes: tuple[ProbeOutcome, ...] = ()
    skew_seconds: float | None = None


def _is_cyrus(p: ServerProbe) -> bool:
    return "cyrus" in p.server_id.get("name", "").lower() or "X-REPLICATION" in p.capabilities


def analyse(p: ServerProbe) -> list[Finding]:
    out: list[Finding] = []

    def add(level: str, topic: str, text: str, fix: str = "") -> None:
        out.append(Finding(p.server, level, topic, text, fix))

    if p.error is not None:
        add("blocker", "connection", p.error, "check host, port, TLS and the service account's credentials")
        return out
    if p.kind == "imap":
        _capabilities(p, add)
        _rights(p, add)
        _namespace(p, add)
        _limits(p, add)
    for o in p.outcomes:
        _outcome(p, o, add)
    if p.skew_seconds is not None:
        if abs(p.skew_seconds) > SKEW_WARNING:
            add("warning", "clock", f"the server's clock is {p.skew_seconds:+.0f} s off this host's",
                "synchronise both clocks (NTP): lag and internal dates of delivered mail rely on them")
        else:
            add("ok", "clock", f"skew {p.skew_seconds:+.0f} s")
    return out


def _capabilities(p: ServerProbe, add) -> None:
    caps = p.capabilities
    missing = [c for c in ("CONDSTORE", "QRESYNC", "UIDPLUS") if c not in caps]
    if missing:
        add("blocker", "capabilities", f"lacks {', '.join(missing)} (change tracking, exact UIDs)",
            "a server with CONDSTORE, QRESYNC and UIDPLUS (Dovecot 2.3+, Cyrus 3.x)")
    else:
        add("ok", "capabilities", "CONDSTORE, QRESYNC, UIDPLUS")
    soft = {
        "MOVE": "moves become COPY + expunge (two steps, still exactly once)",
        "MULTIAPPEND": "one APPEND per message (slower seeding)",
        "NOTIFY": "changes of folders other than INBOX are noticed by polling, INBOX by IDLE",
    }
    for cap, effect in soft.items():
        if cap in caps:
            add("ok", "capabilities", cap)
        else:
            add("note", "capabilities", f"no {cap}: {effect}")
    if "IDLE" not in caps and "NOTIFY" not in caps:
        add("warning", "capabilities", "neither NOTIFY nor IDLE: every change waits for the next poll",
            "enable IDLE (Cyrus: run idled)")
    if "OBJECTID" in caps:
        add("ok", "capabilities", "OBJECTID (folder and message ids)")
    else:
        add("note", "capabilities", "no OBJECTID: folders are known by name and UIDVALIDITY, moves by message "
            "GUID where the server answers X-GUID, else by content hash")


def _rights(p: ServerProbe, add) -> None:
    if p.rights is None:
        add("note", "rights", "the service account's rights cannot be read (no ACL extension); the probe below "
            "shows it may create, write and delete")
        return
    lacking = [f"{r} ({what})" for r, what in REQUIRED_RIGHTS.items() if r not in p.rights]
    if lacking:
        add("blocker", "rights", f"on INBOX the service account lacks {', '.join(lacking)} (has {p.rights!r})",
            "make it an admin (Cyrus: admins:) or a master user (Dovecot) with full rights")
    else:
        add("ok", "rights", f"service account rights on INBOX: {p.rights}")


def _namespace(p: ServerProbe, add) -> None:
    shown = f"personal namespace prefix {p.prefix!r}, separator {p.separator!r}"
    if p.prefix or p.separator != "/":
        fix = "unixhierarchysep: yes and altnamespace: yes in imapd.conf" if _is_cyrus(p) else \
            "a '/' separator and no personal prefix"
        add("warning", "namespace", f"{shown}: folder names are mapped (the prefix added and removed; a "
            f"{p.separator!r} inside a folder name of another server is written as a look-alike)", fix)
    else:
        add("ok", "namespace", shown)


def _limits(p: ServerProbe, add) -> None:
    where = ("Cyrus: maxchild of the imap service in cyrus.conf" if _is_cyrus(p)
             else "Dovecot: mail_max_userip_connections, process_limit of service imap")
    add("note", "connection limits", f"not readable over IMAP ({where}); mailrepl holds one connection per "
        "worker and one per push watcher, all from the gateway's address")


def _outcome(p: ServerProbe, o: ProbeOutcome, add) -> None:
    if o.reason is not None:
        add("warning", "probe " + o.name, f"refused: {o.reason}; such messages are reported as refused, not "
            "replicated" + (" (Cyrus refuses bare LF in every configuration)" if _is_cyrus(p) and "LF" in o.name else ""))
    elif o.altered is not None:
        fix = "munge8bit: no in imapd.conf" if _is_cyrus(p) and "8-bit" in o.altered else \
            "store messages as sent (no rewriting of headers or line endings)"
        add("blocker", "probe " + o.name, f"stored altered ({o.altered}): replicas would not be byte-exact", fix)
    else:
        add("ok", "probe " + o.name, "stored as sent")
