"""A real, private Dovecot 2.3 instance for tests: IMAP and LMTP on free loopback ports.

The configuration is rendered from ``deploy/dovecot/dovecot.conf.in``, the same template the
demo pair (``deploy/dovecot/mailpair.sh``) uses, so tests exercise the configuration that is
documented and shipped. Each instance lives in its own directory (config, sockets, log,
passwd-files, mail under ``base/"mail"/<user>``) and never touches a system Dovecot.

Dovecot's master must run as root (it drops to ``nobody`` for mail access and to the Debian
``dovecot``/``dovenull`` users for its helpers). The instance directory is created with
``tempfile.mkdtemp`` rather than under pytest's ``tmp_path`` because pytest keeps its temporary
root at mode 0700, which the unprivileged mail user cannot traverse.

Mail is delivered with LMTP, as an MTA would, so that messages arrive the way real mail does
(new UIDs, delivery-time INTERNALDATE, no client involved); ``imap()`` is for user changes.
"""
from __future__ import annotations

import imaplib
import os
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.support.imapclient import login_as_master, login_as_user
from tests.support.net import free_port, wait_for_greeting

__all__ = ["DeliveryError", "DovecotServer", "DovecotUnavailable", "dovecot_missing_reason", "mailbox_size",
           "render_config"]

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "dovecot" / "dovecot.conf.in"

MAIL_LOCATIONS = {
    "mdbox": "mdbox:~/mdbox",
    "sdbox": "sdbox:~/sdbox",
    # LAYOUT=fs keeps "/" as the on-disk hierarchy separator, matching the namespace separator
    "maildir": "maildir:~/Maildir:LAYOUT=fs",
}
MAIL_FSYNC_MODES = ("optimized", "always", "never")
MASTER_USER = "repl"
PASSWORD = "secret"
MAIL_USER, MAIL_GROUP = "nobody", "nogroup"
INTERNAL_GROUP = "dovecot"  # the group Dovecot's auth process runs as (default_internal_user)
SENDER = "mailrepl-tests@localhost"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
_PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")
_INSTANCE_NAME = re.compile(r"[A-Za-z0-9_-]+")
_USER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


class DovecotUnavailable(RuntimeError):
    """Dovecot cannot run here (not installed, or not running as root)."""


class DeliveryError(RuntimeError):
    """The LMTP server refused a message; carries the SMTP reply."""

    def __init__(self, user: str, code: int, reply: bytes) -> None:
        super().__init__(f"LMTP delivery to {user} refused: {code} {reply.decode(errors='replace')}")
        self.code, self.reply = code, reply


def find_binary(name: str) -> str | None:
    """``name`` on PATH, else in /usr/sbin or /usr/bin (root's PATH may lack sbin under sudo)."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/bin"):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def dovecot_missing_reason() -> str | None:
    """Why no instance can be started on this machine, or None if it can."""
    missing = [b for b in ("dovecot", "doveadm") if find_binary(b) is None]
    if missing:
        return (f"Dovecot is not installed ({', '.join(missing)} not found on PATH, /usr/sbin, /usr/bin); "
                "install Debian's dovecot-imapd and dovecot-lmtpd")
    if os.geteuid() != 0:
        return "Dovecot test instances must be started as root (the master drops privileges itself)"
    if not TEMPLATE.is_file():
        return f"Dovecot config template missing: {TEMPLATE}"
    return None


def render_config(template: str, values: Mapping[str, str]) -> str:
    """Replace every ``@NAME@`` placeholder; an unknown placeholder is an error, not left as text."""
    unknown: set[str] = set()

    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            unknown.add(key)
            return match.group(0)
        return str(values[key])

    text = _PLACEHOLDER.sub(substitute, template)
    if unknown:
        raise ValueError(f"no value for template placeholders: {', '.join(sorted(unknown))}")
    return text


def mailbox_size(server, user: str) -> tuple[int, int]:
    """(messages, bytes) of ``user``'s whole mailbox as ``server`` counts them (RFC822.SIZE)."""
    out = server.doveadm("-f", "flow", "mailbox", "status", "-u", user, "messages vsize", "*")
    msgs = size = 0
    for line in out.splitlines():
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        msgs += int(fields.get("messages", 0))
        size += int(fields.get("vsize", 0))
    return msgs, size


