"""Every blob backend keeps the same promises: durable, streamed, verified, removable.

The backends are the real ones: a directory, SQLite and PostgreSQL (the test server), and an
S3-compatible store (moto's server mode in a process of its own on loopback, so the memory
these tests measure is ours alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import sqlite3
import threading
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses, seed_demo
from mailledger.cli.main import main
from mailledger.config import DatabaseSettings, Settings, StorageSettings, VerifySettings
from mailledger.service import health
from mailledger.service.retention import delete_expired_raw
from mailledger.store.blobbackend import (
    BlobBackend,
    SweepableBackend,
    hash_file,
    open_blob_backend,
)
from mailledger.store.blobpack import PACK_NAME
from mailledger.store.blobs import BlobStore, BlobStoreError
from mailledger.store.blobsweep import SweepRefusedError, sweep_unreferenced
from mailledger.store.dbblobs import CHUNK_BYTES, blob_database_url
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.migrate import upgrade
from mailledger.store.models import (
    Activity,
    Attachment,
    BlobChunk,
    MessageState,
    ReceivedMessage,
    StoredBlob,
    utcnow,
)
from mailledger.testing.mail import make_email, store_received
from mailledger.testing.postgres import PostgresServer
from mailledger.testing.s3server import MotoS3
from mailledger.testing.servers import render_config
from mailledger.testing.smtp import running_server, send_raw_async

MB = 1024 * 1024
LARGE = 25 * MB
# What a streamed read or write of a 25 MB message may hold at its peak: a few chunks.
READ_PEAK_LIMIT = 4 * MB
WRITE_PEAK_LIMIT = 12 * MB  # S3's multipart uploads hold one part (5 MiB here) and its checksum

BACKENDS = [
    "filesystem",  # small blobs packed in one SQLite file, the default
    "filesystem-files",  # small_blob_bytes = 0: every blob a file
    "database-sqlite",
    pytest.param("database-postgres", marks=pytest.mark.postgres),
    "s3",
]


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    """moto's S3 server for this module's tests."""
    with MotoS3() as server:
        yield server


def storage_settings(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings for one backend, on a database and in a bucket of this test's own."""
    url = f"sqlite:///{tmp_path / 'mailledger.db'}"
    storage: dict[str, str | int] = {"blob_dir": str(tmp_path / "blobs"), "min_free_bytes": 0}
    if kind == "database-postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        name = server.create_database()
        url = server.url(name)
        upgrade(url)  # the blob tables come from migration 0015
        request.addfinalizer(lambda: server.drop_database(name))
    if kind.startswith("database"):
        storage["backend"] = "database"
    if kind == "filesystem-files":
        storage["small_blob_bytes"] = 0
    if kind == "s3":
        moto: MotoS3 = request.getfixturevalue("moto")
        storage.update(moto.storage(f"blobs-{uuid.uuid4().hex[:12]}", s3_multipart_bytes=5 * MB))
    return Settings(
        database=DatabaseSettings(url=url), storage=StorageSettings.model_validate(storage)
    )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobBackend]:
    """One backend, empty."""
    store = open_blob_backend(storage_settings(request.param, tmp_path, request))
    yield store
    store.close()


