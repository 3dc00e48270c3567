"""The filesystem blob store: round trips, dedup, corruption, sweep, concurrency, crash safety."""
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mailrepl.shared.content.blobstore import (
    REFRESH_AFTER,
    BlobCorrupt,
    BlobMissing,
    BlobStore,
    SweepReport,
    blob_key,
)
from mailrepl.shared.errors import StoreError

OLD = 3600.0  # seconds: well beyond any grace period used here


def blob(n: int, size: int = 64) -> tuple[str, bytes]:
    data = (f"part {n:06d} ".encode() * (size // 12 + 1))[:size]
    return blob_key(data), data


def age(store: BlobStore, key: str, seconds: float = OLD) -> None:
    """Pretend ``key`` was written ``seconds`` ago."""
    then = time.time() - seconds
    os.utime(store.path(key), (then, then))


def tmp_files(store: BlobStore) -> list[str]:
    return sorted(os.listdir(store.root / "tmp"))


@pytest.fixture
def store(tmp_path):
    return BlobStore(tmp_path / "blobs", fsync=False)


# -- basics --------------------------------------------------------------------------------


@pytest.mark.parametrize("fsync", [True, False])
def test_round_trip_and_layout(tmp_path, fsync):
    s = BlobStore(tmp_path / "blobs", fsync=fsync)
    key, data = blob(1, 5000)
    assert len(key) == 32 and key == key.lower()
    assert s.put(key, data) is True
    assert (tmp_path / "blobs" / key[:2] / key[2:4] / key).read_bytes() == data
    assert s.get(key) == data and s.has(key) and s.size(key) == 5000
    assert list(s.keys()) == [key] and tmp_files(s) == []
    assert (s.stats.puts, s.stats.dedup_hits, s.stats.bytes_written) == (1, 0, 5000)


def test_empty_blob(store):
    key = blob_key(b"")
    assert store.put(key, b"") and store.get(key) == b"" and store.size(key) == 0


def test_put_existing_returns_false_and_does_not_rewrite(store):
    key, data = blob(1)
    store.put(key, data)
    before = os.stat(store.path(key))
    assert store.put(key, data) is False
    after = os.stat(store.path(key))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert (store.stats.puts, store.stats.dedup_hits) == (1, 1)


def test_put_existing_old_blob_refreshes_mtime_only(store):
    key, data = blob(1)
    store.put(key, data)
    age(store, key)
    inode = os.stat(store.path(key)).st_ino
    assert store.put(key, data) is False
    st = os.stat(store.path(key))
    assert st.st_ino == inode and time.time() - st.st_mtime < REFRESH_AFTER


def test_put_with_wrong_key_is_refused(store):
    key, _ = blob(1)
    with pytest.raises(ValueError):
        store.put(key, b"something else")
    assert not store.has(key) and tmp_files(store) == []


@pytest.mark.parametrize(
    "bad", ["../x", "../" + "0" * 29, "A" * 32, "0" * 31, "0" * 33, "g" * 32, "0" * 32 + "\n", "", None, b"0" * 32]
)
def test_invalid_keys_are_refused_everywhere(store, bad):
    for call in (
        lambda: store.put(bad, b"x"),
        lambda: store.put_many([(bad, b"x")]),
        lambda: store.get(bad),
        lambda: store.has(bad),
        lambda: store.size(bad),
        lambda: store.delete(bad),
        lambda: store.missing([bad]),
        lambda: store.path(bad),
    ):
        with pytest.raises(ValueError):
            call()


def test_missing_blob(store):
    key, _ = blob(1)
    with pytest.raises(BlobMissing) as info:
        store.get(key)
    assert isinstance(info.value, StoreError) and not info.value.retryable
    with pytest.raises(BlobMissing):
        store.size(key)
    assert store.delete(key) is False


def test_delete(store):
    key, data = blob(1)
    store.put(key, data)
    assert store.delete(key) is True and not store.has(key) and list(store.keys()) == []
    assert store.put(key, data) is True


# -- batches -------------------------------------------------------------------------------


def test_put_many_dedups_within_the_call_and_against_the_store(store):
    a, b, c, d = (blob(n) for n in range(4))
    assert store.put_many([a, b]) == 2
    assert store.put_many([b, c, c, d, a, d]) == 2
    assert sorted(store.keys()) == sorted(k for k, _ in (a, b, c, d))
    assert all(store.get(k) == v for k, v in (a, b, c, d))
    assert (store.stats.puts, store.stats.dedup_hits) == (4, 4)
    assert store.stats.bytes_written == sum(len(v) for _, v in (a, b, c, d)) and tmp_files(store) == []


def test_put_many_checks_every_item_before_writing(store):
    good, other = blob(1), blob(2)
    with pytest.raises(ValueError):
        store.put_many([good, (other[0], b"wrong")])
    assert list(store.keys()) == [] and tmp_files(store) == []


def test_missing_keeps_input_order_and_dedups(store):
    keys = [blob(n)[0] for n in range(5)]
    store.put_many([blob(1), blob(3)])
    asked = [keys[4], keys[1], keys[0], keys[4], keys[2], keys[3], keys[0]]
    assert store.missing(asked) == [keys[4], keys[0], keys[2]]
    assert store.missing([]) == []


# -- corruption ----------------------------------------------------------------------------


def test_flipped_byte_is_detected_quarantined_and_healed(store):
    key, data = blob(1, 2000)
    store.put(key, data)
    path = store.path(key)
    damaged = bytearray(path.read_bytes())
    damaged[1000] ^= 0x01
    path.write_bytes(bytes(damaged))
    with pytest.raises(BlobCorrupt) as info:
        store.get(key)
    assert isinstance(info.value, StoreError) and info.value.retryable is False
    assert not store.has(key) and store.missing([key]) == [key]
    quarantined = os.listdir(store.root / "quarantine")
    assert len(quarantined) == 1 and quarantined[0].startswith(key)
    assert (store.root / "quarantine" / quarantined[0]).read_bytes() == bytes(damaged)
    assert store.put(key, data) is True
    assert store.get(key) == data


@pytest.mark.parametrize("keep", [0, 1, 1999])
def test_truncated_blob_is_corrupt(store, keep):
    key, data = blob(1, 2000)
    store.put(key, data)
    os.truncate(store.path(key), keep)
    with pytest.raises(BlobCorrupt):
        store.get(key)
    assert not store.has(key)


def test_verify_all_reports_and_quarantines_corrupt_blobs(store):
    items = [blob(n) for n in range(6)]
    store.put_many(items)
    bad = sorted([items[1][0], items[4][0]])
    for key in bad:
        store.path(key).write_bytes(b"rot")
    assert sorted(store.verify_all()) == bad
    assert sorted(store.missing(k for k, _ in items)) == bad
    assert store.verify_all() == []


# -- sweep ---------------------------------------------------------------------------------


def test_sweep_deletes_only_unreferenced_old_blobs(store):
    old_refd, old_free, new_free, new_refd = (blob(n, 100 * (n + 1)) for n in range(4))
    store.put_many([old_refd, old_free, new_free, new_refd])
    age(store, old_refd[0])
    age(store, old_free[0])
    age(store, new_free[0], 599)  # just inside the default grace period
    stale = store.root / "tmp" / "stale.tmp"
    stale.write_bytes(b"half a blob")
    then = time.time() - OLD
    os.utime(stale, (then, then))
    fresh = store.root / "tmp" / "fresh.tmp"
    fresh.write_bytes(b"being written")
    asked = []

    def referenced(key):
        asked.append(key)
        return key in {old_refd[0], new_refd[0]}

    report = store.sweep(referenced)
    assert report == SweepReport(scanned=4, deleted=1, bytes_freed=200, kept_recent=2, tmp_removed=1)
    assert sorted(store.keys()) == sorted([old_refd[0], new_free[0], new_refd[0]])
    assert sorted(asked) == sorted([old_refd[0], old_free[0]])  # recent blobs are not looked up
    assert not stale.exists() and fresh.exists()
    assert not any(name.endswith(".swept") for name in tmp_files(store))


def test_sweep_accepts_a_container_and_an_explicit_now(store):
    a, b = blob(1), blob(2)
    store.put_many([a, b])
    assert store.sweep({a[0]}, now=time.time() + OLD).deleted == 1
    assert list(store.keys()) == [a[0]]


@pytest.mark.parametrize("claim", ["put", "missing"])
def test_sweep_keeps_a_blob_claimed_while_it_runs(store, claim):
    """An orphaned blob that a new batch reuses (put -> False, or missing() -> present) before its
    references are committed must survive a sweep that already judged it unreferenced."""
    key, data = blob(1)
    store.put(key, data)
    age(store, key)

    def referenced(k):  # the batch arrives between the sweep's look and its delete
        if claim == "put":
            assert store.put(key, data) is False
        else:
            assert store.missing([key]) == []
        return False

    report = store.sweep(referenced)
    assert (report.scanned, report.deleted) == (1, 0)
    assert store.get(key) == data
    assert store.sweep(set()).deleted == 0  # and it is now within the grace period


# -- concurrency ---------------------------------------------------------------------------


def test_concurrent_puts_of_the_same_blobs(tmp_path):
    store = BlobStore(tmp_path / "blobs", fsync=True)
    items = [blob(n, 3000) for n in range(100)]
    start = threading.Barrier(8)

    def worker(i):
        start.wait()
        for j in range(len(items)):
            store.put(*items[(j + 13 * i) % len(items)])

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(worker, i) for i in range(8)]:
            future.result()  # re-raises a worker's exception
    assert sorted(store.keys()) == sorted(k for k, _ in items)
    assert all(store.get(k) == v for k, v in items)
    assert tmp_files(store) == []
    assert store.stats.puts >= 100 and store.stats.puts + store.stats.dedup_hits == 800


def test_sweep_running_with_puts_deletes_none_of_the_new_blobs(store):
    old = [blob(n) for n in range(200)]
    store.put_many(old)
    for key, _ in old:
        age(store, key)
    new = [blob(n) for n in range(1000, 1400)]
    done = threading.Event()

    def writer():
        try:
            for i in range(0, len(new), 10):
                store.put_many(new[i:i + 10])
        finally:
            done.set()

    def sweeper():
        deleted = 0
        while not done.is_set():
            deleted += store.sweep(set(), grace_seconds=600).deleted
        return deleted + store.sweep(set(), grace_seconds=600).deleted

    with ThreadPoolExecutor(2) as pool:
        sweeping = pool.submit(sweeper)
        pool.submit(writer).result()
        assert sweeping.result() == len(old)  # the sweep did run and delete the old blobs
    assert store.missing(k for k, _ in new) == []
    assert sorted(store.keys()) == sorted(k for k, _ in new) and tmp_files(store) == []


# -- crash safety --------------------------------------------------------------------------


def test_failed_rename_leaves_no_final_file(store, monkeypatch):
    key, data = blob(1)

    def broken_replace(src, dst):
        assert Path(src).read_bytes() == data  # the tmp file was written in full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StoreError) as info:
        store.put(key, data)
    assert info.value.retryable
    monkeypatch.undo()
    assert not store.path(key).exists() and not store.has(key) and list(store.keys()) == []
    assert tmp_files(store) == []
    assert store.put(key, data) is True and store.get(key) == data


def test_crash_mid_put_leaves_a_tmp_file_for_the_sweep(tmp_path):
    """A real crash: the child process dies inside os.replace, after the tmp file is written."""
    store = BlobStore(tmp_path / "blobs", fsync=True)
    key, data = blob(1, 5000)
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.replace = lambda src, dst: os._exit(7)
            store.put(key, data)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 7
    leftovers = tmp_files(store)
    assert len(leftovers) == 1 and (store.root / "tmp" / leftovers[0]).read_bytes() == data
    assert not store.path(key).exists() and list(store.keys()) == [] and store.missing([key]) == [key]
    assert store.sweep(set()).tmp_removed == 0  # within the grace period: maybe a write in progress
    assert store.sweep(set(), grace_seconds=0, now=time.time() + 1) == SweepReport(tmp_removed=1)
    assert tmp_files(store) == []
    assert store.put(key, data) is True and store.get(key) == data


def test_failed_write_in_a_batch_leaves_no_file_of_it(tmp_path, monkeypatch):
    """Blobs are written side by side: one failing write undoes the others, none is renamed in."""
    store = BlobStore(tmp_path / "blobs", fsync=True)
    items = [blob(n, 4000) for n in range(20)]
    real_fsync, calls = os.fsync, []
    lock = threading.Lock()

    def flaky_fsync(fd):
        with lock:
            calls.append(fd)
            nth = len(calls)
        if nth == 7:
            raise OSError(5, "Input/output error")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", flaky_fsync)
    with pytest.raises(StoreError) as info:
        store.put_many(items)
    assert info.value.retryable
    monkeypatch.undo()
    assert len(calls) >= 7
    assert list(store.keys()) == [] and tmp_files(store) == []
    assert store.put_many(items) == 20 and all(store.get(k) == v for k, v in items)


def test_fan_out_directory_removed_behind_the_stores_back_is_made_again(store):
    import shutil

    key, data = blob(1)
    assert store.put(key, data) and store.delete(key)
    shutil.rmtree(store.path(key).parent.parent)  # e.g. an admin cleaning up by hand
    assert store.put(key, data) and store.get(key) == data
