"""Small blobs packed in one SQLite file: where each blob goes, how any store reads them back,
several processes writing at once, a broken pack, and blob directories on shared disks.

The filesystem backend's other promises (durable, streamed, removable, swept) are in
``test_blob_backends.py``, run both packed and with every blob a file.
"""

from __future__ import annotations

import gc
import hashlib
import io
import multiprocessing
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mailledger.config import DatabaseSettings, Settings, StorageSettings
from mailledger.service import health
from mailledger.store.blobbackend import open_blob_backend
from mailledger.store.blobpack import PACK_NAME, shared_file_system
from mailledger.store.blobs import BlobStore, BlobStoreError
from mailledger.store.engine import make_engine, make_sessionmaker

LIMIT = 1024


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def packed(root: Path) -> set[str]:
    """The digests in the pack, read with SQLite itself."""
    with sqlite3.connect(root / PACK_NAME) as db:
        return {row[0] for row in db.execute("SELECT hash FROM blobs")}


def test_blobs_up_to_the_limit_are_packed_and_larger_ones_are_files(tmp_path: Path) -> None:
    """At the limit a blob is a row, one byte over it a file; a batch mixing both keeps its
    order, and each reads back whole, with its size, from either place."""
    store = BlobStore(tmp_path, small_blob_bytes=LIMIT)
    at_limit, over = b"a" * LIMIT, b"b" * (LIMIT + 1)
    pieces = (b"c" * 600, memoryview(b"d" * 400))
    results = store.put_many([over, at_limit, pieces, b"e" * 5000])
    whole = b"c" * 600 + b"d" * 400
    assert results == [digest_of(b) for b in (over, at_limit, whole, b"e" * 5000)]
    assert packed(tmp_path) == {digest_of(at_limit), digest_of(whole)}
    assert not store.path(digest_of(at_limit)).exists()
    assert store.path(digest_of(over)).exists()
    for data in (at_limit, over, whole):
        assert store.get(digest_of(data)) == data
        assert store.size(digest_of(data)) == len(data)
        assert store.exists(digest_of(data))
    with store.open(digest_of(at_limit)) as stream:
        stream.seek(LIMIT - 3)
        assert stream.read() == b"aaa"
    store.close()


def test_any_store_on_the_directory_reads_both_places(tmp_path: Path) -> None:
    """The setting decides only where new blobs go: a store with packing off reads packed
    blobs, one with it on reads files, and deleting removes a blob from both places."""
    packing = BlobStore(tmp_path, small_blob_bytes=LIMIT)
    files = BlobStore(tmp_path)
    in_pack = packing.put(b"written packed\r\n")
    as_file = files.put(b"written as a file\r\n")
    assert files.get(in_pack) == b"written packed\r\n"
    assert packing.get(as_file) == b"written as a file\r\n"
    assert sorted(packing.digests()) == sorted(files.digests()) == sorted([in_pack, as_file])
    # The same bytes in both places (the setting changed between two writes): listed once.
    assert files.put(b"written packed\r\n") == in_pack
    assert sorted(packing.digests()) == sorted([in_pack, as_file])
    files.delete(in_pack)
    assert not packing.exists(in_pack) and not files.path(in_pack).exists()
    with pytest.raises(BlobStoreError):
        packing.get(in_pack)
    packing.close()
    files.close()


def test_blobs_copied_in_go_where_blobs_written_go(tmp_path: Path) -> None:
    """``storage migrate --to filesystem`` copies with ``put_verified``: a small blob is
    packed and a large one is a file, as if the server had written them."""
    store = BlobStore(tmp_path, small_blob_bytes=LIMIT)
    small, large = b"s" * LIMIT, b"l" * (LIMIT + 1)
    for data in (small, large):
        store.put_verified(digest_of(data), io.BytesIO(data))
        assert store.get(digest_of(data)) == data
    assert packed(tmp_path) == {digest_of(small)}
    assert store.path(digest_of(large)).exists()
    assert not list(tmp_path.glob(".spool-*"))
    store.close()


def test_a_thread_s_connection_goes_with_the_thread(tmp_path: Path) -> None:
    """Each thread reads through a connection of its own; a thread that ends takes its
    connection with it, and closing the store leaves no file of the pack open."""
    store = BlobStore(tmp_path, small_blob_bytes=LIMIT)
    digest = store.put(b"read from many threads\r\n")

    def read() -> None:
        assert store.get(digest) == b"read from many threads\r\n"

    for _ in range(20):
        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
    gc.collect()
    assert len(store._pack._connections) == 1  # this thread's, from the put
    store.close()
    open_files = [fd for fd in Path("/proc/self/fd").iterdir() if PACK_NAME in _target(fd)]
    assert open_files == []


def _target(fd: Path) -> str:
    try:
        return str(fd.readlink())
    except OSError:  # closed meanwhile (the listing's own descriptor)
        return ""


def _store_batches(root: str, writer: int, batches: int) -> list[str]:
    """A writer process: batches of ten blobs, one of them the same in every writer."""
    store = BlobStore(root, small_blob_bytes=LIMIT)
    digests: list[str] = []
    for batch in range(batches):
        blobs = [f"writer {writer} batch {batch} blob {n}\r\n".encode() for n in range(9)]
        blobs.append(f"every writer's blob {batch}\r\n".encode())
        for result in store.put_many(blobs):
            assert isinstance(result, str), result
            digests.append(result)
    store.close()
    return digests