def push_plugin_config(directory: Path, url: str, token: str, extra: str = "") -> str:
    """Lines for a Dovecot configuration that load the product's server-side push script
    (``deploy/dovecot/mailrepl-push.lua``, copied into ``directory``, readable by Dovecot's mail
    processes) posting to ``url`` with ``token``; ``extra``: more lines for its plugin section."""
    directory.chmod(0o755)
    script = directory / "mailrepl-push.lua"
    shutil.copyfile(REPO / "deploy" / "dovecot" / "mailrepl-push.lua", script)
    script.chmod(0o644)
    return f"""
mail_plugins = $mail_plugins mail_lua notify push_notification push_notification_lua
plugin {{
  push_notification_driver = lua:file={script}
  mailrepl_push_url = {url}
  mailrepl_push_token = {token}
{extra}}}
"""


def lmtp_send(lmtp: smtplib.LMTP, rcpt: str, raw: bytes) -> tuple[int, bytes]:
    """One LMTP transaction of ``raw`` to the single recipient ``rcpt``: the code and reply of the
    step that ended it (250 when delivered). A refused MAIL or RCPT is reset so the session can go on."""
    code, reply = lmtp.mail(SENDER)
    if code == 250:
        # not lmtp.rcpt(): its address parsing would unquote a quoted local part
        code, reply = lmtp.docmd("RCPT", f"TO:<{rcpt}>")
    if code != 250:
        lmtp.rset()
        return code, reply
    try:
        # LMTP answers per recipient after the data; smtplib's data() returns that reply without
        # checking it (only sendmail() does)
        return lmtp.data(raw)
    except smtplib.SMTPDataError as exc:
        return exc.smtp_code, exc.smtp_error


def lmtp_recipient(user: str, folder: str | None, domain: str = "localhost") -> str:
    """The LMTP address that files into ``folder`` (``user+folder``, quoted when needed).

    The template sets ``recipient_delimiter = +`` and ``lmtp_save_to_detail_mailbox = yes``, so
    the detail part names the target folder. SMTP addresses are ASCII-only here (Dovecot 2.3's
    LMTP has no SMTPUTF8), so non-ASCII folder names cannot be targeted this way.
    """
    if folder is None:
        return f"{user}@{domain}"
    if not folder or not folder.isascii() or not folder.isprintable():
        raise ValueError(f"folder {folder!r} cannot be expressed in an LMTP address (printable ASCII only)")
    local = f"{user}+{folder}"
    if not _DOT_ATOM.fullmatch(local):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{local}@{domain}"


