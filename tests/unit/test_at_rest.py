"""At-rest encryption: sealed items, the blob store's files and the state store's body rows hold
no plaintext, read back exactly, survive key rotation, refuse a wrong key clearly, and data
stored before encryption was turned on stays readable. Also the file modes of both stores."""
from __future__ import annotations

import os
import stat

import pytest
from sqlalchemy import select, text

from mailrepl.shared.content.blobstore import BlobCorrupt, BlobStore, blob_key
from mailrepl.shared.store import open_store
from mailrepl.shared.store.models import InboxBody, OutboxBody
from mailrepl.shared.store.sealing import MAGIC, PLAIN, Sealer, SealError, UnknownKey, key_id
from tests.unit.test_pipeline_memory import Pipeline, snapshot

K1, K2 = os.urandom(32), os.urandom(32)
MARK = b"PLAINTEXT-MARKER-7f3a"


def test_sealed_items_round_trip_and_name_their_key():
    sealer = Sealer(K1)
    sealed = sealer.seal(MARK * 10, "addr")
    assert MARK not in sealed and sealed.startswith(MAGIC) and key_id(K1).encode() in sealed
    assert sealer.open(sealed, "addr") == MARK * 10
    assert sealer.seal(MARK, "addr") != sealer.seal(MARK, "addr"), "a fresh nonce per item"
    with pytest.raises(SealError, match="another address"):
        sealer.open(sealed, "other")  # moved under another content address
    damaged = bytearray(sealed)
    damaged[-1] ^= 1
    with pytest.raises(SealError):
        sealer.open(bytes(damaged), "addr")
    with pytest.raises(UnknownKey, match=f"key id {key_id(K1)}, which is not configured"):
        Sealer(K2).open(sealed, "addr")
    assert key_id(K1) != key_id(K2) and K1.hex() not in repr(sealer)


def test_plaintext_stays_readable_and_exact_even_if_it_looks_sealed():
    for data in (b"", b"plain body", MAGIC, MAGIC + b"\x10whatever"):
        stored = PLAIN.seal(data, "a")
        assert PLAIN.open(stored, "a") == data and Sealer(K1).open(stored, "a") == data
        # a part decoded from a batch is a view into it: sealed the same way
        view = memoryview(b"xx" + data)[2:]
        assert bytes(PLAIN.seal(view, "a")) == stored
        assert Sealer(K1).open(Sealer(K1).seal(view, "a"), "a") == data


def test_blob_store_encrypts_files_and_keeps_dedup(tmp_path):
    blobs = BlobStore(tmp_path / "blobs", sealer=Sealer(K1), fsync=False)
    data = MARK * 1000
    key = blob_key(data)
    assert blobs.put(key, data) is True
    assert blobs.put(key, data) is False, "content addressing stays on the plaintext: dedup works"
    raw = blobs.path(key).read_bytes()
    assert MARK not in raw and raw.startswith(MAGIC)
    assert blobs.get(key) == data
    assert stat.S_IMODE(blobs.path(key).stat().st_mode) == 0o600
    for d in (blobs.root, blobs.path(key).parent, blobs.path(key).parent.parent, blobs.root / "tmp"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


def test_blob_store_rotation_mixed_content_and_wrong_key(tmp_path):
    root = tmp_path / "blobs"
    plain_data, one, two = b"stored before encryption " * 50, MARK + b"one" * 100, MARK + b"two" * 100
    BlobStore(root, fsync=False).put(blob_key(plain_data), plain_data)
    BlobStore(root, sealer=Sealer(K1), fsync=False).put(blob_key(one), one)
    rotated = BlobStore(root, sealer=Sealer(K2, [K1]), fsync=False)
    rotated.put(blob_key(two), two)
    assert key_id(K2).encode() in rotated.path(blob_key(two)).read_bytes()
    assert [rotated.get(blob_key(d)) for d in (plain_data, one, two)] == [plain_data, one, two]
    assert rotated.verify_all() == []

    wrong = BlobStore(root, sealer=Sealer(K2), fsync=False)  # key 1 no longer listed
    with pytest.raises(UnknownKey, match="encryption_old_key_files"):
        wrong.get(blob_key(one))
    assert wrong.path(blob_key(one)).exists(), "a missing key is no damage: the file stays"

    path = rotated.path(blob_key(two))
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(BlobCorrupt):
        rotated.get(blob_key(two))  # damaged ciphertext: quarantined like damaged plaintext
    assert not path.exists()


def test_sqlite_state_is_private(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/state/db.sqlite")
    store.migrate()
    with store.tx() as s:
        s.execute(text("select 1"))
    for name in ("db.sqlite", "db.sqlite-wal", "db.sqlite-shm"):
        path = tmp_path / "state" / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    store.dispose()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(Exception, match="writable by anyone"):
        open_store(f"sqlite:///{shared}/db.sqlite")


def _mail(i: int) -> bytes:
    return (f"Subject: {MARK.decode()} {i}\r\nMessage-ID: <{i}@x>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n'
            "--b\r\nContent-Type: text/plain\r\n\r\n").encode() + (MARK + b"%d\r\n" % i) * 2000 + b"--b--\r\n"


def test_pipeline_with_encryption_is_exact_and_stores_no_plaintext(tmp_path):
    p = Pipeline(tmp_path)
    p.src.sealer, p.dst.sealer, p.blobs.sealer = Sealer(K1), Sealer(K2), Sealer(K2)
    for i in range(3):
        p.primary.deliver("alice", _mail(i))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    with p.src.read() as s:
        stored = list(s.scalars(select(OutboxBody.data)))
    assert len(stored) == 3 and not any(MARK in d for d in stored)
    p.sync()
    p.assert_equal()
    assert snapshot(p.primary, "alice") == snapshot(p.standby, "alice")
    with p.dst.read() as s:
        skeletons = list(s.scalars(select(InboxBody.data)))
    assert skeletons and not any(MARK in d for d in skeletons)
    files = [p.blobs.path(k) for k in p.blobs.keys()]
    assert files and not any(MARK in f.read_bytes() for f in files)

    # rotation at DR: key 2 becomes old, key 1 current; replay of new mail still works
    p.dst.sealer = p.blobs.sealer = Sealer(K1, [K2])
    p.primary.deliver("alice", _mail(7))
    p.sync()
    p.assert_equal()
