#!/usr/bin/env python3
"""mailrepl demo: a primary and a standby Dovecot on loopback, both gateways, live replication.

1. starts the Dovecot pair (deploy/dovecot/mailpair.sh) with users alice, bob, carol, dave;
2. starts the recovery and the source gateway with deploy/examples/{recovery,source}.toml;
3. delivers sample mail by LMTP, protects alice, bob and carol (dave stays unprotected) and shows
   the seeding progress;
4. makes changes on the primary as a mail client would (flags, read state, delete + expunge,
   move, folder create / rename / delete, a draft replaced) and delivers more mail;
5. prints the live status, then compares every protected mailbox on the two servers folder by
   folder (SHA-256 of each message's raw bytes, flags and keywords, internal date) and checks that
   dave is absent from the standby. Exit status 0 only if the standby equals the primary.

    python3 deploy/demo.py [--base DIR] [--keep]
"""
from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import imaplib
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "deploy" / "examples"
MAILPAIR = REPO / "deploy" / "dovecot" / "mailpair.sh"
PRIMARY = dict(imap=10143, lmtp=10024)
STANDBY = dict(imap=11143, lmtp=11024)
SOURCE_API = "http://127.0.0.1:8470"
RECOVERY_API = "http://127.0.0.1:8471"
TOKEN = "demo-admin-Qm2xV7pL4sK8nR3tW6yZ1cB"  # the examples' admin token
PROTECTED = ["alice", "bob", "carol"]
USERS = PROTECTED + ["dave"]


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def sample(i: int, user: str, attach: bool) -> bytes:
    head = (f"From: Sender {i} <sender{i}@example.org>\r\nTo: {user}@example.org\r\n"
            f"Subject: demo message {i} for {user}\r\nMessage-ID: <demo{i}.{user}@example.org>\r\n"
            f"Date: Mon, 2 Sep 2024 09:{i % 60:02d}:00 +0200\r\nMIME-Version: 1.0\r\n")
    text = f"Hello {user},\r\n\r\nthis is demo message {i}.\r\n"
    if not attach:
        return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text).encode()
    encoded = base64.b64encode(hashlib.sha256(f"{i}".encode()).digest() * 2000).decode()
    b64 = "\r\n".join(encoded[k:k + 76] for k in range(0, len(encoded), 76))
    return (head + 'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\n'
            "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text + "\r\n--b1\r\n"
            f'Content-Type: application/octet-stream; name="data{i}.bin"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
            + b64 + "\r\n--b1--\r\n").encode()


def deliver(user: str, raws: list[bytes], folder: str | None = None) -> None:
    rcpt = f"{user}+{folder}@localhost" if folder else f"{user}@localhost"
    with smtplib.LMTP("127.0.0.1", PRIMARY["lmtp"]) as lmtp:
        for raw in raws:
            lmtp.sendmail("demo@example.org", [rcpt], raw)


def imap(port: int, user: str) -> imaplib.IMAP4:
    M = imaplib.IMAP4("127.0.0.1", port)
    M.login(f"{user}*repl", "secret")  # the demo servers' master user
    return M


def uid_of(M: imaplib.IMAP4, subject: str) -> bytes:
    typ, data = M.uid("SEARCH", None, "HEADER", "Subject", f'"{subject}"')
    if typ != "OK" or not data[0]:
        raise SystemExit(f"demo: message {subject!r} not found on the primary")
    return data[0].split()[-1]


def user_changes() -> None:
    M = imap(PRIMARY["imap"], "alice")
    M.select("INBOX")
    M.uid("STORE", uid_of(M, "demo message 1 for alice"), "+FLAGS", "(\\Flagged $Important)")
    M.uid("STORE", uid_of(M, "demo message 2 for alice"), "+FLAGS", "(\\Seen)")
    M.uid("STORE", uid_of(M, "demo message 2 for alice"), "-FLAGS", "(\\Seen)")
    M.uid("STORE", uid_of(M, "demo message 3 for alice"), "+FLAGS", "(\\Seen)")
    M.uid("STORE", uid_of(M, "demo message 4 for alice"), "+FLAGS", "(\\Deleted)")
    M.expunge()
    M.create("Projects")
    M.uid("MOVE", uid_of(M, "demo message 5 for alice"), "Projects")
    M.rename("Projects", "Projects-2024")
    M.create("Scratch")
    M.delete("Scratch")
    M.append("Drafts", "(\\Draft)", None, b"Subject: plan\r\nMessage-ID: <plan@example.org>\r\n\r\nfirst draft\r\n")
    M.select("Drafts")
    old = uid_of(M, "plan")
    M.append("Drafts", "(\\Draft \\Seen)", None, b"Subject: plan\r\nMessage-ID: <plan@example.org>\r\n\r\nsecond draft\r\n")
    M.uid("STORE", old, "+FLAGS", "(\\Deleted)")
    M.uid("EXPUNGE", old)
    M.logout()
    M = imap(PRIMARY["imap"], "bob")
    M.select("INBOX")
    M.uid("STORE", "1:*", "+FLAGS", "(\\Seen)")
    M.logout()


def snapshot(port: int, user: str) -> dict[str, collections.Counter]:
    M = imap(port, user)
    out: dict[str, collections.Counter] = {}
    typ, lines = M.list('""', "*")
    for line in lines:
        text = line.decode()
        if "\\Noselect" in text or "\\NonExistent" in text:
            continue
        name = re.match(r'\(.*?\) (?:"."|NIL) (.*)$', text).group(1).strip('"')
        M.select(f'"{name}"', readonly=True)
        c: collections.Counter = collections.Counter()
        typ, data = M.uid("FETCH", "1:*", "(FLAGS INTERNALDATE BODY.PEEK[])")
        for item in data:
            if isinstance(item, tuple):
                meta = item[0].decode()
                flags = frozenset(re.search(r"FLAGS \((.*?)\)", meta).group(1).split()) - {"\\Recent"}
                date = re.search(r'INTERNALDATE "([^"]+)"', meta).group(1)
                c[(hashlib.sha256(item[1]).hexdigest(), flags, date)] += 1
        out[name] = c
    M.logout()
    return out