class DovecotServer:
    """One private Dovecot instance: render, start, stop, crash, deliver, log in.

    ``max_mail_size`` (e.g. ``"1M"``) loads the quota plugin with ``quota_max_mail_size`` so the
    instance refuses larger messages on APPEND (``NO [LIMIT]``) and on LMTP delivery.
    ``mail_fsync`` defaults to ``never``: tests crash processes, not the machine, and data that
    was written but not fsynced survives a killed process in the page cache.
    ``imap_process_limit`` is the most imap sessions Dovecot serves at once (its default, 1024,
    unless a test makes a server that refuses more); ``extra_config`` is appended to the rendered
    configuration (e.g. the push_notification plugin).
    ``netns`` runs the master inside that network namespace (``ip netns exec``); ``host`` is then
    the address the test side reaches it at (an address of the namespace's link), and the
    listeners bind both the namespace's loopback and ``host``.
    """

    master_user = MASTER_USER
    master_password = PASSWORD
    user_password = PASSWORD
    host = "127.0.0.1"

    def __init__(self, name: str, users: Iterable[str], *, base: Path | None = None,
                 imap_port: int | None = None, lmtp_port: int | None = None, mail_format: str = "mdbox",
                 mail_fsync: str = "never", max_mail_size: str | None = None,
                 master_password: str = PASSWORD, netns: str | None = None, host: str | None = None,
                 imap_process_limit: int = 1024, extra_config: str = "") -> None:
        reason = dovecot_missing_reason()
        if reason:
            raise DovecotUnavailable(reason)
        if not _INSTANCE_NAME.fullmatch(name):
            raise ValueError(f"instance name must be [A-Za-z0-9_-]+ (it names files and the host): {name!r}")
        self.users = list(users)
        bad = [u for u in self.users if not _USER_NAME.fullmatch(u)]
        if bad or not self.users:
            # the config maps logins with %Ln (lower-cased local part) to the mail directory
            raise ValueError(f"user names must be lower-case [a-z0-9._-] and at least one is needed: {bad}")
        if mail_format not in MAIL_LOCATIONS:
            raise ValueError(f"mail_format must be one of {sorted(MAIL_LOCATIONS)}, not {mail_format!r}")
        if mail_fsync not in MAIL_FSYNC_MODES:
            raise ValueError(f"mail_fsync must be one of {MAIL_FSYNC_MODES}, not {mail_fsync!r}")
        self.name = name
        self.netns = netns
        if host is not None:
            self.host = host
        self.master_password = master_password  # the service account's (users keep PASSWORD)
        self.mail_format, self.mail_fsync, self.max_mail_size = mail_format, mail_fsync, max_mail_size
        self.imap_process_limit = imap_process_limit
        self.extra_config = extra_config
        # an explicit base must be traversable by the mail user (pytest's tmp_path is not)
        self._owns_base = base is None
        self.base = Path(base) if base is not None else Path(tempfile.mkdtemp(prefix=f"mailrepl-{name}-"))
        self._ports_chosen = imap_port is None and lmtp_port is None
        self.imap_port = imap_port or free_port()
        self.lmtp_port = lmtp_port or free_port()
        self._pgid: int | None = None
        self._dovecot = find_binary("dovecot")
        self._doveadm = find_binary("doveadm")
        self._prepare()

    def __repr__(self) -> str:
        return f"<DovecotServer {self.name} imap={self.imap_port} lmtp={self.lmtp_port} base={self.base}>"

    # --- layout ----------------------------------------------------------------------------

    @property
    def config(self) -> Path:
        return self.base / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        return self.base / "log" / "dovecot.log"

    @property
    def pid_file(self) -> Path:
        return self.base / "run" / "master.pid"

    def _prepare(self) -> None:
        for sub in ("run", "state", "log", "mail"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        # the mail user must traverse from / down to its home; mkdtemp made the base 0700
        self.base.chmod(0o755)
        shutil.chown(self.base / "mail", MAIL_USER, MAIL_GROUP)
        self._write_passwd("users.passwd", self.users, self.user_password)
        self._write_passwd("masters.passwd", [self.master_user], self.master_password)
        self._write_config()

    def _write_passwd(self, filename: str, names: Iterable[str], password: str) -> None:
        path = self.base / filename
        path.write_text("".join(f"{n}:{{PLAIN}}{password}::::::\n" for n in names))
        shutil.chown(path, "root", INTERNAL_GROUP)
        path.chmod(0o640)

    def _write_config(self) -> None:
        values = {
            "NAME": self.name,
            "LISTEN": ", ".join(dict.fromkeys(["127.0.0.1", self.host])),
            "BASE": str(self.base),
            "IMAP_PORT": str(self.imap_port),
            "LMTP_PORT": str(self.lmtp_port),
            "MAIL_LOCATION": MAIL_LOCATIONS[self.mail_format],
            "MAIL_FSYNC": self.mail_fsync,
            "MAIL_USER": MAIL_USER,
            "MAIL_GROUP": MAIL_GROUP,
            "MAIL_PLUGINS": "quota" if self.max_mail_size else "",
            "QUOTA_MAX_MAIL_SIZE": self.max_mail_size or "0",
            "IMAP_PROCESS_LIMIT": str(self.imap_process_limit),
            "IMAP_MIN_AVAIL": str(min(8, self.imap_process_limit)),
        }
        self.config.write_text(render_config(TEMPLATE.read_text(), values) + self.extra_config)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log yet)"

    # --- process control -------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._pgid is not None and _group_alive(self._pgid)

    def start(self) -> None:
        """Start the master and return once IMAP and LMTP greet.

        Ports picked by this class can be taken by another process between picking and binding;
        on the first start that is retried with new ports (later starts keep them, since
        clients already know them).
        """
        if self.running:
            return
        for attempt in range(3):
            returncode, output = self._run_master()
            if returncode == 0:
                break
            clash = "Address already in use" in output + self.log_tail(5)
            if clash and self._ports_chosen and attempt < 2:
                self.imap_port, self.lmtp_port = free_port(), free_port()
                self._write_config()
                continue
            raise RuntimeError(f"dovecot {self.name} failed to start (exit {returncode}): "
                               f"{output.strip()}\n--- log ---\n{self.log_tail()}")
        self._pgid = self._find_master(wait=START_TIMEOUT)
        if self._pgid is None:
            raise RuntimeError(f"dovecot {self.name} started but no master process was found\n"
                               f"--- log ---\n{self.log_tail()}")
        ok = wait_for_greeting(self.imap_port, b"* OK", START_TIMEOUT, self.host) and \
            wait_for_greeting(self.lmtp_port, b"220", START_TIMEOUT, self.host)
        if not ok:
            self.kill()
            raise RuntimeError(f"dovecot {self.name} did not greet on IMAP {self.imap_port} / LMTP "
                               f"{self.lmtp_port}\n--- log ---\n{self.log_tail()}")
        self._ports_chosen = False

    def _run_master(self) -> tuple[int, str]:
        """Run ``dovecot -c CONFIG``, which forks the daemon and exits; returns (exit code, output).

        Output goes to a file, not a pipe: the daemon inherits the descriptors, and reading a
        pipe to its end would wait for the daemon to exit.
        """
        out = self.base / "log" / "startup.out"
        with out.open("wb") as sink:
            returncode = subprocess.run([*self._prefix(), self._dovecot, "-c", str(self.config)],
                                        stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=_clean_env(),
                                        timeout=START_TIMEOUT).returncode
        return returncode, out.read_text(errors="replace")

    def _prefix(self) -> list[str]:
        """The command prefix that runs a program in this instance's network namespace."""
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def _find_master(self, wait: float = 0.0) -> int | None:
        """The process group of this instance's running master, from its pid file.

        The master calls setsid(), so its pid is the group of every helper it forks. The pid is
        trusted only if that process runs with this instance's config, so a stale pid file can
        never make us signal an unrelated process.
        """
        deadline = time.monotonic() + wait
        while True:
            try:
                pid = int(self.pid_file.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if str(self.config).encode() in cmdline and os.getpgid(pid) == pid:
                    return pid
            except (FileNotFoundError, ProcessLookupError, ValueError):
                pass
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def stop(self) -> None:
        """Graceful shutdown; returns when every process of the instance is gone.

        SIGTERM to the master closes the listeners and ends the helpers, but the master leaves
        IMAP sessions to notice on their own, which takes Dovecot about 10 s; they get a
        SIGTERM of their own (they answer "BYE Server shutting down") once the master is gone.
        """
        if self._pgid is None:
            self._pgid = self._find_master()
        if self._pgid is None or not _group_alive(self._pgid):
            self._pgid = None
            return
        pgid = self._pgid
        os.kill(pgid, signal.SIGTERM)
        _wait_until(lambda: not _process_alive(pgid), STOP_TIMEOUT)
        for sig, timeout in ((signal.SIGTERM, 5.0), (signal.SIGKILL, STOP_TIMEOUT)):
            if not _group_alive(pgid):
                break
            _signal_group(pgid, sig)
            _wait_until(lambda: not _group_alive(pgid), timeout)
        self._pgid = None

    def kill(self) -> None:
        """Crash: SIGKILL the master and all its processes at once, as a power cut of the service would."""
        if self._pgid is None:
            self._pgid = self._find_master()
        if self._pgid is not None and _group_alive(self._pgid):
            _signal_group(self._pgid, signal.SIGKILL)
            pgid = self._pgid
            if not _wait_until(lambda: not _group_alive(pgid), STOP_TIMEOUT):
                raise RuntimeError(f"dovecot {self.name} processes survived SIGKILL")
        self._pgid = None
        # a stale pid file could name a reused pid and make the next start refuse to run
        self.pid_file.unlink(missing_ok=True)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop the instance and remove its directory if this object created it."""
        try:
            self.stop()
        finally:
            if self._owns_base:
                shutil.rmtree(self.base, ignore_errors=True)

    # --- administration --------------------------------------------------------------------

    def doveadm(self, *args: str) -> str:
        """Run ``doveadm -c <this config> ARGS...`` and return its stdout; raise on failure."""
        proc = subprocess.run([self._doveadm, "-c", str(self.config), *args], capture_output=True, text=True,
                              env=_clean_env(), timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"doveadm {' '.join(args)} on {self.name} failed (exit {proc.returncode}): "
                               f"{proc.stderr.strip()}")
        return proc.stdout

    def wipe_user(self, user: str) -> None:
        """Delete all of a user's mail and indexes, disconnecting the user's sessions first."""
        if not _USER_NAME.fullmatch(user):
            raise ValueError(f"bad user name {user!r}")
        if self.running:
            try:
                self.doveadm("kick", user)
            except RuntimeError:
                pass  # nobody connected
        shutil.rmtree(self.base / "mail" / user, ignore_errors=True)

    # --- mail ------------------------------------------------------------------------------

    def deliver(self, user: str, raw: bytes, folder: str | None = None) -> None:
        """Deliver one message by LMTP, into INBOX or into ``folder`` (created when missing)."""
        self.deliver_many(user, [raw], folder)

    def deliver_many(self, user: str, raws: Iterable[bytes], folder: str | None = None) -> int:
        """Deliver messages in order over one LMTP connection; returns how many were delivered."""
        rcpt = lmtp_recipient(user, folder)
        count = 0
        with smtplib.LMTP(self.host, self.lmtp_port, timeout=120) as lmtp:
            for raw in raws:
                code, reply = lmtp_send(lmtp, rcpt, raw)
                if code != 250:
                    raise DeliveryError(user, code, reply)
                count += 1
        return count

    def imap(self, user: str, *, master: bool = False) -> imaplib.IMAP4:
        """An IMAP connection logged in as ``user`` (with ``master=True``: via the master user)."""
        if master:
            return login_as_master(self.host, self.imap_port, user, self.master_user, self.master_password)
        return login_as_user(self.host, self.imap_port, user, self.user_password)


def _clean_env() -> dict[str, str]:
    """The environment minus Dovecot's exported config (DOVECONF_ENV makes ``-c`` be ignored)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DOVECONF")}


def _process_state(stat: Path) -> tuple[str, int] | None:
    """(state letter, process group) from /proc/<pid>/stat, or None if the process is gone."""
    try:
        text = stat.read_text()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp ...": comm may contain spaces and parentheses
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[2])


def _running(state: tuple[str, int] | None) -> bool:
    # zombies do not count: the daemonized master is reaped by init, which can take seconds
    # in a container, while its sockets and files are already released
    return state is not None and state[0] not in ("Z", "X")


def _process_alive(pid: int) -> bool:
    return _running(_process_state(Path(f"/proc/{pid}/stat")))


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running."""
    return any(_running(s) and s[1] == pgid for s in map(_process_state, Path("/proc").glob("[0-9]*/stat")))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _wait_until(done, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if done():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
