"""Scale on one gateway pair: 1,000 (or, with --ten-thousand, 10,000) small protected mailboxes.

A primary and a standby Dovecot (Debian's, its default imap `process_limit` of 1024; real users
from a passwd-file), one message per user delivered by LMTP, both gateways as real processes
(SQLite state, product defaults: 16 connections per server, 4 of them for push). Prints:

- protect-all time (the API call) and the time until every mailbox was seeded and replicating;
- while idle: connections each gateway holds per server (Dovecot's own count, `doveadm who`,
  peak and last, and the gateways' pools), CPU % of one core of each gateway, the phases;
- delivery -> standby latency p50/p90/p99/max over N deliveries (default 200) to random
  mailboxes (observed on the standby: inotify on the INBOX index, then IMAP; see
  tests/support/arrival_watch.py), and how many of them were seen;
- GET /api/v1/mailboxes time (source and recovery, median of 3);
- cutover of every mailbox (`POST /api/v1/cutover {"server": "primary", "all": true}`) time;
- the same cutover asked again through the CLI (`mailrepl cutover --all --server primary`: a no-op
  on the state, the request, the results of every mailbox and the table printed), or the other
  way round with ``--cutover-via cli``;
- peak RSS of each gateway (VmHWM).

    python tests/bench/bench_scale.py [--mailboxes 1000 | --ten-thousand] [--deliveries 200]
        [--idle-seconds 60] [--settle 30] [--gap 0.5] [--server-push] [--idle-poll-max S] [--keep]
        [--only idle,latency,listing,cutover] [--cutover-via api|cli] [--profile DIR] [--snapshot DIR]
        [--lock FILE]

``--lock FILE`` takes an exclusive ``flock`` on FILE around each timed step only (protect all, the
listing, the cutover), not while 10,000 mailboxes seed, so that runs of several benchmarks on one
host measure one at a time without one of them holding the others for its whole set-up.
``--only`` runs just the named phases after seeding (default: all of them); ``--profile DIR``
samples both gateways with py-spy during the listing and the cutover (raw profiles
``DIR/{listing,cutover}-{source,recovery}.txt``, summarised by ``tests/bench/profile_summary.py``).

Needs root (Dovecot instances run as the mail user) and Debian's dovecot-core/-imapd/-lmtpd.
The figures depend on the host: say how loaded it was (load average printed at the end).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import httpx

from tests.support.arrival_watch import ArrivalWatch
from tests.support.dovecot import DovecotServer, push_plugin_config
from tests.support.gateways import ADMIN_TOKEN, GatewayPair
from tests.support.net import free_port
from tests.bench.profile_summary import stop_profilers  # noqa: E402

HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def message(user: str, tag: str) -> bytes:
    return (f"From: bench@example.org\r\nTo: {user}@example.org\r\nSubject: {tag}\r\n"
            f"Message-ID: <{tag}.{user}@bench.example.org>\r\nDate: Sun, 6 Dec 2026 10:00:00 +0000\r\n\r\n"
            f"hello {user} {tag}\r\n").encode()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def imap_sessions(server: DovecotServer) -> int:
    lines = server.doveadm("who", "-1").splitlines()[1:]
    return sum(1 for line in lines if line.split()[1:2] == ["imap"])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def listing(url: str, path: str = "/api/v1/mailboxes") -> tuple[float, dict]:
    t = time.monotonic()
    r = httpx.get(url + path, headers=HEADERS, timeout=120)
    r.raise_for_status()
    return time.monotonic() - t, r.json()


PHASES = ("idle", "latency", "listing", "cutover")


def start_profilers(pids: dict[str, int], out: Path, phase: str) -> list[subprocess.Popen]:
    """py-spy on the gateway processes (all samples, idle threads left out)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out.mkdir(parents=True, exist_ok=True)
    procs = [subprocess.Popen([spy, "record", "--rate", "100", "--format", "raw", "--nonblocking",
                               "-o", str(out / f"{phase}-{role}.txt"), "--pid", str(pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for role, pid in pids.items()]
    time.sleep(1.0)  # let py-spy attach before the work starts
    return procs


def cli_cutover(config: Path) -> tuple[float, int, int]:
    """``mailrepl cutover --all --server primary``: seconds, exit code, lines printed."""
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "mailrepl", "cutover", "--all", "--server", "primary",
                        "--config", str(config)], check=False, capture_output=True, text=True, timeout=1200,
                       env=dict(os.environ, COLUMNS="120"))
    took = time.monotonic() - t
    if r.returncode not in (0, 1):
        print(f"  mailrepl cutover failed ({r.returncode}): {r.stderr[-500:]}")
    return took, r.returncode, r.stdout.count("\n")


@contextlib.contextmanager
def locked(path: str | None, what: str):
    """An exclusive flock on ``path`` (if given) while the block runs; says how long it waited."""
    if path is None:
        yield
        return
    with open(path, "a") as f:
        t = time.monotonic()
        fcntl.flock(f, fcntl.LOCK_EX)
        print(f"  ({what}: waited {time.monotonic() - t:.1f} s for {path}, load average "
              f"{os.getloadavg()[0]:.1f})")
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class SessionSampler:
    """Dovecot's count of logged-in IMAP sessions on each server, every ``interval`` s."""

    def __init__(self, servers: dict[str, DovecotServer], interval: float = 1.0) -> None:
        self.servers, self.interval = servers, interval
        self.peak = dict.fromkeys(servers, 0)
        self.last = dict.fromkeys(servers, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for name, server in self.servers.items():
                try:
                    n = imap_sessions(server)
                except RuntimeError:
                    continue
                self.last[name] = n
                self.peak[name] = max(self.peak[name], n)

    def start(self) -> SessionSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mailboxes", type=int, default=1000)
    ap.add_argument("--ten-thousand", action="store_true", help="10,000 mailboxes")
    ap.add_argument("--deliveries", type=int, default=200)
    ap.add_argument("--targets", type=int, default=100, help="mailboxes the deliveries go to (random, distinct)")
    ap.add_argument("--gap", type=float, default=0.5, help="seconds between two deliveries")
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=30.0, help="seconds idle before the idle measurement")
    ap.add_argument("--server-push", action="store_true",
                    help="the primary posts wake-ups (Dovecot push_notification, deploy/dovecot/mailrepl-push.lua)")
    ap.add_argument("--idle-poll-max", type=float, default=None,
                    help="the source's idle_poll_max (default: the product's, 120 s; 900 s is enough with --server-push)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--only", default=",".join(PHASES),
                    help=f"phases after seeding, comma-separated (default: all of {','.join(PHASES)})")
    ap.add_argument("--cutover-via", choices=("api", "cli"), default="api",
                    help="which path does the cutover (the other one then asks again, a no-op)")
    ap.add_argument("--profile", help="py-spy both gateways during the listing and the cutover; raw profiles here")
    ap.add_argument("--lock", help="flock this file around each timed step (not the set-up)")
    ap.add_argument("--snapshot", help="copy both gateways' SQLite state here before the listing and the cutover "
                                       "(to profile them in process)")
    args = ap.parse_args()
    only = {p.strip() for p in args.only.split(",") if p.strip()}
    if only - set(PHASES):
        ap.error(f"--only: unknown phase(s) {sorted(only - set(PHASES))}; known: {','.join(PHASES)}")
    n = 10_000 if args.ten_thousand else args.mailboxes
    users = [f"u{i:05d}" for i in range(n)]
    work = Path(tempfile.mkdtemp(prefix="mailrepl-bench-scale-"))
    rnd = random.Random(14)
    t_setup = time.monotonic()
    source_port = free_port()
    push = ""
    if args.server_push:
        push = push_plugin_config(work, f"http://127.0.0.1:{source_port}/api/v1/push/primary", ADMIN_TOKEN)
    primary = DovecotServer("primary", users, extra_config=push)
    standby = DovecotServer("standby", users)
    primary.start()
    standby.start()
    pair = None
    try:
        for u in users:
            primary.deliver(u, message(u, "seed"))
        print(f"{n} users on both servers, one message each delivered by LMTP in {time.monotonic() - t_setup:.1f} s")
        pair = GatewayPair(work, primary, standby, users=users, source_state=f"sqlite:///{work}/source.sqlite",
                           recovery_state=f"sqlite:///{work}/recovery.sqlite", poll_interval=5.0,
                           source_port=source_port,
                           source_gateway_extra=(f"idle_poll_max = {args.idle_poll_max}\n"
                                                 if args.idle_poll_max else ""))
        print(f"server push: {'on' if args.server_push else 'off'}, idle_poll_max "
              f"{args.idle_poll_max or 'default'}")
        pair.start()
        src_pid, rec_pid = pair.source.proc.pid, pair.recovery.proc.pid
        sampler = SessionSampler({"primary": primary, "standby": standby}).start()

        with locked(args.lock, "protect all"):
            t = time.monotonic()
            r = httpx.put(pair.source.url + "/api/v1/servers/primary/protection", json={"enabled": True},
                          headers=HEADERS, timeout=600)
            r.raise_for_status()
            protect_s = time.monotonic() - t
        print(f"protect all ({n}, PUT /api/v1/servers/primary/protection): {protect_s:.2f} s")
        deadline = time.monotonic() + max(1800, n * 0.5)
        phases: dict[str, int] = {}
        while time.monotonic() < deadline:
            _, body = listing(pair.source.url)
            ms = body["mailboxes"]
            phases = {}
            for m in ms:
                phases[m["phase"]] = phases.get(m["phase"], 0) + 1
            done = sum(1 for m in ms if m["phase"] == "replicating" and m["last_applied_seq"] == m["last_captured_seq"]
                       and m["last_captured_seq"] > 0)
            if done == n:
                break
            time.sleep(3)
        seeded_s = time.monotonic() - t
        print(f"all {n} seeded and replicating after {seeded_s:.1f} s (phases {phases}); "
              f"sessions at peak so far: primary {sampler.peak['primary']}, standby {sampler.peak['standby']}")

        if "idle" in only:
            time.sleep(args.settle)
            c0 = (cpu_seconds(src_pid), cpu_seconds(rec_pid))
            w0 = time.monotonic()
            peak_before = dict(sampler.peak)
            sampler.peak = dict.fromkeys(sampler.peak, 0)
            time.sleep(args.idle_seconds)
            c1 = (cpu_seconds(src_pid), cpu_seconds(rec_pid))
            idle_wall = time.monotonic() - w0
            _, sh = listing(pair.source.url, "/healthz")
            _, rh = listing(pair.recovery.url, "/healthz")
            _, body = listing(pair.source.url)
            phases = {}
            for m in body["mailboxes"]:
                phases[m["phase"]] = phases.get(m["phase"], 0) + 1
            errors = sum(1 for m in body["mailboxes"] if m["error"])
            print(f"idle {idle_wall:.0f} s: CPU source {100 * (c1[0] - c0[0]) / idle_wall:.1f} %, "
                  f"recovery {100 * (c1[1] - c0[1]) / idle_wall:.1f} % of one core")
            print(f"  IMAP sessions (doveadm who): primary peak {sampler.peak['primary']} (now "
                  f"{sampler.last['primary']}), standby peak {sampler.peak['standby']} (now {sampler.last['standby']}); "
                  f"peak during seeding: primary {peak_before['primary']}, standby {peak_before['standby']}")
            print(f"  pools: source {sh.get('connections')}, push watchers {sh.get('push_watchers')}; "
                  f"recovery {rh.get('connections')}")
            print(f"  phases {phases}, mailboxes with an error: {errors}")

        if "latency" in only:
            targets = rnd.sample(users, min(args.targets, n))
            mail_dirs = {u: standby.base / "mail" / u / "mdbox" / "mailboxes" / "INBOX" / "dbox-Mails" for u in targets}
            watch = ArrivalWatch(lambda _u: socket.create_connection(("127.0.0.1", standby.imap_port), timeout=30),
                                 targets, mail_dirs, standby.master_user, standby.master_password)
            watch.start()
            accepted: dict[str, float] = {}
            try:
                for i in range(args.deliveries):
                    u = rnd.choice(targets)
                    tag = f"live{i}"
                    primary.deliver(u, message(u, tag))
                    accepted[f"<{tag}.{u}@bench.example.org>"] = time.monotonic()
                    time.sleep(args.gap)
                wait_until = time.monotonic() + 180
                while time.monotonic() < wait_until and not all(k in watch.seen for k in accepted):
                    time.sleep(0.5)
            finally:
                watch.stop()
            lags = [watch.seen[k] - t0 for k, t0 in accepted.items() if k in watch.seen]
            print(f"delivery -> standby over {len(accepted)} deliveries to {len(targets)} random mailboxes, "
                  f"{args.gap:g} s apart: seen {len(lags)}; p50 {percentile(lags, 50):.2f} s, p90 "
                  f"{percentile(lags, 90):.2f} s, p99 {percentile(lags, 99):.2f} s, max {max(lags, default=float('nan')):.2f} s")

        pids = {"source": src_pid, "recovery": rec_pid}
        if args.snapshot:
            Path(args.snapshot).mkdir(parents=True, exist_ok=True)
            for role in pids:
                with sqlite3.connect(work / f"{role}.sqlite") as src, \
                        sqlite3.connect(Path(args.snapshot) / f"{role}.sqlite") as dst:
                    src.backup(dst)
            shutil.copyfile(work / "recovery.toml", Path(args.snapshot) / "recovery.toml")
            shutil.copyfile(work / "source.toml", Path(args.snapshot) / "source.toml")
            print(f"state copied to {args.snapshot}")
        if "listing" in only:
            spies = start_profilers(pids, Path(args.profile), "listing") if args.profile else []
            with locked(args.lock, "listing"):
                src_list = [listing(pair.source.url)[0] for _ in range(3)]
                rec_list = [listing(pair.recovery.url)[0] for _ in range(3)]
            stop_profilers(spies)
            print(f"GET /api/v1/mailboxes ({n}): source median {statistics.median(src_list):.2f} s "
                  f"(max {max(src_list):.2f}), recovery median {statistics.median(rec_list):.2f} s "
                  f"(max {max(rec_list):.2f})")
        if "cutover" in only:
            spies = start_profilers(pids, Path(args.profile), "cutover") if args.profile else []
            with locked(args.lock, "cutover"):
                again = "  asked again (a no-op) by "
                if args.cutover_via == "cli":
                    cli_s, rc, lines = cli_cutover(pair.recovery.config)
                    print(f"cutover of all {n} (mailrepl cutover --all --server primary): {cli_s:.2f} s "
                          f"(exit {rc}, {lines} lines printed)")
                t = time.monotonic()
                r = httpx.post(pair.recovery.url + "/api/v1/cutover", json={"server": "primary", "all": True},
                               headers=HEADERS, timeout=1200)
                cut_s = time.monotonic() - t
                ok = r.status_code == 200
                detail = r.json() if ok else r.text[:300]
                results = detail.get("results", detail) if isinstance(detail, dict) else detail
                states: dict[str, int] = {}
                if isinstance(results, list):
                    for item in results:
                        key = f"{item.get('state')}/{item.get('status')}"
                        states[key] = states.get(key, 0) + 1
                print(f"{again if args.cutover_via == 'cli' else ''}cutover of all {n} "
                      f"(POST /api/v1/cutover): {cut_s:.2f} s (HTTP {r.status_code}; {states or detail})")
                if args.cutover_via == "api":
                    cli_s, rc, lines = cli_cutover(pair.recovery.config)
                    print(f"{again}mailrepl cutover --all --server primary: {cli_s:.2f} s "
                          f"(exit {rc}, {lines} lines printed)")
            stop_profilers(spies)
        print(f"peak RSS: source {peak_rss_mb(src_pid):.0f} MB, recovery {peak_rss_mb(rec_pid):.0f} MB")
        sampler.stop()
        print(f"load average at the end: {os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} cores")
    finally:
        if pair is not None:
            pair.stop()
        for s in (primary, standby):
            s.cleanup()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
