"""The bounded connection pool per mail server: its bound, reuse, eviction, and a server that
refuses more connections (the pool backs off and lowers its limit; callers see ServerBusy)."""
from __future__ import annotations

import threading

import pytest
from mailrepl.shared.errors import MailboxNotFound, ServerBusy, ServerUnavailable
from mailrepl.shared.runtime.connection_pool import PooledAdapter


class Conn:
    def __init__(self, server: Server, address: str) -> None:
        self.server, self.address, self.closed = server, address, False

    def list_folders(self):
        if self.server.fail_calls:
            raise ServerUnavailable("dropped")
        return ["INBOX"]

    def fetch(self):
        yield 1
        raise ServerUnavailable("dropped in the middle")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with self.server.lock:
                self.server.open_now -= 1


class Server:
    """A fake adapter counting the connections open on it at once; refuses beyond ``accepts``."""

    name = "primary"

    def __init__(self, accepts: int = 10_000) -> None:
        self.accepts = accepts
        self.lock = threading.Lock()
        self.open_now = self.peak = self.opened = 0
        self.fail_calls = False

    def open(self, address: str) -> Conn:
        with self.lock:
            if self.open_now >= self.accepts:
                raise ServerUnavailable("connection closed by the server")
            if address == "nobody":
                raise MailboxNotFound("no such mailbox")
            self.open_now += 1
            self.opened += 1
            self.peak = max(self.peak, self.open_now)
        return Conn(self, address)

    def list_mailboxes(self):
        return ["a", "b"]


def test_never_more_than_the_limit_under_concurrency():
    server = Server()
    pool = PooledAdapter(server, 5, wait_seconds=10)
    errors = []

    def work(i: int) -> None:
        try:
            for j in range(20):
                s = pool.open(f"user{(i * 7 + j) % 40}")
                s.list_folders()
                s.close()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert server.peak <= 5
    assert pool.stats().open == server.open_now <= 5
    assert pool.stats().in_use == 0
    assert server.peak >= 2  # the threads really ran side by side


def test_idle_connection_is_reused_for_its_mailbox_and_evicted_for_others():
    server = Server()
    pool = PooledAdapter(server, 2)
    a = pool.open("a")
    a.close()
    again = pool.open("a")
    assert server.opened == 1  # the same connection again
    b = pool.open("b")
    again.close()
    b.close()
    c = pool.open("c")  # full of idle ones: the least recently used (a) makes room
    assert server.opened == 3 and server.open_now == 2
    c.close()
    assert pool.stats().open == 2


def test_a_failed_call_closes_the_connection_for_good():
    server = Server()
    pool = PooledAdapter(server, 2)
    s = pool.open("a")
    server.fail_calls = True
    with pytest.raises(ServerUnavailable):
        s.list_folders()
    s.close()
    assert server.open_now == 0 and pool.stats().open == 0
    server.fail_calls = False
    g = pool.open("a")
    with pytest.raises(ServerUnavailable):
        list(g.fetch())  # failing while iterating breaks it too
    g.close()
    assert server.open_now == 0


def test_waits_for_a_connection_then_busy():
    server = Server()
    pool = PooledAdapter(server, 1, wait_seconds=0.2)
    held = pool.open("a")
    with pytest.raises(ServerBusy) as err:
        pool.open("b")
    assert err.value.retryable
    threading.Timer(0.05, held.close).start()
    pool.wait_seconds = 5
    b = pool.open("b")  # given back meanwhile: taken over
    b.close()
    assert server.peak == 1


def test_server_refusing_more_lowers_the_limit_and_backs_off():
    server = Server(accepts=3)
    now = [0.0]
    pool = PooledAdapter(server, 10, wait_seconds=0.0, clock=lambda: now[0])
    held = [pool.open(f"u{i}") for i in range(3)]
    with pytest.raises(ServerBusy) as err:  # refused with others open: busy, not an outage
        pool.open("u3")
    assert err.value.back_off > 0
    st = pool.stats()
    assert (st.allowed, st.refused) == (3, 1)
    held[0].close()
    with pytest.raises(ServerBusy):  # within the back-off nothing new is opened
        pool.open("u4")
    now[0] += 60
    s = pool.open("u4")  # after it: the idle one makes room, the server is never asked for a 4th
    assert server.peak == 3
    s.close()
    for h in held[1:]:
        h.close()


def test_refused_with_nothing_open_is_an_outage():
    server = Server(accepts=0)
    pool = PooledAdapter(server, 4)
    with pytest.raises(ServerUnavailable) as err:
        pool.open("a")
    assert not isinstance(err.value, ServerBusy)
    assert pool.stats().open == 0


