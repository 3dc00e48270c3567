#!/usr/bin/env python3
"""Seeding and burst benchmark: one mailbox of >= 2,000 messages / >= 100 MB, primary -> standby.

Not a test: it prints figures (the machines are noisy, so nothing here asserts a speed).

1. Starts a primary and a standby Dovecot from ``deploy/dovecot`` and fills the primary with the
   handbook's deterministic corpus generator (LMTP delivery, flags set afterwards over IMAP).
2. Peer baseline on the same corpus and machine: ``doveadm backup`` over imapc (the fastest peer
   measured) and ``mbsync`` when it is installed; the standby is wiped after each.
3. mailrepl: both gateways as real processes; protect the mailbox; time until the standby has
   everything (status: replicating, both queues empty, applied == captured); the standby is then
   compared message by message (SHA-256 of BODY[], flags, internal date).
4. A burst of 100 changes on the primary (40 flag changes, 20 deletes, 20 moves, 20 new
   deliveries) and the time until the standby is equal again.

Peak RSS of each gateway is the kernel's VmHWM of its process. The host's CPU during the seed
(``/proc/stat``) is printed beside the gateways': how busy the two cores were, and what the rest
(both Dovecots above all) took of them.

With ``--profile DIR`` both gateways are sampled by ``py-spy`` while they seed (samples holding
the GIL, collapsed stacks in ``DIR/source.txt`` and ``DIR/recovery.txt``; summarise them with
``tests/bench/profile_summary.py``). With ``--perf DIR`` they are recorded by ``perf`` instead,
kernel and native frames included (``perf report -i DIR/source.data``).

    python tests/bench/bench_seed.py [--count 2500] [--corpus gen|real] [--state sqlite|postgres] [--json FILE]
        [--profile DIR] [--perf DIR] [--timeline]

``--corpus real`` seeds the realistic public corpus instead (``--count`` messages as
``bench_wan.py`` selects them, stored by IMAP APPEND): small ordinary mail, where the cost per
message rather than per byte shows.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.dovecot import DovecotServer, mailbox_size  # noqa: E402
from tests.support.gateways import GatewayPair  # noqa: E402
from tests.support.mailcompare import assert_same_mailbox, snapshot, total_messages  # noqa: E402
from tests.bench.profile_summary import stop_profilers  # noqa: E402
from tests.bench.timeline import HEADER, print_timeline, progress_row  # noqa: E402

USER = "alice"


def harness_dir(arg: str | None) -> Path:
    d = Path(arg) if arg else REPO.parent / "shared" / "harness"
    if not (d / "make-corpus.py").exists():
        sys.exit(f"bench_seed: corpus generator not found in {d} (use --harness DIR)")
    return d


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def host_cpu() -> tuple[float, float]:
    """(busy, total) core-seconds of the whole host so far (/proc/stat; idle and iowait are not busy)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return (total - fields[3] - fields[4]) / tick, total / tick


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(cmd: list[str], log: Path) -> float:
    t0 = time.monotonic()
    with open(log, "ab") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, env={"PATH": os.environ["PATH"], "HOME": str(log.parent)})
    return time.monotonic() - t0


def peer_dsync_imapc(primary: DovecotServer, standby: DovecotServer, log: Path) -> float:
    return timed(
        ["doveadm", "-c", str(standby.config), "-o", "imapc_host=127.0.0.1", "-o", f"imapc_port={primary.imap_port}",
         "-o", f"imapc_user={USER}", "-o", f"imapc_password={primary.user_password}", "-o", "imapc_ssl=no",
         "-o", "imapc_features=rfc822.size fetch-headers", "-o", "mail_prefetch_count=20",
         "backup", "-R", "-u", USER, "imapc:"],
        log,
    )


def peer_mbsync(primary: DovecotServer, standby: DovecotServer, work: Path, log: Path) -> float:
    state = work / "mbsync-state"
    state.mkdir(exist_ok=True)
    rc = work / "mbsyncrc"
    text = ""
    for name, srv in (("primary", primary), ("standby", standby)):
        text += (f"IMAPAccount {name}\nHost 127.0.0.1\nPort {srv.imap_port}\nUser {USER}\nPass {srv.user_password}\n"
                 f"SSLType None\nAuthMechs PLAIN LOGIN\nPipelineDepth 50\n\nIMAPStore {name}\nAccount {name}\n\n")
    text += (f"Channel {USER}\nFar :primary:\nNear :standby:\nPatterns *\nSync Pull\nCreate Near\nRemove Near\n"
             f"Expunge Near\nCopyArrivalDate yes\nSyncState {state}/\n")
    rc.write_text(text)
    return timed(["mbsync", "-c", str(rc), "-q", USER], log)