def api(path: str) -> dict:
    r = httpx.get(SOURCE_API + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    r.raise_for_status()
    return r.json()


def captured() -> dict[str, int]:
    return {m["address"]: m["last_captured_seq"] for m in api("/api/v1/mailboxes")["mailboxes"]}


def wait_synced(after: dict[str, int] | None = None, timeout: float = 180) -> None:
    """Until every protected mailbox has captured past ``after`` (changes just made are seen, not
    only those before them) and the standby has applied all of it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = {m["address"]: m for m in api("/api/v1/mailboxes")["mailboxes"]}
        if all(st[a]["phase"] == "replicating" and st[a]["copy_queue"] == 0 and st[a]["replay_queue"] == 0
               and st[a]["last_applied_seq"] == st[a]["last_captured_seq"]
               and st[a]["last_captured_seq"] > (after or {}).get(a, -1) for a in PROTECTED):
            return
        time.sleep(0.3)
    raise SystemExit("demo: the standby did not catch up in time")


def start_gateway(role: str, base: Path) -> subprocess.Popen:
    env = dict(os.environ, MAILREPL_STATE_URL=f"sqlite:///{base}/{role}.sqlite", MAILREPL_BLOB_DIR=f"{base}/blobs")
    log = open(base / f"{role}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "mailrepl", role, "run", "--config", str(EXAMPLES / f"{role}.toml")],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = SOURCE_API if role == "source" else RECOVERY_API
    for _ in range(150):
        if proc.poll() is not None:
            raise SystemExit(f"demo: the {role} gateway exited; see {base}/{role}.log")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"demo: the {role} gateway did not come up; see {base}/{role}.log")


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "mailrepl", *args, "--config", str(EXAMPLES / "source.toml")],
                   cwd=REPO, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="/tmp/mailrepl-demo", help="work directory (Dovecot pair, state, logs)")
    ap.add_argument("--keep", action="store_true", help="leave servers and gateways running at the end")
    a = ap.parse_args()
    base = Path(a.base)
    if base.exists():
        subprocess.run(["bash", str(MAILPAIR), "stop", str(base)], stderr=subprocess.DEVNULL)
        shutil.rmtree(base)
    base.mkdir(parents=True)
    env = dict(os.environ, USERS=" ".join(USERS))
    procs: list[subprocess.Popen] = []
    try:
        say("starting a primary (IMAP 10143) and a standby (IMAP 11143) Dovecot on loopback")
        subprocess.run(["bash", str(MAILPAIR), "setup", str(base)], check=True, env=env)
        subprocess.run(["bash", str(MAILPAIR), "start", str(base)], check=True, env=env)
        say("starting the recovery gateway (:8471) and the source gateway (:8470)")
        procs.append(start_gateway("recovery", base))
        procs.append(start_gateway("source", base))

        say("delivering sample mail to the primary by LMTP")
        for user in USERS:
            deliver(user, [sample(i, user, attach=i % 5 == 0) for i in range(40)])
            deliver(user, [sample(i, user, attach=False) for i in range(40, 50)], folder="Lists/dev")
        say("protecting alice, bob and carol (dave stays unprotected); seeding")
        cli("protect", *PROTECTED, "--wait")

        say("user changes on the primary: flags, read state, delete, move, folders, a draft replaced")
        before = captured()
        user_changes()
        for user in PROTECTED:
            deliver(user, [sample(i, user, attach=True) for i in range(50, 55)])
        time.sleep(1)  # the last deliveries are captured with the others, not on their own
        wait_synced(after=before)
        say("status")
        cli("status")

        say("comparing the standby with the primary")
        ok = True
        deadline = time.monotonic() + 60  # a change made at the very end may still be on its way
        while True:
            snaps = {user: (snapshot(PRIMARY["imap"], user), snapshot(STANDBY["imap"], user)) for user in PROTECTED}
            if all(p == s for p, s in snaps.values()) or time.monotonic() > deadline:
                break
            time.sleep(1)
        for user in PROTECTED:
            p, s = snaps[user]
            same = p == s
            ok &= same
            n = sum(sum(c.values()) for c in p.values())
            print(f"  {user:6s} {len(p)} folders, {n} messages: {'EQUAL' if same else 'DIFFERENT'}")
            if not same:
                for f in sorted(set(p) | set(s)):
                    if p.get(f) != s.get(f):
                        print(f"    folder {f!r}: primary {sum(p.get(f, {}).values())}, standby {sum(s.get(f, {}).values())}")
        dave_on_standby = (base / "standby" / "mail" / "dave").exists()
        print(f"  dave   unprotected: {'PRESENT on the standby (wrong)' if dave_on_standby else 'absent from the standby'}")
        ok &= not dave_on_standby
        say("the standby equals the primary" if ok else "MISMATCH: the standby differs from the primary")
        return 0 if ok else 1
    finally:
        if not a.keep:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(15)
            subprocess.run(["bash", str(MAILPAIR), "stop", str(base)], stdout=subprocess.DEVNULL)
        else:
            print(f"\nleft running; logs and state in {base}")
            print("web console: http://127.0.0.1:8470/ui/ (source) and http://127.0.0.1:8471/ui/ (recovery),"
                  " sign in with the admin_token of deploy/examples/source.toml / recovery.toml")


if __name__ == "__main__":
    sys.exit(main())