def test_other_errors_pass_and_free_the_slot():
    server = Server()
    pool = PooledAdapter(server, 1, wait_seconds=0)
    with pytest.raises(MailboxNotFound):
        pool.open("nobody")
    pool.open("a").close()
    assert pool.list_mailboxes() == ["a", "b"]  # the adapter's own calls pass through


def test_idle_connections_expire():
    server = Server()
    now = [0.0]
    pool = PooledAdapter(server, 4, idle_seconds=30, clock=lambda: now[0])
    pool.open("a").close()
    assert pool.prune() == 1
    now[0] += 31
    assert pool.prune() == 0 and server.open_now == 0


def test_the_adapters_probe_counts_within_the_bound():
    server = Server()
    seen = []
    server.check = lambda: seen.append(PooledAdapter.stats(pool).open)
    pool = PooledAdapter(server, 1, wait_seconds=0)
    pool.check()
    assert seen == [1]  # a slot was held while it ran
    held = pool.open("a")
    with pytest.raises(ServerBusy):
        pool.check()
    held.close()
    assert pool.stats().open == 1  # the idle session only


def test_push_connections_never_take_more_than_half():
    server = Server()
    pool = PooledAdapter(server, 4, wait_seconds=0)
    parked = [pool.open_push("a"), pool.open_push("b")]
    with pytest.raises(ServerBusy):
        pool.open_push("c")
    work = [pool.open("c"), pool.open("d")]  # capture and replay still get theirs
    for s in parked + work:
        s.close()
    assert pool.stats().open == 2  # parked ones are closed, not kept idle
    pool.open_push("e").close()


def test_a_discarded_connection_is_closed_when_given_back():
    server = Server()
    pool = PooledAdapter(server, 2)
    s = pool.open("a")
    assert s.list_folders() == ["INBOX"]
    s.discard()  # its holder no longer trusts what it sees through it
    s.close()
    assert server.open_now == 0 and pool.stats().open == 0
    s = pool.open("a")
    s.close()
    assert pool.open("a") is not None and server.opened == 2  # an undiscarded one is reused


def test_evictions_are_counted_and_a_steady_churn_warns_once(caplog):
    """A bound smaller than the mailboxes with work closes idle connections to open others: each is
    counted (healthz, metrics) and, when it goes on, one warning names the bound to raise."""
    server = Server()
    now = [0.0]
    pool = PooledAdapter(server, 2, clock=lambda: now[0])
    pool.open("a").close()
    pool.open("b").close()
    assert pool.stats().evicted == 0  # room left: nothing closed
    pool.open("a").close()  # its own idle connection again
    assert pool.stats().evicted == 0
    caplog.set_level("WARNING", logger="mailrepl.pool")
    for i in range(59):  # 59 evictions within the minute: no warning yet
        pool.open(f"m{i}").close()
        now[0] += 0.5
    assert pool.stats().evicted == 59
    assert not [r for r in caplog.records if "max_connections" in r.getMessage()]
    pool.open("m59").close()  # the 60th within the minute
    warned = [r.getMessage() for r in caplog.records if "max_connections" in r.getMessage()]
    assert len(warned) == 1 and "max_connections = 2" in warned[0] and "'primary'" in warned[0]
    for i in range(200):  # it goes on: no second warning within ten minutes
        pool.open(f"n{i}").close()
        now[0] += 0.5
    assert len([r for r in caplog.records if "max_connections" in r.getMessage()]) == 1
    assert pool.stats().evicted == 260
    assert server.opened == 262 and server.open_now == 2  # a login for each, never more than the bound
    now[0] += 600  # (the two idle connections expire meanwhile: the first two opens find room)
    for i in range(62):  # ten minutes later and still churning: warned again
        pool.open(f"o{i}").close()
    assert len([r for r in caplog.records if "max_connections" in r.getMessage()]) == 2


def test_slow_evictions_do_not_warn(caplog):
    """A bound that suffices most of the time: the odd eviction (fewer than one a second) is not
    worth a warning."""
    server = Server()
    now = [0.0]
    pool = PooledAdapter(server, 2, clock=lambda: now[0])
    caplog.set_level("WARNING", logger="mailrepl.pool")
    for i in range(300):
        pool.open(f"m{i}").close()
        now[0] += 2.0  # one every two seconds: 30 in any minute
    assert pool.stats().evicted == 298
    assert not [r for r in caplog.records if "max_connections" in r.getMessage()]