def fresh_postgres_db(admin_url: str, name: str) -> str:
    """Create an empty database next to ``admin_url`` and return its SQLAlchemy URL."""
    import psycopg

    conninfo = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


def start_profilers(pair: GatewayPair, out: Path) -> list[subprocess.Popen]:
    """py-spy on both gateway processes, samples holding the GIL (CPU spent in Python)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for g in (pair.source, pair.recovery):
        procs.append(subprocess.Popen(
            [spy, "record", "--gil", "--rate", "200", "--format", "raw", "--nonblocking",
             "-o", str(out / f"{g.role}.txt"), "--pid", str(g.proc.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)  # let py-spy attach before the work starts
    return procs


def start_perf(pair: GatewayPair, out: Path) -> list[subprocess.Popen]:
    """``perf record`` on each gateway process: kernel and native frames too (copies, hashing,
    compression, fsync), which py-spy does not see. ``perf report -i DIR/source.data`` reads them."""
    out.mkdir(parents=True, exist_ok=True)
    procs = [subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "999", "-g", "-o", str(out / f"{g.role}.data"),
                               "-p", str(g.proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for g in (pair.source, pair.recovery)]
    time.sleep(1.0)
    return procs


def synced(st: dict, min_seq: int = 0) -> bool:
    return (
        st.get("phase") == "replicating" and st.get("copy_queue") == 0 and st.get("replay_queue") == 0
        and st.get("last_applied_seq") == st.get("last_captured_seq") and st.get("last_captured_seq", 0) >= min_seq
    )


POLL = 0.1  # seconds between status requests (one costs the source gateway a few ms of CPU)


def wait_until(pair: GatewayPair, min_seq: int, timeout: float,
               timeline: list | None = None) -> tuple[float, dict]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            st = pair.status().get(USER, {})
        except Exception:  # the API may be busy for a moment; keep polling
            st = {}
        if timeline is not None and st:
            timeline.append(progress_row(time.monotonic() - t0, st))
        if synced(st, min_seq):
            return time.monotonic() - t0, st
        time.sleep(POLL)
    raise SystemExit(f"bench_seed: not in sync after {timeout}s: {pair.status()}")


def burst(primary: DovecotServer, harness: Path) -> int:
    """100 changes on the primary; returns how many changes the source should capture at least."""
    rnd = random.Random(7)
    M = primary.imap(USER)
    M.select("INBOX")
    typ, data = M.uid("SEARCH", None, "UNFLAGGED")  # so that each STORE below is a real change
    unflagged = data[0].split()
    flag = rnd.sample(unflagged, 40)
    rest = sorted(set(unflagged) - set(flag))
    picked = rnd.sample(rest, 40)
    delete, move = picked[:20], picked[20:]
    for u in flag:
        M.uid("STORE", u, "+FLAGS", "(\\Flagged)")
    M.uid("STORE", b",".join(delete), "+FLAGS", "(\\Deleted)")
    M.uid("EXPUNGE", b",".join(delete))
    M.uid("MOVE", b",".join(move), "Archive")
    M.logout()
    subprocess.run(
        [sys.executable, str(harness / "make-corpus.py"), "--user", USER, "--password", primary.user_password,
         "--count", "20", "--seed", "99", "--tag", "burst", "--folders", "INBOX:1", "--no-flags",
         "--lmtp-port", str(primary.lmtp_port), "--imap-port", str(primary.imap_port)],
        check=True, stdout=subprocess.DEVNULL,
    )
    return 100


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2500, help="messages to seed (default 2500, about 100 MB)")
    ap.add_argument("--corpus", choices=["gen", "real"], default="gen",
                    help="gen: the handbook generator's mail (default); real: the realistic public corpus "
                         "(as bench_wan.py selects it)")
    ap.add_argument("--state", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--harness", help="directory holding make-corpus.py (default: ../shared/harness)")
    ap.add_argument("--no-peers", action="store_true", help="skip the dsync/mbsync baseline")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--timeline", action="store_true",
                    help="print the seed's progress at each status poll (captured, queues, applied)")
    ap.add_argument("--profile", help="sample both gateways with py-spy while seeding; raw profiles go to this directory")
    ap.add_argument("--perf", help="record both gateways with perf (kernel and native frames) while seeding; "
                                   "source.data and recovery.data go to this directory")
    a = ap.parse_args()
    harness = harness_dir(a.harness)
    work = Path(tempfile.mkdtemp(prefix="mailrepl-bench-"))
    primary = DovecotServer("primary", [USER])
    standby = DovecotServer("standby", [USER])
    figures: dict = {"count_requested": a.count}
    pair = None
    try:
        primary.start()
        standby.start()
        t0 = time.monotonic()
        if a.corpus == "real":
            from tests.bench.wan_corpus import fill_public_into  # imports this module: not at the top

            fill_public_into(primary, USER, a.count)
        else:
            subprocess.run(
                [sys.executable, str(harness / "make-corpus.py"), "--user", USER, "--password", primary.user_password,
                 "--count", str(a.count), "--seed", "1", "--attach-kb", "140",
                 "--lmtp-port", str(primary.lmtp_port), "--imap-port", str(primary.imap_port)],
                check=True, stdout=subprocess.DEVNULL,
            )
        msgs, size = mailbox_size(primary, USER)
        figures.update(messages=msgs, bytes=size)
        print(f"corpus: {msgs} messages, {size / 1e6:.1f} MB on the primary (generated in {time.monotonic() - t0:.1f}s)")

        if not a.no_peers:
            for name, run in (("dsync-imapc", lambda: peer_dsync_imapc(primary, standby, work / "peer.log")),
                              ("mbsync", lambda: peer_mbsync(primary, standby, work, work / "peer.log"))):
                if shutil.which(name.split("-")[0] if name == "mbsync" else "doveadm") is None:
                    print(f"peer {name}: not installed, skipped")
                    continue
                secs = run()
                if name == "mbsync":  # mbsync adds an X-TUID header to every message: compare counts only
                    assert total_messages(snapshot(standby, USER)) == msgs, "mbsync copy incomplete"
                else:
                    assert_same_mailbox(primary, standby, USER)
                figures[f"peer_{name}_s"] = secs
                print(f"peer {name:12s} {secs:6.2f}s  {msgs / secs:7.0f} msg/s  {size / 1e6 / secs:6.1f} MB/s")
                standby.wipe_user(USER)

        if a.state == "sqlite":
            states = (f"sqlite:///{work}/source.sqlite", f"sqlite:///{work}/recovery.sqlite")
        else:
            states = tuple(fresh_postgres_db(a.postgres_url, f"mailrepl_bench_{role}_{os.getpid()}")
                           for role in ("source", "recovery"))
        pair = GatewayPair(work, primary, standby, users=[USER], source_state=states[0], recovery_state=states[1],
                           poll_interval=0.5)
        pair.start()
        # the pre-flight check runs once per server, at the first protection after start:
        # start-up, not seeding (untimed)
        pair.preflight("primary", USER)
        spies = start_profilers(pair, Path(a.profile)) if a.profile else []
        spies += start_perf(pair, Path(a.perf)) if a.perf else []
        figures.update(source_start_rss_mb=vm_hwm_mb(pair.source.proc.pid),
                       recovery_start_rss_mb=vm_hwm_mb(pair.recovery.proc.pid))
        print(f"peak RSS after start-up: source gateway {figures['source_start_rss_mb']:.0f} MB, "
              f"recovery gateway {figures['recovery_start_rss_mb']:.0f} MB")
        cpu0 = {g.role: cpu_seconds(g.proc.pid) for g in (pair.source, pair.recovery)}
        host0 = host_cpu()
        t_protect = time.monotonic()
        pair.protect(USER)
        timeline: list | None = [] if a.timeline else None
        secs, st = wait_until(pair, 1, timeout=1800, timeline=timeline)
        secs = time.monotonic() - t_protect
        if timeline:
            print(HEADER)
            print_timeline(timeline)
        cpu = {g.role: cpu_seconds(g.proc.pid) - cpu0[g.role] for g in (pair.source, pair.recovery)}
        host1 = host_cpu()
        stop_profilers(spies)
        figures.update(seed_s=secs, seed_msgs_per_s=msgs / secs, seed_mb_per_s=size / 1e6 / secs,
                       source_peak_rss_mb=vm_hwm_mb(pair.source.proc.pid),
                       recovery_peak_rss_mb=vm_hwm_mb(pair.recovery.proc.pid), wire_bytes=pair.wire_bytes(),
                       source_cpu_s=cpu["source"], recovery_cpu_s=cpu["recovery"])
        print(f"mailrepl seed    {secs:6.2f}s  {msgs / secs:7.0f} msg/s  {size / 1e6 / secs:6.1f} MB/s  "
              f"wire {figures['wire_bytes'] / 1e6:.1f} MB")
        if "peer_dsync-imapc_s" in figures:
            print(f"mailrepl / dsync throughput: {figures['peer_dsync-imapc_s'] / secs:.2f}x")
        print(f"CPU during seeding: source gateway {cpu['source']:.2f}s ({cpu['source'] / msgs * 1e3:.2f} ms/msg), "
              f"recovery gateway {cpu['recovery']:.2f}s ({cpu['recovery'] / msgs * 1e3:.2f} ms/msg)")
        busy, total = host1[0] - host0[0], host1[1] - host0[1]
        others = max(0.0, busy - cpu["source"] - cpu["recovery"])
        figures.update(host_busy_s=busy, host_other_s=others)
        print(f"host CPU during seeding: {busy:.2f} of {total:.2f} core-seconds busy ({busy / total:.0%}); "
              f"the gateways {cpu['source'] + cpu['recovery']:.2f} s, everything else (both Dovecots, "
              f"the bench, the system) {others:.2f} s")
        assert_same_mailbox(primary, standby, USER)
        print("standby equal to primary after seeding: yes")
        # what the gateways spend when there is nothing to do, with the same status polling: the
        # part of the CPU above that does not depend on the messages
        idle0 = {g.role: cpu_seconds(g.proc.pid) for g in (pair.source, pair.recovery)}
        t_idle = time.monotonic()
        while time.monotonic() - t_idle < 3.0:
            pair.status()
            time.sleep(POLL)
        idle_rate = {g.role: (cpu_seconds(g.proc.pid) - idle0[g.role]) / (time.monotonic() - t_idle)
                     for g in (pair.source, pair.recovery)}
        net = {role: max(0.0, cpu[role] - idle_rate[role] * secs) for role in cpu}
        figures.update(source_idle_cpu_per_s=idle_rate["source"], recovery_idle_cpu_per_s=idle_rate["recovery"],
                       source_cpu_net_s=net["source"], recovery_cpu_net_s=net["recovery"])
        print(f"idle with the same polling: source {idle_rate['source'] * 1e3:.0f} ms/s, recovery "
              f"{idle_rate['recovery'] * 1e3:.0f} ms/s; CPU per message net of it: source "
              f"{net['source'] / msgs * 1e3:.2f} ms, recovery {net['recovery'] / msgs * 1e3:.2f} ms")

        base_seq = st["last_captured_seq"]
        t_burst = time.monotonic()
        n = burst(primary, harness)
        wait_until(pair, base_seq + n, timeout=600)
        burst_s = time.monotonic() - t_burst
        assert_same_mailbox(primary, standby, USER)
        figures.update(burst_changes=n, burst_s=burst_s,
                       source_peak_rss_mb=vm_hwm_mb(pair.source.proc.pid),
                       recovery_peak_rss_mb=vm_hwm_mb(pair.recovery.proc.pid))
        print(f"burst of {n} changes: standby equal after {burst_s:.2f}s (includes making the changes)")
        print(f"peak RSS: source gateway {figures['source_peak_rss_mb']:.0f} MB, "
              f"recovery gateway {figures['recovery_peak_rss_mb']:.0f} MB")
        total = total_messages(snapshot(standby, USER))
        print(f"standby holds {total} messages")
    finally:
        if pair is not None:
            pair.stop()
        for srv in (standby, primary):
            srv.stop()
            if not a.keep:
                srv.cleanup()
        if a.json:
            Path(a.json).write_text(json.dumps(figures, indent=2))
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