def test_processes_storing_at_once_all_succeed(tmp_path: Path) -> None:
    """The listener, the processing processes and sync write the pack side by side: every
    put returns its digest, and every blob, also one all of them stored, is there once."""
    used = BlobStore(tmp_path, small_blob_bytes=LIMIT)
    used.put(b"opened in the parent before the fork\r\n")  # a connection the children inherit
    context = multiprocessing.get_context("fork")
    with context.Pool(3) as pool:
        results = pool.starmap(_store_batches, [(str(tmp_path), w, 40) for w in range(3)])
    every = {digest for result in results for digest in result}
    assert len(every) == 3 * 40 * 9 + 40 + 1 - 1
    assert packed(tmp_path) == every | {digest_of(b"opened in the parent before the fork\r\n")}
    assert used.get(digest_of(b"every writer's blob 7\r\n")) == b"every writer's blob 7\r\n"
    used.close()


def test_a_blob_is_stored_when_put_returns_even_if_the_process_is_killed(tmp_path: Path) -> None:
    """A writer killed with SIGKILL right after ``put`` returned (as a listener answers 250
    and dies) leaves the blob readable: the commit had finished, nothing waited in memory."""
    script = (
        "import os, signal, sys\n"
        "from mailledger.store.blobs import BlobStore\n"
        f"store = BlobStore({str(tmp_path)!r}, small_blob_bytes={LIMIT})\n"
        "print(store.put(b'accepted just before the crash\\r\\n'), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    digest = done.stdout.strip()
    assert BlobStore(tmp_path).get(digest) == b"accepted just before the crash\r\n"


def test_a_broken_pack_fails_the_small_blobs_only(tmp_path: Path) -> None:
    """A pack that is not an SQLite database (a disk's or an operator's accident) fails the
    small blobs of a batch with a BlobStoreError naming the file, so intake answers a
    temporary failure; large blobs in the same batch are stored as files all the same."""
    (tmp_path / PACK_NAME).write_bytes(b"this is not an SQLite database" * 100)
    store = BlobStore(tmp_path, small_blob_bytes=LIMIT)
    large = b"x" * (LIMIT + 1)
    small_result, large_result = store.put_many([b"small\r\n", large])
    assert isinstance(small_result, BlobStoreError)
    assert PACK_NAME in str(small_result)
    assert large_result == digest_of(large)
    assert store.get(digest_of(large)) == large
    with pytest.raises(BlobStoreError, match=PACK_NAME):
        store.get(digest_of(b"small\r\n"))
    store.close()


async def test_health_fails_while_the_pack_cannot_be_read(tmp_path: Path) -> None:
    """/health's blob_store check reads the pack, so a node whose small-blob file is damaged
    (every small message would get 451) is taken out of a load balancer's rotation."""
    settings = Settings(
        database=DatabaseSettings(url=f"sqlite:///{tmp_path / 'mailledger.db'}"),
        storage=StorageSettings(blob_dir=str(tmp_path / "blobs"), min_free_bytes=0),
    )
    engine = make_engine(settings.database.url)
    sessions = make_sessionmaker(engine)
    store = open_blob_backend(settings)
    try:
        store.put(b"a small message\r\n")
        fine = await health.check(sessions, store.root, blobs=store, timeout_seconds=10)
        assert "blob_store" not in fine.problems
        store.close()  # as a restart would, after the disk damaged the file
        (store.root / PACK_NAME).write_bytes(b"not an SQLite database any more" * 200)
        for leftover in store.root.glob(PACK_NAME + "-*"):
            leftover.unlink()
        damaged = await health.check(sessions, store.root, blobs=store, timeout_seconds=10)
        assert "blob_store" in damaged.problems, damaged.problems
        assert PACK_NAME in damaged.problems["blob_store"]
    finally:
        store.close()
        engine.dispose()


MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:50 / /var/lib/mailledger rw,relatime - nfs4 files.internal:/export rw,vers=4.2
41 40 254:1 / /var/lib/mailledger/local rw,relatime - xfs /dev/vdb rw
42 27 0:51 / /mnt/my\\040share rw,relatime - fuse.sshfs me@host:/ rw
"""


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/var/lib/mailledger/blobs", "nfs4"),
        ("/var/lib/mailledger", "nfs4"),
        ("/var/lib/mailledger/local/blobs", None),  # a local disk mounted inside the share
        ("/var/lib/mailledger-other", None),  # a prefix of the name is not inside it
        ("/mnt/my share/blobs", "fuse.sshfs"),
        ("/srv/blobs", None),
    ],
)
def test_a_blob_directory_on_a_network_file_system_is_known(path: str, kind: str | None) -> None:
    """The mount that holds the directory decides: the longest mount point containing it."""
    assert shared_file_system(path, MOUNTINFO) == kind


def test_this_machine_s_test_directories_are_local(tmp_path: Path) -> None:
    """The tests' own directories are not on a shared file system, so the default packs."""
    assert shared_file_system(tmp_path) is None
    settings = Settings(storage=StorageSettings(blob_dir=str(tmp_path), min_free_bytes=0))
    store = open_blob_backend(settings)
    digest = store.put(b"packed by default\r\n")
    assert packed(tmp_path) == {digest}
    assert not (tmp_path / digest[:2] / digest).exists()
    store.close()
