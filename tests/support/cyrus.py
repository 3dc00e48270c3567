"""A real, private Cyrus IMAP 3.6 instance for tests: IMAP and LMTP on free loopback ports.

The configuration is rendered from ``deploy/cyrus/imapd.conf.in`` and ``cyrus.conf.in`` with one
of the profiles beside them:

- ``debian-default``: Debian's own settings (``.`` separator, no altnamespace, personal folders
  under ``INBOX.``, ``munge8bit`` on);
- ``recommended``: ``/`` separator, altnamespace, ``munge8bit: no``.

Everything of an instance lives in its own directory (configuration, databases, spool, sockets,
sasldb, log); the master runs in the foreground in its own process group and drops to the
``cyrus`` user itself. The service account (``repl``) is a Cyrus admin and proxy server: it logs
in with SASL PLAIN for any user, as the gateways do. ``idled`` runs, so IDLE wakes up on changes.

Users are created explicitly (``add_user``: password in the sasldb, INBOX and the special-use
folders created by the admin), never by a login or a delivery, so that an unknown user stays
unknown. Mail is delivered by LMTP, as an MTA would.

The ``imapd`` binary comes from ``cyrus-imapd``, whose installation removes Dovecot; Debian
machines prepared by ``deploy/install-deps.sh`` have it extracted under ``/opt/mailrepl/cyrus``.
"""
from __future__ import annotations

import imaplib
import itertools
import os
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.support.dovecot import DeliveryError, find_binary, lmtp_send, render_config
from tests.support.imapclient import login_as_master, login_as_user
from tests.support.net import free_port, wait_for_greeting

__all__ = ["FULL", "PROFILES", "CyrusServer", "CyrusUnavailable", "cyrus_missing_reason", "full_only"]

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "deploy" / "cyrus"
CYRBIN = Path("/usr/lib/cyrus/bin")
IMAPD_CANDIDATES = (CYRBIN / "imapd", Path("/opt/mailrepl/cyrus/usr/lib/cyrus/bin/imapd"))
PROFILES = ("debian-default", "recommended")
ADMIN = "repl"
PASSWORD = "secret"
SERVERNAME = "cyrus-test"
SPECIAL_FOLDERS = (("Drafts", "\\Drafts"), ("Sent", "\\Sent"), ("Trash", "\\Trash"),
                   ("Junk", "\\Junk"), ("Archive", "\\Archive"))
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
_USER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")  # no "." : it is Debian-default Cyrus's separator
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_serial = itertools.count(1)
# The longer cross-server scenarios run with MAILREPL_CYRUS_FULL=1; the suite runs a short subset.
FULL = os.environ.get("MAILREPL_CYRUS_FULL", "").strip().lower() not in ("", "0", "no", "false")

# marks a test (or a parameter) of the longer cross-server set
full_only = pytest.mark.skipif(not FULL, reason="longer cross-server scenario: MAILREPL_CYRUS_FULL=1 runs it")


class CyrusUnavailable(RuntimeError):
    """Cyrus cannot run here (not installed, or not running as root)."""


def find_imapd() -> Path | None:
    configured = os.environ.get("MAILREPL_CYRUS_IMAPD")
    for candidate in ([Path(configured)] if configured else []) + list(IMAPD_CANDIDATES):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def cyrus_missing_reason() -> str | None:
    """Why no instance can be started on this machine, or None if it can."""
    if not (CYRBIN / "master").is_file() or not (CYRBIN / "lmtpd").is_file():
        return "Cyrus is not installed (no /usr/lib/cyrus/bin/master); install Debian's cyrus-common"
    if find_binary("saslpasswd2") is None:
        return "saslpasswd2 not found; install Debian's sasl2-bin"
    if find_imapd() is None:
        return ("no Cyrus imapd binary (cyrus-imapd would remove Dovecot): run deploy/install-deps.sh, "
                "which extracts it to /opt/mailrepl/cyrus, or set MAILREPL_CYRUS_IMAPD")
    if os.geteuid() != 0:
        return "Cyrus test instances must be started as root (the master drops privileges itself)"
    return None


