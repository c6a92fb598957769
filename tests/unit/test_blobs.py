"""The blob store: every blob fsynced and renamed into place, each directory fsynced once."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mailledger.smtp.spool import start_spool
from mailledger.store import blobs as blobs_module
from mailledger.store.blobs import BlobStore, BlobStoreError


def _fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record which directories get fsynced."""
    synced: list[str] = []
    real = blobs_module.fsync_dir

    def spy(directory: str) -> None:
        synced.append(directory)
        real(directory)

    monkeypatch.setattr(blobs_module, "fsync_dir", spy)
    return synced


def test_put_many_stores_every_blob_and_syncs_each_directory_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blobs sharing a fan-out directory cost one directory fsync; new directories sync root."""
    store = BlobStore(tmp_path / "blobs")
    data = [b"message %d\r\n" % n for n in range(40)]
    synced = _fsyncs(monkeypatch)
    digests = store.put_many(data)
    assert digests == [hashlib.sha256(d).hexdigest() for d in data]
    for digest, raw in zip(digests, data, strict=True):
        assert isinstance(digest, str)
        assert store.get(digest) == raw
    fanout = {str(store.root / d[:2]) for d in digests if isinstance(d, str)}
    assert sorted(synced) == sorted([*fanout, str(store.root)])
    assert not list(store.root.glob("*/.tmp-*"))


def test_put_many_syncs_the_directory_of_a_blob_already_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob found in place may be another writer's, not yet synced: its directory is synced."""
    store = BlobStore(tmp_path / "blobs")
    digest = store.put(b"same bytes")
    synced = _fsyncs(monkeypatch)
    assert store.put_many([b"same bytes"]) == [digest]
    assert synced == [str(store.root / digest[:2])]


def test_put_many_reports_each_failure_on_its_own_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob that cannot be written fails alone; a failed directory fsync fails its blobs."""
    store = BlobStore(tmp_path / "blobs")
    good, bad = b"good\r\n", b"bad\r\n"
    bad_dir = store.root / hashlib.sha256(bad).hexdigest()[:2]
    bad_dir.parent.mkdir(parents=True)
    bad_dir.write_text("a file where a directory should be")
    results = store.put_many([good, bad])
    assert results[0] == hashlib.sha256(good).hexdigest()
    assert isinstance(results[1], BlobStoreError)

    def failing(directory: str) -> None:
        raise OSError(5, os.strerror(5))

    monkeypatch.setattr(blobs_module, "fsync_dir", failing)
    again = store.put_many([b"other\r\n"])
    assert isinstance(again[0], BlobStoreError)
    with pytest.raises(BlobStoreError):
        store.put(b"third\r\n")


def test_put_pieces_stores_the_pieces_as_one_blob(tmp_path: Path) -> None:
    """A stamped copy is a new header and a view of the body: the same blob as the joined bytes."""
    blobs = BlobStore(tmp_path)
    body = bytes(range(256)) * 1000
    digest = blobs.put_pieces((b"X-Stamp: 1\r\n", memoryview(body)[10:]))
    assert digest == blobs.put(b"X-Stamp: 1\r\n" + body[10:])
    assert blobs.get(digest) == b"X-Stamp: 1\r\n" + body[10:]
    assert [p.name for p in tmp_path.rglob(".tmp-*")] == []


def test_a_blob_file_is_stored_by_renaming_it(tmp_path: Path) -> None:
    """A spooled DATA: written as it came, then fsynced and renamed to its digest."""
    blobs = BlobStore(tmp_path)
    file = blobs.new_file()
    file.write(b"first part\r\n")
    file.write(b"second part\r\n")
    [digest] = blobs.put_many([file])
    assert digest == hashlib.sha256(b"first part\r\nsecond part\r\n").hexdigest()
    assert blobs.get(str(digest)) == b"first part\r\nsecond part\r\n"
    again = blobs.new_file()
    again.write(b"first part\r\nsecond part\r\n")
    assert blobs.put_many([again]) == [digest]  # already there: the copy is removed
    assert list(tmp_path.glob(".spool-*")) == []


def test_sweep_removes_spool_files_a_crash_left(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    old, fresh = blobs.new_file(), blobs.new_file()
    old.close()
    fresh.close()
    os.utime(old.path, (0, 0))
    assert blobs.sweep_spool() == 1
    assert list(tmp_path.glob(".spool-*")) == [fresh.path]


def test_spooled_first_bytes_come_from_the_file_past_the_head(tmp_path: Path) -> None:
    """The header checks may read further than the head kept in memory: the file has it."""
    spooled = start_spool(BlobStore(tmp_path).new_file(), b"Subject: x\r\n")
    spooled.add(b"X-More: y\r\n\r\nbody\r\n")
    spooled.file.close()
    assert spooled.first_bytes(5) == b"Subje"
    assert spooled.first_bytes(24) == b"Subject: x\r\nX-More: y\r\n\r"
    assert spooled.first_bytes(1000) == b"Subject: x\r\nX-More: y\r\n\r\nbody\r\n"
    assert (spooled.crlf, spooled.lf, spooled.cr, spooled.nul) == (4, 4, 4, False)


def _with_prefix(prefix: str, tag: bytes) -> bytes:
    """Bytes whose SHA-256 starts with ``prefix``: a blob bound for that fan-out directory."""
    n = 0
    while True:
        data = b"%s %d\r\n" % (tag, n)
        if hashlib.sha256(data).hexdigest().startswith(prefix):
            return data
        n += 1


@pytest.mark.parametrize("kind", ["bytes", "file"])
def test_a_directory_this_store_did_not_sync_is_synced_in_root_before_a_blob_in_it_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Another writer's fan-out directory may not be durable yet: its entry in root is synced.

    Another writer (the processing step's stamped copies, a second process) can make a
    directory and not yet have synced the root when our blob lands in it; seeing the
    directory there proves nothing about a power loss. Once synced, it costs nothing more.
    """
    store = BlobStore(tmp_path / "blobs")
    first, second = _with_prefix("ab", b"first"), _with_prefix("ab", b"second")
    (store.root / "ab").mkdir(parents=True)  # made by another writer, root not yet synced
    synced = _fsyncs(monkeypatch)

    def blob(data: bytes) -> bytes | blobs_module.BlobFile:
        if kind == "bytes":
            return data
        file = store.new_file()
        file.write(data)
        return file

    assert store.put_many([blob(first)]) == [hashlib.sha256(first).hexdigest()]
    assert sorted(synced) == sorted([str(store.root / "ab"), str(store.root)])
    synced.clear()
    assert store.put_many([blob(second)]) == [hashlib.sha256(second).hexdigest()]
    assert synced == [str(store.root / "ab")]


def test_a_fan_out_directory_removed_by_hand_is_made_again(tmp_path: Path) -> None:
    """The store remembers the directories it made; one removed since is made again."""
    store = BlobStore(tmp_path / "blobs")
    first = store.put(b"first")
    directory = store.root / first[:2]
    (directory / first).unlink()
    directory.rmdir()
    again = b"first"  # the same digest, so the same fan-out directory
    assert store.put(again) == first
    assert store.get(first) == again
    assert [p.name for p in store.root.rglob(".tmp-*")] == []