def large_file(store: BlobBackend) -> tuple[str, int]:
    """A 25 MB message spooled in 64 KiB pieces (never whole in memory); its digest and size."""
    file = store.new_file()
    seed = hashlib.sha256(b"large")
    for n in range(LARGE // (64 * 1024)):
        seed.update(n.to_bytes(4, "big"))
        file.write(seed.digest() * 2048)
    file.close()
    [digest] = store.put_many([file])
    assert isinstance(digest, str), digest
    assert not file.path.exists(), "the spool file outlived its stored blob"
    return digest, file.size


def test_write_read_exists_delete(backend: BlobBackend) -> None:
    """Bytes, pieces and spooled files go in and come back; delete removes; names are checked."""
    digest = backend.put(b"Subject: hi\r\n\r\nbody\r\n")
    assert digest == hashlib.sha256(b"Subject: hi\r\n\r\nbody\r\n").hexdigest()
    assert backend.put_pieces((b"Subject: hi\r\n", memoryview(b"\r\nbody\r\n"))) == digest
    assert backend.get(digest) == b"Subject: hi\r\n\r\nbody\r\n"
    assert backend.exists(digest) and backend.size(digest) == 21
    spooled = backend.new_file()
    spooled.write(b"first part\r\n")
    spooled.write(b"second part\r\n")
    empty_digest = hashlib.sha256(b"").hexdigest()
    results = backend.put_many([spooled, b"", b"other"])
    assert results == [
        hashlib.sha256(b"first part\r\nsecond part\r\n").hexdigest(),
        empty_digest,
        hashlib.sha256(b"other").hexdigest(),
    ]
    assert backend.get(empty_digest) == b""
    assert sorted(backend.digests()) == sorted([digest, *results])  # type: ignore[type-var]
    backend.delete(digest)
    backend.delete(digest)  # a missing blob is no error
    assert not backend.exists(digest)
    with pytest.raises(BlobStoreError):
        backend.get(digest)
    with pytest.raises(ValueError, match="not a SHA-256"):
        backend.exists("../../etc/passwd")


def test_a_25mb_message_is_written_and_read_in_pieces(backend: BlobBackend) -> None:
    """Storing and reading a 25 MB message never holds it whole: tracemalloc's peak stays at
    a few chunks; the reader seeks like a file (the processor takes its length so)."""
    tracemalloc.start()
    try:
        digest, size = large_file(backend)
        write_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        with backend.open(digest) as stream:
            assert stream.seek(0, io.SEEK_END) == size == LARGE
            stream.seek(0)
            assert hash_file(stream) == digest
            stream.seek(size - 10)
            assert len(stream.read()) == 10
        read_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert backend.size(digest) == LARGE
    assert write_peak < WRITE_PEAK_LIMIT, f"writing held {write_peak} bytes"
    assert read_peak < READ_PEAK_LIMIT, f"reading held {read_peak} bytes"


def test_put_verified_stores_only_bytes_that_match_their_name(backend: BlobBackend) -> None:
    """A copy whose bytes do not hash to the digest it claims is refused and leaves nothing."""
    data = b"the real message\r\n" * 1000
    digest = hashlib.sha256(data).hexdigest()
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(BlobStoreError, match="hashes to"):
        backend.put_verified(wrong, io.BytesIO(data))
    assert not backend.exists(wrong)
    backend.put_verified(digest, io.BytesIO(data))
    assert backend.get(digest) == data


def corrupt(backend: BlobBackend, digest: str) -> None:
    """Change one stored byte behind the backend's back (a disk or an operator's accident)."""
    if backend.name == "database":
        engine = backend._engine  # type: ignore[attr-defined]
        with engine.begin() as conn:
            conn.execute(
                update(BlobChunk)
                .where(BlobChunk.hash == digest, BlobChunk.seq == 0)
                .values(data=b"X" * CHUNK_BYTES)
            )
    else:
        client = backend._client  # type: ignore[attr-defined]
        body = backend.get(digest)
        client.put_object(
            Bucket=backend.bucket,  # type: ignore[attr-defined]
            Key=backend.key(digest),  # type: ignore[attr-defined]
            Body=b"X" + body[1:],
        )


@pytest.mark.parametrize(
    "kind", ["database-sqlite", pytest.param("database-postgres", marks=pytest.mark.postgres), "s3"]
)
def test_a_corrupted_blob_is_never_read_as_the_message(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Reading a blob through checks it against its name: changed bytes raise, not pass."""
    store = open_blob_backend(storage_settings(kind, tmp_path, request))
    try:
        data = bytes(range(256)) * (3 * CHUNK_BYTES // 256)
        digest = store.put(data)
        corrupt(store, digest)
        with pytest.raises(BlobStoreError, match="hash to"):
            store.get(digest)
    finally:
        store.close()


@pytest.mark.parametrize(
    "kind", ["database-sqlite", pytest.param("database-postgres", marks=pytest.mark.postgres)]
)
def test_two_nodes_storing_the_same_bytes_at_once_both_succeed(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The same message arriving at two nodes at once is stored once, and both get its digest."""
    settings = storage_settings(kind, tmp_path, request)
    nodes = [open_blob_backend(settings), open_blob_backend(settings)]
    data = b"the same forward to two MX hosts\r\n" * 60000
    results: list[str | BlobStoreError] = []
    start = threading.Barrier(len(nodes))

    def store(node: BlobBackend, n: int) -> None:
        start.wait()
        results.extend(node.put_many([data, f"only node {n} has this".encode()]))

    threads = [threading.Thread(target=store, args=(node, n)) for n, node in enumerate(nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    digest = hashlib.sha256(data).hexdigest()
    assert results.count(digest) == 2, results
    assert all(isinstance(r, str) for r in results), results
    assert nodes[0].get(digest) == data
    for node in nodes:
        node.close()


def test_sqlite_keeps_database_blobs_in_a_file_beside_the_database() -> None:
    """SQLite's one writer per file: blobs go to NAME.blobs.db; PostgreSQL keeps one database."""
    assert blob_database_url("sqlite:////var/lib/ml/mailledger.db") == (
        "sqlite:////var/lib/ml/mailledger.blobs.db"
    )
    url = "postgresql+psycopg://ml:secret@db.example/mailledger"
    assert blob_database_url(url) == url
    with pytest.raises(ValueError, match="needs a file"):
        blob_database_url("sqlite:///:memory:")


@pytest.mark.parametrize(
    "kind", ["database-sqlite", pytest.param("database-postgres", marks=pytest.mark.postgres), "s3"]
)
def test_retention_deletes_blobs_in_the_backend(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """An expired raw copy is deleted from whichever backend holds it."""
    settings = storage_settings(kind, tmp_path, request)
    engine = make_engine(settings.database.url)
    if kind != "database-postgres":
        upgrade(settings.database.url)
    sessions = make_sessionmaker(engine)
    store = open_blob_backend(settings)
    try:
        with sessions.begin() as session:
            demo = seed_demo(session)
        old = store_received(sessions, store, make_email(), [demo.user_capture])
        young = store_received(sessions, store, make_email(), [demo.user_capture])
        with sessions.begin() as session:
            row = session.get_one(ReceivedMessage, old)
            row.received_at = row.finished_at = utcnow() - timedelta(days=40)
            row.state = MessageState.FAILED
            old_blob = row.blob
            young_blob = session.get_one(ReceivedMessage, young).blob
        assert store.exists(old_blob)
        assert delete_expired_raw(sessions, store, 30) == (1, 1)
        assert not store.exists(old_blob)
        assert store.exists(young_blob)
    finally:
        store.close()
        engine.dispose()


# --- storage migrate ------------------------------------------------------------------------


def write_config(path: Path, settings: Settings, backend: str) -> Path:
    """A configuration file with ``settings``' database and storage, naming ``backend``."""
    storage = settings.storage.model_dump()
    storage["backend"] = backend
    path.write_text(
        render_config({"database": {"url": settings.database.url}, "storage": storage}),
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize("target", ["database", "s3"])
def test_storage_migrate_copies_verifies_resumes_and_removes(
    target: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``storage migrate`` copies every blob, checks each by its hash, repairs a bad copy on
    a second run, refuses ``--remove-source`` until the config names the target, then removes."""
    kind = "database-sqlite" if target == "database" else "s3"
    settings = storage_settings(kind, tmp_path, request)
    old = write_config(tmp_path / "old.toml", settings, "filesystem")
    new = write_config(tmp_path / "new.toml", settings, target)
    # The default filesystem store: the small messages packed, the large one a file.
    source = open_blob_backend(settings, backend="filesystem")
    small = [source.put(make_email(subject=f"message {n}")) for n in range(5)]
    big, _ = large_file(source)
    everything = {*small, big}

    assert main(["--config", str(old), "storage", "migrate", "--to", target]) == 0
    first = capsys.readouterr().out
    assert f"filesystem -> {target}: 6 blobs verified in the target (6 copied" in first
    assert f"next: set [storage] backend = '{target}'" in first
    dest = open_blob_backend(settings, backend=target)
    assert set(dest.digests()) == everything
    assert dest.get(small[0]) == source.get(small[0])

    # An interrupted or damaged copy: one blob gone, one changed. The next run puts both right.
    dest.delete(small[1])
    corrupt(dest, big)
    assert main(["--config", str(old), "storage", "migrate", "--to", target, "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["copied"], row["already"], row["failed"]) == (2, 4, {})
    with dest.open(big) as stream:
        assert hash_file(stream) == big

    # Removing the source while nodes may still read it is refused.
    argv = ["storage", "migrate", "--from", "filesystem", "--to", target, "--remove-source"]
    assert main(["--config", str(old), *argv]) == 1
    assert "[storage] backend is still 'filesystem'" in capsys.readouterr().err
    assert set(source.digests()) == everything
    assert main(["--config", str(new), *argv]) == 0
    assert "6 removed from the source" in capsys.readouterr().out
    assert list(source.digests()) == []
    assert set(dest.digests()) == everything
    # With the config switched, the same command without --from has nothing to copy from.
    assert main(["--config", str(new), "storage", "migrate", "--to", target]) == 1
    assert "say which backend to copy from" in capsys.readouterr().err
    dest.close()


# --- storage sweep --------------------------------------------------------------------------

SWEEPABLE = [
    "filesystem",
    "filesystem-files",
    "database-sqlite",
    pytest.param("database-postgres", marks=pytest.mark.postgres),
]


def age(store: BlobBackend, digest: str, days: float) -> None:
    """Make a blob look last stored ``days`` ago, as if nobody had written it since."""
    when = utcnow() - timedelta(days=days)
    if isinstance(store, BlobStore):
        if store.path(digest).exists():
            os.utime(store.path(digest), (when.timestamp(), when.timestamp()))
        pack = store.root / PACK_NAME
        if pack.exists():
            with contextlib.closing(sqlite3.connect(pack)) as db, db:
                db.execute(
                    "UPDATE blobs SET stored_at = ? WHERE hash = ?", (when.timestamp(), digest)
                )
        return
    with store._engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(update(StoredBlob).where(StoredBlob.hash == digest).values(created_at=when))


def sweep_world(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[Settings, sessionmaker[Session], BlobBackend, DemoAddresses]:
    """A migrated database with the demo tenant, and the backend ``kind``."""
    settings = storage_settings(kind, tmp_path, request)
    if kind != "database-postgres":
        upgrade(settings.database.url)
    engine = make_engine(settings.database.url)
    request.addfinalizer(engine.dispose)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        demo = seed_demo(session)
    store = open_blob_backend(settings)
    request.addfinalizer(store.close)
    return settings, sessions, store, demo


@pytest.mark.parametrize("kind", SWEEPABLE)
def test_storage_sweep_removes_only_old_bytes_nothing_names(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """An old blob no row names goes; an old one a message names, and a young unnamed one (a
    message still being recorded), stay. A dry run counts the same and removes nothing."""
    _, sessions, store, demo = sweep_world(kind, tmp_path, request)
    message = store_received(sessions, store, make_email(subject="kept"), [demo.user_capture])
    with sessions() as session:
        named = session.get_one(ReceivedMessage, message).blob
    unnamed = store.put(b"a stamped copy of a message that ended quarantined\r\n")
    young = store.put(b"bytes whose row is still being written\r\n")
    for digest in (named, unnamed):
        age(store, digest, 10)

    dry = sweep_unreferenced(sessions, store, timedelta(days=7), dry_run=True)
    assert (dry.old, dry.named, dry.removed, dry.stored_again) == (2, 1, 1, 0)
    assert store.exists(unnamed)

    report = sweep_unreferenced(sessions, store, timedelta(days=7))
    assert (report.old, report.named, report.removed, report.stored_again) == (2, 1, 1, 0)
    assert not store.exists(unnamed)
    assert store.exists(named)
    assert store.exists(young)
    # Nothing old is left unnamed: a second sweep removes nothing.
    again = sweep_unreferenced(sessions, store, timedelta(days=7))
    assert (again.old, again.removed) == (1, 0)


@pytest.mark.parametrize("kind", SWEEPABLE)
def test_bytes_stored_again_during_a_sweep_are_never_removed(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The race a sweep must never lose: it lists an old unnamed blob, then a writer stores the
    same bytes (finds them there) to name them in a row. The blob stays. Once it is removed, a
    writer storing the bytes writes them again."""
    _, _, store, _ = sweep_world(kind, tmp_path, request)
    data = b"the same message received again\r\n"
    digest = store.put(data)
    age(store, digest, 10)
    cutoff = utcnow() - timedelta(days=7)
    sweep = cast("SweepableBackend", store)
    assert list(sweep.stored_before(cutoff)) == [digest]
    assert store.put(data) == digest  # a writer finds the bytes: they are marked stored now
    assert list(sweep.stored_before(cutoff)) == []
    assert not sweep.remove_if_not_stored_since(digest, cutoff)
    assert store.get(digest) == data

    age(store, digest, 10)
    assert sweep.remove_if_not_stored_since(digest, cutoff)
    assert not store.exists(digest)
    assert store.put(data) == digest
    assert store.get(digest) == data


def test_storage_sweep_removes_a_crash_s_leftover_files(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Half-written (``.tmp-``), half-removed (``.trash-``) and spooled (``.spool-``) files older
    than the cutoff are a crash's; younger ones may be a writer's at work and stay."""
    _, sessions, store, _ = sweep_world("filesystem-files", tmp_path, request)
    assert isinstance(store, BlobStore)
    digest = store.put(b"a blob\r\n")
    fan_out = store.path(digest).parent
    old = [fan_out / ".tmp-0123456789abcdef-1-1", fan_out / ".trash-0123456789abcdef-1-2"]
    spooled = store.root / ".spool-crashed"
    working = fan_out / ".tmp-fedcba9876543210-1-3"
    ten_days_ago = (utcnow() - timedelta(days=10)).timestamp()
    for path in [*old, spooled, working]:
        path.write_bytes(b"partial")
    for path in [*old, spooled]:
        os.utime(path, (ten_days_ago, ten_days_ago))
    report = sweep_unreferenced(sessions, store, timedelta(days=7))
    assert report.leftovers == 3
    assert not any(path.exists() for path in [*old, spooled])
    assert working.exists()
    assert store.exists(digest)


def test_storage_sweep_is_refused_where_it_could_race_a_writer(
    tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """S3 cannot delete an object only if nobody stored it meanwhile, and less than a day could
    take bytes of mail still being processed: both are refused, saying why, removing nothing."""
    settings, sessions, store, _ = sweep_world("s3", tmp_path, request)
    digest = store.put(b"kept\r\n")
    with pytest.raises(SweepRefusedError, match="storage migrate --to database"):
        sweep_unreferenced(sessions, store, timedelta(days=7))
    config = write_config(tmp_path / "s3.toml", settings, "s3")
    assert main(["--config", str(config), "storage", "sweep"]) == 1
    assert "cannot remove an object only if no writer" in capsys.readouterr().err
    assert store.exists(digest)
    with pytest.raises(SweepRefusedError, match="too recent"):
        sweep_unreferenced(sessions, store, timedelta(hours=2))
    with pytest.raises(SystemExit):
        main(["--config", str(config), "storage", "sweep", "--older-than-days", "0.5"])
    assert "at least 1 day" in capsys.readouterr().err


def test_storage_sweep_command(
    tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """``mailledger storage sweep`` on the default backend: a dry run, then the sweep, in words
    and as JSON."""
    settings, _, store, _ = sweep_world("filesystem", tmp_path, request)
    config = write_config(tmp_path / "fs.toml", settings, "filesystem")
    orphans = [store.put(f"orphan {n}\r\n".encode()) for n in range(3)]
    for digest in orphans:
        age(store, digest, 30)
    assert main(["--config", str(config), "storage", "sweep", "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert "filesystem: 3 blob(s) not stored since" in said
    assert "would remove 3 nothing names" in said
    assert all(store.exists(digest) for digest in orphans)
    argv = ["storage", "sweep", "--older-than-days", "14", "--json"]
    assert main(["--config", str(config), *argv]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["backend"], row["dry_run"], row["old"], row["removed"]) == (
        "filesystem",
        False,
        3,
        3,
    )
    assert not any(store.exists(digest) for digest in orphans)


# --- the server on the database backend -----------------------------------------------------


async def test_the_server_on_the_database_backend_keeps_nothing_in_blob_dir(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """SMTP to activity with blobs in the database (SQLite): a large spooled message and its
    attachment are stored and read there, and the node's blob_dir ends with no blob in it."""
    settings = storage_settings("database-sqlite", tmp_path, request)
    settings = settings.model_copy(update={"verify": VerifySettings(demo_trust_loopback=True)})
    upgrade(settings.database.url)
    engine = make_engine(settings.database.url)
    sessions: sessionmaker[Session] = make_sessionmaker(engine)
    with sessions.begin() as session:
        demo: DemoAddresses = seed_demo(session)
    quote = b"%PDF-1.4 a quote\n" * 4000
    raw = make_email(
        body="Hello Richard,\r\n" + "the details follow.\r\n" * 200_000,  # spooled: > 1 MB
        attachments=[("quote.pdf", "application/pdf", quote)],
        message_id="big-quote@client.example",
    )
    async with running_server(settings) as port:
        tx = await send_raw_async(port, "carol@client.example", [demo.user_capture], raw)
        assert tx.data is not None and tx.data[0] == 250, tx
        for _ in range(400):
            with sessions() as session:
                state = session.scalar(select(ReceivedMessage.state))
            if state is not MessageState.RECEIVED:
                break
            await asyncio.sleep(0.05)
    check_stored_in_database(settings, sessions, raw, quote)
    engine.dispose()


def check_stored_in_database(
    settings: Settings, sessions: sessionmaker[Session], raw: bytes, quote: bytes
) -> None:
    """The message, its attachment and its stamped copy are in the database backend only."""
    store = open_blob_backend(settings)
    with sessions() as session:
        message = session.scalars(select(ReceivedMessage)).one()
        activity = session.scalars(select(Activity)).one()
        attachment = session.scalars(select(Attachment)).one()
        rows = session.scalar(select(func.count()).select_from(StoredBlob))
    assert message.state is MessageState.PROCESSED, message.reason
    assert store.get(message.blob) == raw
    assert store.get(attachment.blob) == quote
    assert store.exists(activity.raw_blob)
    assert rows == 0  # the main database holds no blob: they are in the file beside it
    leftovers = [p for p in Path(settings.storage.blob_dir).rglob("*") if p.is_file()]
    assert leftovers == []
    store.close()


async def test_health_fails_while_the_object_store_is_unreachable(tmp_path: Path) -> None:
    """/health's blob_store check asks the S3 backend itself, not only the spool directory."""
    server = MotoS3().start()
    settings = Settings(
        database=DatabaseSettings(url=f"sqlite:///{tmp_path / 'mailledger.db'}"),
        storage=StorageSettings.model_validate(
            {"blob_dir": str(tmp_path / "spool"), **server.storage("health")}
        ),
    )
    engine = make_engine(settings.database.url)
    sessions = make_sessionmaker(engine)
    store = open_blob_backend(settings)
    try:
        reachable = await health.check(sessions, store.root, blobs=store, timeout_seconds=10)
        assert "blob_store" not in reachable.problems
        server.stop()
        gone = await health.check(sessions, store.root, blobs=store, timeout_seconds=10)
        assert "blob_store" in gone.problems, gone.problems
        assert "BlobStoreError" in gone.problems["blob_store"]
    finally:
        server.stop()
        store.close()
        engine.dispose()