class CyrusServer:
    """One private Cyrus instance: render, start, stop, crash, add users, deliver, log in."""

    master_user = ADMIN
    master_password = PASSWORD
    user_password = PASSWORD
    host = "127.0.0.1"

    def __init__(self, name: str, users: Iterable[str] = (), *, profile: str = "recommended",
                 maxchild: int = 100) -> None:
        reason = cyrus_missing_reason()
        if reason:
            raise CyrusUnavailable(reason)
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, not {profile!r}")
        if not _NAME.fullmatch(name):
            raise ValueError(f"instance name must be [A-Za-z0-9_-]+: {name!r}")
        self.name, self.profile, self.maxchild = name, profile, maxchild
        self.separator = "." if profile == "debian-default" else "/"
        self.personal_prefix = "INBOX." if profile == "debian-default" else ""
        self.base = Path(tempfile.mkdtemp(prefix=f"mailrepl-cyrus-{name}-"))
        self.imap_port, self.lmtp_port = free_port(), free_port()
        self.users: list[str] = []
        self._proc: subprocess.Popen | None = None
        self._initial_users = list(users)
        self._prepare()

    def __repr__(self) -> str:
        return f"<CyrusServer {self.name} {self.profile} imap={self.imap_port} lmtp={self.lmtp_port}>"

    # --- layout ----------------------------------------------------------------------------

    @property
    def config(self) -> Path:
        return self.base / "imapd.conf"

    @property
    def log_path(self) -> Path:
        return self.base / "log" / "master.log"

    def _prepare(self) -> None:
        for sub in ("run", "log", "spool", "lib/socket", "lib/proc", "lib/lock", "lib/log", "lib/db",
                    "lib/sieve", "lib/user", "lib/quota", "lib/ptclient", "lib/msg"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        values = {
            "NAME": self.name, "BASE": str(self.base), "SERVERNAME": SERVERNAME, "CYRBIN": str(CYRBIN),
            "ADMIN": ADMIN, "IMAPD": str(find_imapd()), "IDLED": str(find_imapd().with_name("idled")),
            "HOST": self.host,
            "IMAP_PORT": str(self.imap_port), "LMTP_PORT": str(self.lmtp_port), "MAXCHILD": str(self.maxchild),
            "PROFILE": (TEMPLATES / f"profile-{self.profile}.conf").read_text(),
        }
        self.config.write_text(render_config((TEMPLATES / "imapd.conf.in").read_text(), values))
        (self.base / "cyrus.conf").write_text(render_config((TEMPLATES / "cyrus.conf.in").read_text(), values))
        self._saslpasswd(ADMIN, self.master_password)
        subprocess.run(["chown", "-R", "cyrus:mail", str(self.base)], check=True)
        self.base.chmod(0o750)

    def _saslpasswd(self, user: str, password: str) -> None:
        subprocess.run([find_binary("saslpasswd2"), "-f", str(self.base / "sasldb2"), "-p", "-c", "-u",
                        SERVERNAME, user], input=password.encode(), check=True, capture_output=True)
        shutil.chown(self.base / "sasldb2", "cyrus", "mail")
        (self.base / "sasldb2").chmod(0o640)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log yet)"

    # --- process control -------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [str(CYRBIN / "master"), "-C", str(self.config), "-M", str(self.base / "cyrus.conf"),
             "-p", str(self.base / "run" / "master.pid"), "-L", str(self.log_path)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        if not (wait_for_greeting(self.imap_port, b"* OK", START_TIMEOUT, self.host)
                and wait_for_greeting(self.lmtp_port, b"220", START_TIMEOUT, self.host)):
            self.kill()
            raise RuntimeError(f"cyrus {self.name} did not greet on IMAP {self.imap_port} / LMTP "
                               f"{self.lmtp_port}\n--- log ---\n{self.log_tail()}")
        for user in self._initial_users:
            self.add_user(user)
        self._initial_users = []

    def stop(self) -> None:
        """SIGTERM to the master (it ends its children), then SIGKILL to whatever is left."""
        if self._proc is None:
            return
        pgid = self._proc.pid
        _signal_group(pgid, signal.SIGTERM)
        try:
            self._proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(pgid, signal.SIGKILL)
        if self._proc.poll() is None:
            self._proc.wait(STOP_TIMEOUT)
        self._proc = None

    def kill(self) -> None:
        if self._proc is not None:
            _signal_group(self._proc.pid, signal.SIGKILL)
            self._proc.wait(STOP_TIMEOUT)
            self._proc = None

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    # --- users -----------------------------------------------------------------------------

    def user_mailbox(self, user: str) -> str:
        """The user's INBOX as the admin names it (``user.alice`` or ``user/alice``)."""
        return f"user{self.separator}{user}"

    def unique_user(self, stem: str = "u", specials=SPECIAL_FOLDERS) -> str:
        """A new user (password, INBOX, special folders) that no other test of this instance uses."""
        user = f"{stem}{os.getpid()}x{next(_serial)}"
        self.add_user(user, specials)
        return user

    def add_user(self, user: str, specials=SPECIAL_FOLDERS) -> None:
        """Create ``user``: sasldb password, INBOX (by the admin), the special-use folders
        (``specials``: (name, use) pairs)."""
        if not _USER_NAME.fullmatch(user):
            raise ValueError(f"bad user name {user!r} (lower-case letters, digits, _ and - only)")
        self._saslpasswd(user, self.user_password)
        admin = login_as_user(self.host, self.imap_port, ADMIN, self.master_password)
        try:
            typ, data = admin.create(self.user_mailbox(user))
            if typ != "OK":
                raise RuntimeError(f"cyrus {self.name}: CREATE {self.user_mailbox(user)}: {data}")
        finally:
            admin.logout()
        conn = self.imap(user, master=True)
        try:
            for folder, use in specials:
                name = self.personal_prefix + folder
                typ, data = conn._simple_command("CREATE", f'"{name}"', f"(USE ({use}))")
                if typ != "OK":
                    raise RuntimeError(f"cyrus {self.name}: CREATE {name} USE {use}: {data}")
                conn.subscribe(f'"{name}"')
        finally:
            conn.logout()
        self.users.append(user)

    # --- mail ------------------------------------------------------------------------------

    def deliver(self, user: str, raw: bytes) -> None:
        self.deliver_many(user, [raw])

    def deliver_many(self, user: str, raws: Iterable[bytes]) -> int:
        """Deliver messages to ``user``'s INBOX by LMTP, in order over one connection."""
        count = 0
        with smtplib.LMTP(self.host, self.lmtp_port, timeout=120) as lmtp:
            for raw in raws:
                code, reply = lmtp_send(lmtp, f"{user}@localhost", raw)
                if code != 250:
                    raise DeliveryError(user, code, reply)
                count += 1
        return count

    def imap(self, user: str, *, master: bool = False) -> imaplib.IMAP4:
        """An IMAP connection logged in as ``user`` (``master=True``: through the admin account)."""
        if master:
            return login_as_master(self.host, self.imap_port, user, ADMIN, self.master_password)
        return login_as_user(self.host, self.imap_port, user, self.user_password)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def wait_stopped(server: CyrusServer, timeout: float = STOP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while server.running and time.monotonic() < deadline:
        time.sleep(0.05)
