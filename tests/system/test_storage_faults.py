"""Storage faults: new mail gets 451/452, never 250, and the server recovers on its own.

Tests run as root, and permissions do not stop root, so the faults are real ones: a small
tmpfs mounted for the test (remounted read-only, or filled), a regular file standing where
the blob directory's parent should be, and a PostgreSQL server stopped with ``pg_ctl stop``
and started again. The server runs throughout; nothing restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import smtplib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses, seed_demo
from mailledger.config import Settings
from mailledger.store.blobs import BlobStore, BlobStoreError
from mailledger.store.deferredblobs import DeferredBlobs
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.freespace import free_bytes
from mailledger.store.models import Base, MessageState, ReceivedMessage
from mailledger.testing.mail import make_email
from mailledger.testing.ports import free_port
from mailledger.testing.postgres import PostgresServer
from mailledger.testing.postgres import running_server as running_postgres
from mailledger.testing.scrape import health
from mailledger.testing.smtp import Transaction, running_server, send_raw_async

CONTACT = "carol@client.example"


def status(reply: tuple[int, str] | None) -> str:
    """``"451 4.3.0"`` from a (code, text) reply."""
    assert reply is not None
    return f"{reply[0]} {reply[1].split()[0]}"


def final_reply(tx: Transaction) -> str:
    """The reply that ended the transaction: DATA's, else the refused RCPT's or MAIL's."""
    if tx.data is not None:
        return status(tx.data)
    if tx.rcpt and not any(200 <= code < 300 for code, _ in tx.rcpt):
        return status(tx.rcpt[-1])
    return status(tx.mail)


def with_storage(settings: Settings, **changes: object) -> Settings:
    storage = settings.storage.model_copy(update=changes)
    verify = settings.verify.model_copy(update={"demo_trust_loopback": True})
    return settings.model_copy(update={"storage": storage, "verify": verify})


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the block."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        reason = f"cannot mount a tmpfs here ({result.stderr.strip()})"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def stored_states(sessions: sessionmaker[Session]) -> list[MessageState]:
    with sessions() as session:
        return list(session.scalars(select(ReceivedMessage.state).order_by(ReceivedMessage.id)))


async def wait_processed(sessions: sessionmaker[Session], count: int) -> list[MessageState]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = await asyncio.to_thread(stored_states, sessions)
        if len(states) == count and MessageState.RECEIVED not in states:
            return states
        await asyncio.sleep(0.1)
    raise AssertionError(f"not processed in time: {stored_states(sessions)}")


