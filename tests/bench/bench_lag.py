#!/usr/bin/env python3
"""Replication lag benchmark: delivery on the primary -> visible on the standby, over the two-site rig.

Not a test: it prints figures (the machines are noisy, so nothing here asserts a speed).

1. Builds the two-site rig (``tests/support/two_site.py``): the primary Dovecot and the source
   gateway here, the standby Dovecot and the recovery gateway in their own network namespace,
   the gateways talking across a veth link through the delay relay.
2. Delivers ``--initial`` messages to each of ``--mailboxes`` mailboxes, protects them all and
   waits until the initial seed is applied everywhere.
3. For each link (``clean``: nothing added; ``impaired``: ``--delay`` ± ``--jitter`` ms each way
   and ``--loss`` % packet loss each way) it delivers by LMTP at ``--rate`` deliveries/s for
   ``--duration`` s, each to a mailbox drawn at random (seeded) among all of them, each with a
   unique Message-ID, on a fixed schedule, through ``--senders`` LMTP sessions side by side (as an
   MTA delivers): each delivery goes, when due, to whichever session is free.
4. Lag of a delivery = from the moment the LMTP server accepted it (the 250 reply to DATA) to
   the moment an IMAP session on the standby first showed it. The standby is watched by
   ``tests/support/arrival_watch.py``: inotify on each INBOX's transaction log wakes a check over
   one persistent session per mailbox, made inside the namespace on its loopback (it neither
   crosses the impaired link nor costs the gateways anything); the time stamp is when that
   check's answer arrived, so a lag is never under-reported. IDLE is not used: Dovecot delays
   its notifications by 500 ms.
5. Prints p50 / p90 / p99 / max lag, delivered / seen / never seen (after ``--drain`` s), how far
   the delivery schedule slipped, the bytes that crossed the link, packets the loss rules dropped,
   and the CPU both gateways used during the phase.

With ``--profile DIR`` both gateways are sampled by ``py-spy`` (samples holding the GIL, 100 Hz)
during each phase's deliveries, into ``DIR/<link>-source.txt`` and ``DIR/<link>-recovery.txt``
(summarise with ``tests/bench/profile_summary.py``). The sampler costs CPU of its own: compare
lag and CPU figures of runs without it.

    python tests/bench/bench_lag.py [--duration 60] [--rate 50] [--mailboxes 200] [--links clean,impaired]
        [--senders 4] [--server-push] [--max-connections N] [--push-connections N] [--profile DIR]

Needs root (network namespaces), Debian's dovecot-imapd/dovecot-lmtpd, iproute2 and nftables.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from tests.bench.profile_summary import stop_profilers  # noqa: E402
from tests.support.arrival_watch import ArrivalWatch  # noqa: E402
from tests.support.dovecot import lmtp_recipient, lmtp_send, push_plugin_config  # noqa: E402
from tests.support.gateways import ADMIN_TOKEN  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.netns import socket_in_netns  # noqa: E402
from tests.support.two_site import TwoSiteRig  # noqa: E402


def start_profilers(rig: TwoSiteRig, out: Path, link: str) -> list[subprocess.Popen]:
    """py-spy on both gateway processes, samples holding the GIL (CPU spent in Python)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out.mkdir(parents=True, exist_ok=True)
    procs = [subprocess.Popen([spy, "record", "--gil", "--rate", "100", "--format", "raw", "--nonblocking",
                               "-o", str(out / f"{link}-{g.role}.txt"), "--pid", str(g.proc.pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for g in (rig.pair.source, rig.pair.recovery)]
    time.sleep(1.0)  # let py-spy attach before the deliveries start
    return procs


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(server) -> float:
    """CPU of a Dovecot instance so far: its master with the children it reaped, plus every live
    process of its process group (the master calls setsid(); a child that exits is then counted
    through the master's cutime/cstime, so differences between two readings stay right)."""
    master = int(server.pid_file.read_text().strip())
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process exited meanwhile
            continue
        if int(fields[2]) != master:
            continue
        total += int(fields[11]) + int(fields[12])
        if int(stat.parent.name) == master:
            total += int(fields[13]) + int(fields[14])
    return total / tick


def message(tag: str, i: int, user: str, rnd: random.Random) -> tuple[str, bytes]:
    msgid = f"<lag.{tag}.{i}.{user}@bench.example.org>"
    words = " ".join(rnd.choice(("mail", "standby", "replica", "lag", "site", "link", "queue")) for _ in range(300))
    raw = (f"From: bench@example.org\r\nTo: {user}@example.org\r\nSubject: lag {tag} {i}\r\n"
           f"Message-ID: {msgid}\r\nDate: Sun, 6 Dec 2026 10:00:00 +0000\r\n\r\n{words}\r\n").encode()
    return msgid, raw


def deliver_schedule(rig: TwoSiteRig, tag: str, rate: float, duration: float, seed: int,
                     accepted: dict[str, float], senders: int) -> float:
    """Deliver on a fixed schedule into ``accepted`` (Message-ID -> time accepted); returns the worst
    slip behind schedule (from a delivery's due time to the moment a session started it).

    ``senders`` LMTP sessions deliver side by side, as an MTA does (Postfix opens several per
    destination): each delivery is handed, when due, to whichever session is free, so one slow
    delivery (with server push, one includes the push script's HTTP post) does not hold back
    the schedule."""
    rnd = random.Random(seed)
    total = int(rate * duration)
    plan = []
    for i in range(total):
        user = rnd.choice(rig.users)
        plan.append((i, user) + message(tag, i, user, rnd))
    due_q: queue.Queue = queue.Queue()
    slips: list[float] = []
    failures: list[str] = []

    def sender() -> None:
        with smtplib.LMTP(rig.primary.host, rig.primary.lmtp_port, timeout=60) as lmtp:
            while (item := due_q.get()) is not None:
                due, (_i, user, msgid, raw) = item
                slips.append(time.monotonic() - due)
                code, reply = lmtp_send(lmtp, lmtp_recipient(user, None), raw)
                if code != 250:
                    failures.append(f"LMTP refused a delivery to {user}: {code} {reply!r}")
                    continue
                accepted[msgid] = time.monotonic()

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(max(1, senders))]
    for t in threads:
        t.start()
    start = time.monotonic()
    for entry in plan:
        due = start + entry[0] / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        due_q.put((due, entry))
    for _ in threads:
        due_q.put(None)
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"bench_lag: {len(failures)} deliveries refused, first: {failures[0]}")
    return max(slips, default=0.0)


class QueueSampler:
    """Where the backlog sits, every ``interval`` s from the source gateway's status: changes not yet
    captured (deliveries accepted minus changes captured since the phase began), the copy queue
    (captured, not received at DR) and the replay queue (received, not applied)."""

    def __init__(self, rig: TwoSiteRig, accepted: dict, interval: float) -> None:
        self.rig, self.accepted, self.interval = rig, accepted, interval
        self.samples: list[tuple[float, int, int, int]] = []
        self._base = self._captured()[0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _captured(self) -> tuple[int, int, int]:
        st = self.rig.pair.status()
        return (sum(m["last_captured_seq"] or 0 for m in st.values()), sum(m["copy_queue"] or 0 for m in st.values()),
                sum(m["replay_queue"] or 0 for m in st.values()))

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(self.interval):
            try:
                delivered = len(self.accepted)
                captured, copy, replay = self._captured()
            except Exception:  # the API may be slow for a moment; skip the sample
                continue
            self.samples.append((time.monotonic() - start, delivered - (captured - self._base), copy, replay))

    def __enter__(self) -> QueueSampler:
        if self.interval > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def summary(self) -> dict:
        if not self.samples:
            return {}
        return {name: {"mean": sum(s[i] for s in self.samples) / len(self.samples), "max": max(s[i] for s in self.samples)}
                for i, name in ((1, "not_captured"), (2, "copy_queue"), (3, "replay_queue"))}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def source_pools(rig: TwoSiteRig) -> dict:
    """The source gateway's connections per server and its push watchers (its /healthz)."""
    try:
        r = httpx.get(rig.pair.source.url + "/healthz", timeout=10)
        body = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        return {"error": str(exc)}
    return {"connections": body.get("connections"), "push_watchers": body.get("push_watchers")}


def run_phase(rig: TwoSiteRig, name: str, args, watch: ArrivalWatch) -> dict:
    spies = start_profilers(rig, Path(args.profile), name) if args.profile else []
    crossed0, cpu0 = rig.bytes_crossed(), (cpu_seconds(rig.pair.source.proc.pid), cpu_seconds(rig.pair.recovery.proc.pid))
    servers0 = (server_cpu_seconds(rig.primary), server_cpu_seconds(rig.standby))
    dropped0 = rig.dropped()["packets"]
    t0 = time.monotonic()
    accepted: dict[str, float] = {}
    with QueueSampler(rig, accepted, args.queue_interval) as sampler:
        try:
            slip = deliver_schedule(rig, name, args.rate, args.duration, args.seed + len(name), accepted,
                                    args.senders)
        finally:
            stop_profilers(spies)
        pools = source_pools(rig)  # at the end of the deliveries: what the source holds
        deadline = time.monotonic() + args.drain
        while time.monotonic() < deadline and not all(m in watch.seen for m in accepted):
            time.sleep(0.2)
    lags = [watch.seen[m] - t for m, t in accepted.items() if m in watch.seen]
    # a delivery never seen counts as an infinite lag: percentiles then say "not seen" rather
    # than leave the slowest deliveries out
    ranked = lags + [float("inf")] * (len(accepted) - len(lags))
    # the next link must not start with this one's backlog (the gateways' status cannot show
    # changes not yet captured, so wait for the standby itself)
    catch_up = time.monotonic() + 900
    while time.monotonic() < catch_up and not all(m in watch.seen for m in accepted):
        time.sleep(0.5)
    crossed1 = rig.bytes_crossed()
    cpu1 = (cpu_seconds(rig.pair.source.proc.pid), cpu_seconds(rig.pair.recovery.proc.pid))
    servers1 = (server_cpu_seconds(rig.primary), server_cpu_seconds(rig.standby))
    return {
        "link": name, "delivered": len(accepted), "seen": len(lags), "never_seen": len(accepted) - len(lags),
        "p50_s": percentile(ranked, 0.50), "p90_s": percentile(ranked, 0.90), "p99_s": percentile(ranked, 0.99),
        "max_s": max(ranked) if ranked else float("nan"), "schedule_slip_max_s": slip,
        "load_average_1min": os.getloadavg()[0],
        "wall_s": time.monotonic() - t0,
        "bytes_to_dr": crossed1["to_ns"] - crossed0["to_ns"], "bytes_from_dr": crossed1["from_ns"] - crossed0["from_ns"],
        "packets_dropped": rig.dropped()["packets"] - dropped0 if name != "clean" else 0,
        "cpu_source_s": cpu1[0] - cpu0[0], "cpu_recovery_s": cpu1[1] - cpu0[1],
        "cpu_primary_dovecot_s": servers1[0] - servers0[0], "cpu_standby_dovecot_s": servers1[1] - servers0[1],
        "backlog": sampler.summary(),
        "source_pools": pools,
        "all_seen_after_s": max(watch.seen.get(m, float("inf")) for m in accepted) - max(accepted.values()),
        # each delivery: seconds after the phase's first, its lag (None: never seen), the mailbox
        "deliveries": [(t - min(accepted.values()), watch.seen[m] - t if m in watch.seen else None,
                        m.split(".", 3)[3].split("@", 1)[0]) for m, t in sorted(accepted.items(), key=lambda i: i[1])],
    }


def report(result: dict, args) -> None:
    print(f"\n== {result['link']} link: {result['delivered']} deliveries at {args.rate:g}/s over "
          f"{args.mailboxes} mailboxes ({args.duration:g} s)")
    shown = {k: "not seen" if result[k] == float("inf") else f"{result[k]:.3f} s"
             for k in ("p50_s", "p90_s", "p99_s", "max_s")}
    print(f"   lag p50 {shown['p50_s']}   p90 {shown['p90_s']}   p99 {shown['p99_s']}   max {shown['max_s']}")
    print(f"   delivered {result['delivered']}, seen {result['seen']}, never seen {result['never_seen']} "
          f"(after {args.drain:g} s of drain); delivery schedule slipped at most {result['schedule_slip_max_s']:.3f} s")
    print(f"   every delivery seen {result['all_seen_after_s']:.1f} s after the last one was accepted")
    print(f"   link bytes: {result['bytes_to_dr']:,} to DR, {result['bytes_from_dr']:,} back; "
          f"packets dropped by the loss rules: {result['packets_dropped']:,}")
    print(f"   CPU during the phase: source gateway {result['cpu_source_s']:.1f} s, "
          f"recovery gateway {result['cpu_recovery_s']:.1f} s, primary Dovecot {result['cpu_primary_dovecot_s']:.1f} s, "
          f"standby Dovecot {result['cpu_standby_dovecot_s']:.1f} s; machine load average (1 min) at the end "
          f"{result['load_average_1min']:.1f} on {os.cpu_count()} cores")
    print(f"   source at the end of the deliveries: {result['source_pools']}")
    if result["backlog"]:
        print("   backlog (changes, mean / max over the phase): " + ", ".join(
            f"{k.replace('_', ' ')} {v['mean']:.0f} / {v['max']}" for k, v in result["backlog"].items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mailboxes", type=int, default=200)
    ap.add_argument("--rate", type=float, default=50.0, help="deliveries per second (default 50)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of deliveries per link (default 60)")
    ap.add_argument("--senders", type=int, default=4,
                    help="LMTP sessions delivering side by side on the schedule (default 4)")
    ap.add_argument("--links", default="clean,impaired", help="comma-separated: clean, impaired")
    ap.add_argument("--delay", type=float, default=50.0, help="impaired: one-way delay in ms (default 50)")
    ap.add_argument("--jitter", type=float, default=10.0, help="impaired: ± ms (default 10)")
    ap.add_argument("--loss", type=float, default=1.0, help="impaired: packet loss %% each way (default 1)")
    ap.add_argument("--initial", type=int, default=2, help="messages per mailbox before protecting (default 2)")
    ap.add_argument("--drain", type=float, default=30.0, help="seconds to wait for the last deliveries")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--poll-interval", type=float, default=5.0,
                    help="source gateway poll_interval (default 5, the product default; push wake-ups come sooner)")
    ap.add_argument("--queue-interval", type=float, default=2.0,
                    help="seconds between backlog samples from the source's status API (0: none)")
    ap.add_argument("--server-push", action="store_true",
                    help="the primary posts wake-ups to the source gateway (Dovecot push_notification, "
                         "deploy/dovecot/mailrepl-push.lua)")
    ap.add_argument("--max-connections", type=int, help="both gateways' max_connections per server (default: the product's)")
    ap.add_argument("--push-connections", type=int, help="the source's push_connections (default: the product's)")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--profile", help="sample both gateways with py-spy during each phase's deliveries; raw "
                                      "profiles go to this directory")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args()
    links = [x.strip() for x in args.links.split(",") if x.strip()]
    if not links or set(links) - {"clean", "impaired"}:
        ap.error("--links takes clean and/or impaired")

    work = Path(tempfile.mkdtemp(prefix="mailrepl-bench-lag-"))
    results = []
    options, server_extra = {}, ""
    if args.max_connections:
        server_extra += f"max_connections = {args.max_connections}\n"
    if args.push_connections is not None:
        server_extra += f"push_connections = {args.push_connections}\n"
    if server_extra:
        options["server_extra"] = server_extra
    primary_extra = ""
    if args.server_push:
        options["source_port"] = free_port()
        primary_extra = push_plugin_config(work, f"http://127.0.0.1:{options['source_port']}/api/v1/push/primary",
                                           ADMIN_TOKEN)
    print(f"server push: {'on' if args.server_push else 'off'}; {args.senders} LMTP sessions; connections per server: "
          f"{args.max_connections or 'default'}, push: {'default' if args.push_connections is None else args.push_connections}")
    with TwoSiteRig(work / "rig", args.mailboxes, poll_interval=args.poll_interval, primary_extra=primary_extra,
                    **options) as rig:
        rnd = random.Random(args.seed)
        t0 = time.monotonic()
        for user in rig.users:
            rig.primary.deliver_many(user, [message("initial", i, user, rnd)[1] for i in range(args.initial)])
        rig.protect_all()
        rig.pair.wait_synced(rig.users, timeout=900, settle=1.0)
        print(f"seeded {args.mailboxes} mailboxes x {args.initial} messages in {time.monotonic() - t0:.1f} s "
              f"(netns {rig.link.netns}, standby {rig.link.ns_addr})")
        mail_dirs = {u: rig.standby.base / "mail" / u / "mdbox" / "mailboxes" / "INBOX" / "dbox-Mails"
                     for u in rig.users}
        watch = ArrivalWatch(lambda _u: socket_in_netns(rig.link.netns, ("127.0.0.1", rig.standby.imap_port)),
                             rig.users, mail_dirs, rig.standby.master_user, rig.standby.master_password)
        watch.start()
        try:
            for name in links:
                rig.clear()
                t_sync = time.monotonic()
                rig.pair.wait_synced(rig.users, timeout=900, settle=0.5)  # each link starts with no backlog
                print(f"\n(standby in sync {time.monotonic() - t_sync:.1f} s after the previous phase)")
                if name == "impaired":
                    rig.set_delay(args.delay, args.jitter)
                    rig.set_loss(args.loss)
                    print(f"impaired link: {args.delay:g} ± {args.jitter:g} ms each way, {args.loss:g} % loss each way")
                result = run_phase(rig, name, args, watch)
                results.append(result)
                report(result, args)
            rig.clear()
            print(f"\nwatch: {watch.wakeups} wake-ups, {watch.checks} checks")
        finally:
            watch.stop()
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work directory kept: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