@pytest.mark.usefixtures("engine")
async def test_read_only_blob_dir_gets_451_then_recovers(
    settings: Settings, demo: DemoAddresses, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """A blob file system remounted read-only: 451 4.3.0 and nothing stored; rw again: 250.

    Every blob a file (``small_blob_bytes = 0``): ``mount -o remount,ro`` is refused while
    files are open for writing, and the packed small blobs' SQLite file is, from the first
    message on. How a pack that cannot be written fails is in ``test_blob_pack.py``.
    """
    with tmpfs(tmp_path / "disk", "8m") as disk:
        settings = with_storage(
            settings, blob_dir=str(disk / "blobs"), min_free_bytes=0, small_blob_bytes=0
        )
        async with running_server(settings) as port:
            first = await send_raw_async(port, CONTACT, [demo.user_capture], make_email())
            await asyncio.to_thread(remount, disk, "ro")
            refused = await send_raw_async(port, CONTACT, [demo.user_capture], make_email())
            await asyncio.to_thread(remount, disk, "rw")
            later = await send_raw_async(port, CONTACT, [demo.user_capture], make_email())
            states = await wait_processed(sessions, 2)
    assert status(first.data) == "250 2.0.0"
    assert final_reply(refused) == "451 4.3.0"
    assert status(later.data) == "250 2.0.0"
    assert states == [MessageState.PROCESSED, MessageState.PROCESSED]


def block_with_file(directory: Path) -> None:
    shutil.move(directory, directory.with_name("moved-away"))
    directory.write_text("a regular file where a directory should be\n")


def unblock(directory: Path) -> None:
    directory.unlink()
    shutil.move(directory.with_name("moved-away"), directory)


@pytest.mark.usefixtures("engine")
async def test_blob_dir_behind_a_file_gets_451_then_recovers(
    settings: Settings, demo: DemoAddresses, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """The blob directory's parent replaced by a file (no mount needed): 451, then 250."""
    parent = tmp_path / "store"
    settings = with_storage(settings, blob_dir=str(parent / "blobs"), min_free_bytes=0)
    async with running_server(settings) as port:
        first = await send_raw_async(port, CONTACT, [demo.user_capture], make_email())
        await asyncio.to_thread(block_with_file, parent)
        refused = await send_raw_async(port, CONTACT, [demo.user_capture], make_email())
        await asyncio.to_thread(unblock, parent)
        later = await send_raw_async(port, CONTACT, [demo.user_capture], make_email())
        await wait_processed(sessions, 2)
    assert status(first.data) == "250 2.0.0"
    assert final_reply(refused) == "451 4.3.0"
    assert status(later.data) == "250 2.0.0"


def delete_blobs(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            path.unlink()


@pytest.mark.usefixtures("engine")
async def test_free_space_guard_refuses_with_452_before_the_disk_fills(
    settings: Settings, demo: DemoAddresses, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """A filling disk: 452 4.3.1 once the reserve is reached, the reserve never used; after
    space is freed, mail is accepted again."""
    reserve = 1024 * 1024
    body = "x" * 75 + "\r\n"

    def big() -> bytes:  # about 390 KB, a new Message-ID each time (blobs are by content)
        return make_email(body=body * 5000)

    with tmpfs(tmp_path / "disk", "3m") as disk:
        blob_dir = disk / "blobs"
        settings = with_storage(settings, blob_dir=str(blob_dir), min_free_bytes=reserve)
        replies: list[str] = []
        lowest = free_bytes(disk)
        async with running_server(settings) as port:
            for _ in range(8):
                tx = await send_raw_async(port, CONTACT, [demo.user_capture], big())
                replies.append(final_reply(tx))
                lowest = min(lowest, free_bytes(disk))
            # With SIZE declared, the refusal comes at MAIL, before the body is sent.
            data = big()
            sized = await send_raw_async(
                port, CONTACT, [demo.user_capture], data, mail_options=[f"SIZE={len(data)}"]
            )
            await wait_processed(sessions, replies.count("250 2.0.0"))
            await asyncio.to_thread(delete_blobs, blob_dir)  # what retention would do
            after = await send_raw_async(port, CONTACT, [demo.user_capture], big())
    accepted = replies.count("250 2.0.0")
    assert 2 <= accepted < 8, replies
    assert replies[:accepted] == ["250 2.0.0"] * accepted
    assert set(replies[accepted:]) == {"452 4.3.1"}, replies
    assert lowest >= reserve
    assert status(sized.mail) == "452 4.3.1" and sized.data is None
    assert status(after.data) == "250 2.0.0"


@pytest.mark.usefixtures("engine")
async def test_full_disk_without_the_guard_is_451_never_250(
    settings: Settings, demo: DemoAddresses, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """With the guard off, a blob write that hits ENOSPC answers 451; freed space heals it."""
    big = make_email(body=("y" * 75 + "\r\n") * 8000)  # about 620 KB
    with tmpfs(tmp_path / "disk", "1m") as disk:
        blob_dir = disk / "blobs"
        settings = with_storage(settings, blob_dir=str(blob_dir), min_free_bytes=0)
        async with running_server(settings) as port:
            first = await send_raw_async(port, CONTACT, [demo.user_capture], big)
            second = await send_raw_async(
                port, CONTACT, [demo.user_capture], make_email(body=("z" * 75 + "\r\n") * 8000)
            )
            await wait_processed(sessions, 1)
            await asyncio.to_thread(delete_blobs, blob_dir)
            third = await send_raw_async(port, CONTACT, [demo.user_capture], big)
    assert status(first.data) == "250 2.0.0"
    assert final_reply(second) == "451 4.3.0"
    assert status(third.data) == "250 2.0.0"


# --- PostgreSQL stopping ------------------------------------------------------------------


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own: stopping it must not disturb other tests."""
    try:
        with running_postgres() as server:
            yield server
    except RuntimeError as exc:
        if "not found" in str(exc) and not os.environ.get("CI"):
            pytest.skip(str(exc))
        raise


def data_after_rcpt(
    port: int, rcpt: str, data: bytes, between: Callable[[], None]
) -> tuple[int, int]:
    """RCPT, then ``between()`` (the outage), then DATA: (RCPT code, DATA code)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
        smtp.ehlo("mta.client.test")
        smtp.mail(CONTACT)
        rcpt_code, _ = smtp.rcpt(rcpt)
        between()
        data_code, _ = smtp.data(data)  # raises only when DATA itself is refused
        return rcpt_code, data_code


@pytest.mark.slow
async def test_postgres_stopping_gives_451_and_the_service_recovers(
    settings: Settings, own_postgres: PostgresServer
) -> None:
    """PostgreSQL stops: RCPT and DATA get 451, /health fails; it starts: mail flows, the
    message accepted before the outage is processed, all without restarting mailledger."""
    url = own_postgres.url(own_postgres.create_database())
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        demo = seed_demo(session)
    mport = free_port()
    settings = with_storage(settings, min_free_bytes=0)
    settings = settings.model_copy(
        update={
            "database": settings.database.model_copy(update={"url": url}),
            "metrics": settings.metrics.model_copy(update={"listen": f"127.0.0.1:{mport}"}),
            # A message in processing when the database went could not be handed back; its
            # lease lapses and the worker takes it again. A short lease keeps the test short.
            "processing": settings.processing.model_copy(
                update={"poll_interval_seconds": 0.2, "lease_seconds": 2.0}
            ),
        }
    )
    try:
        async with running_server(settings) as port:
            before = await send_raw_async(port, CONTACT, [demo.user_capture], make_email())
            healthy, _ = await asyncio.to_thread(health, mport)
            # The database goes away between RCPT and DATA: the commit fails, so 451.
            codes = await asyncio.to_thread(
                data_after_rcpt, port, demo.user_capture, make_email(), own_postgres.halt
            )
            during = await send_raw_async(port, CONTACT, [demo.user_capture], make_email())
            sick, sick_body = await asyncio.to_thread(health, mport)
            await asyncio.to_thread(own_postgres.resume)
            after = await send_raw_async(port, CONTACT, [demo.user_capture], make_email())
            recovered, _ = await asyncio.to_thread(health, mport)
            states = await wait_processed(sessions, 2)
    finally:
        engine.dispose()
    assert status(before.data) == "250 2.0.0"
    assert healthy == 200
    assert codes == (250, 451)
    assert final_reply(during) == "451 4.3.0"
    assert sick == 503 and sick_body["checks"]["database"] != "ok"
    assert sick_body["checks"]["blob_store"] == "ok"
    assert status(after.data) == "250 2.0.0"
    assert recovered == 200
    assert states == [MessageState.PROCESSED, MessageState.PROCESSED]


# --- Blobs a processing batch stores together -----------------------------------------------


def test_deferred_blobs_are_stored_at_flush_and_a_full_disk_raises(tmp_path: Path) -> None:
    """Kept blobs read from memory, reach the disk only at ``flush``, and a flush that hits
    ENOSPC raises instead of returning, so the worker never commits a row naming them."""
    with tmpfs(tmp_path / "disk", "1m") as disk:
        store = BlobStore(disk / "blobs")
        kept = DeferredBlobs(store)
        small = kept.put_pieces((b"Authentication-Results: x\r\n", memoryview(b"body\r\n")))
        assert small == BlobStore(tmp_path / "reference").put(
            b"Authentication-Results: x\r\nbody\r\n"
        )
        assert kept.exists(small) and not store.exists(small)
        assert kept.get(small) == b"Authentication-Results: x\r\nbody\r\n"
        with kept.open(small) as stream:
            assert stream.read() == kept.get(small)
        assert kept.size(small) == len(kept.get(small))
        kept.flush()
        assert store.get(small) == b"Authentication-Results: x\r\nbody\r\n"
        assert kept.waiting == 0

        too_big = kept.put(b"z" * (2 * 1024 * 1024))
        with pytest.raises(BlobStoreError):
            kept.flush()
        assert not store.exists(too_big)
        assert kept.waiting == 0  # handed back to the caller's retry, not kept for ever
