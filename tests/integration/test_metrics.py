"""The status endpoint of a running server: counters move with the mail, health follows storage."""

from __future__ import annotations

import asyncio
import platform
import re
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import mailledger
from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.mail import replies
from mailledger.mail.replies import Reply
from mailledger.metrics import Metrics, reason_of
from mailledger.store.blobs import BlobStore
from mailledger.store.models import MessageState, ReceivedMessage, utcnow
from mailledger.testing.mail import make_email, store_received
from mailledger.testing.ports import free_port
from mailledger.testing.scrape import health, http_get, scrape, value
from mailledger.testing.smtp import running_server, send_raw_async

pytestmark = pytest.mark.usefixtures("engine")

CONTACT = "carol@client.example"


def with_metrics_port(settings: Settings) -> tuple[Settings, int]:
    """The settings with the status endpoint on a known free loopback port."""
    port = free_port()
    metrics = settings.metrics.model_copy(update={"listen": f"127.0.0.1:{port}"})
    return settings.model_copy(update={"metrics": metrics}), port


async def wait_finished(sessions: sessionmaker[Session], count: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with sessions() as session:
            states = session.scalars(select(ReceivedMessage.state)).all()
        if len(states) >= count and MessageState.RECEIVED not in states:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("messages were not processed in time")


def test_build_info_and_process_series_are_exported() -> None:
    """An operator sees which version runs, and the standard process_* series."""
    text = Metrics().exposition().decode()
    version = re.search(
        r'^mailledger_build_info\{python="([^"]+)",version="([^"]+)"\} 1\.0$', text, re.M
    )
    assert version is not None, text
    assert version.group(2) == mailledger.__version__
    assert version.group(1) == platform.python_version()
    assert re.search(r"^process_cpu_seconds_total \d", text, re.M)
    assert re.search(r"^process_resident_memory_bytes \d", text, re.M)


def test_reason_labels_come_from_the_reply_table() -> None:
    """Refusal reasons are the reply constants' names: a small, fixed label set."""
    assert reason_of(replies.UNKNOWN_USER) == "unknown_user"
    assert reason_of(replies.INSUFFICIENT_STORAGE) == "insufficient_storage"
    # STORAGE_FAILED, LOCAL_ERROR and DIRECTORY_UNAVAILABLE all answer 451 4.3.0.
    assert reason_of(replies.STORAGE_FAILED) == "storage_failed"
    assert reason_of(replies.DIRECTORY_UNAVAILABLE) == "directory_unavailable"
    # Text we never wrote still maps by code and enhanced status, never by free text.
    assert reason_of(replies.UNKNOWN_USER.with_text("something else")) == "unknown_user"
    assert reason_of(Reply(550, "5.1.1", "something else")) == "unknown_user"
    assert reason_of(Reply(554, "5.9.9", "odd")) == "554_5.9.9"


async def test_scrape_during_a_run_shows_the_counters_moving(
    settings: Settings, demo: DemoAddresses, sessions: sessionmaker[Session]
) -> None:
    """Accepted, refused, verdicts, latency and queue gauges change as mail flows."""
    settings, mport = with_metrics_port(settings)
    # Loopback trust makes the forward count as authenticated: a "processed" verdict.
    verify = settings.verify.model_copy(update={"demo_trust_loopback": True})
    settings = settings.model_copy(update={"verify": verify})
    async with running_server(settings) as port:
        before = await asyncio.to_thread(scrape, mport)
        ok = await send_raw_async(port, CONTACT, [demo.user_capture], make_email())
        refused = await send_raw_async(port, CONTACT, ["nobody@acme.capture.example"], make_email())
        # A message with no From is quarantined as ambiguous, whatever the trust.
        odd = await send_raw_async(
            port, CONTACT, [demo.user_capture], b"Subject: no sender\r\n\r\nhi\r\n"
        )
        await wait_finished(sessions, 2)
        after = await asyncio.to_thread(scrape, mport)
        status, body = await asyncio.to_thread(http_get, mport, "/nothing")
    assert ok.accepted and odd.accepted and not refused.accepted
    assert status == 404 and body

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("mailledger_messages_accepted_total", listener="capture") == 2
    assert moved("mailledger_messages_refused_total", stage="rcpt", reason="unknown_user") == 1
    assert moved("mailledger_verdicts_total", state="processed") == 1
    assert moved("mailledger_verdicts_total", state="quarantined") == 1
    assert moved("mailledger_processing_latency_seconds_count") == 2
    assert value(after, "mailledger_processing_latency_seconds_sum") > 0
    assert value(after, "mailledger_quarantine_messages") == 1
    assert value(after, "mailledger_quarantine_bytes") > 0
    assert value(after, "mailledger_queue_depth", queue="received") == 0
    assert value(after, "mailledger_database_up") == 1
    assert value(after, "mailledger_storage_free_bytes", path=settings.storage.blob_dir) > 0


async def test_queue_gauges_show_waiting_mail(
    settings: Settings,
    demo: DemoAddresses,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
) -> None:
    """A message another node holds a lease on shows as queue depth, with its age."""
    settings, mport = with_metrics_port(settings)
    message_id = store_received(sessions, blobs, make_email(), [demo.user_capture])
    with sessions.begin() as session:
        row = session.get_one(ReceivedMessage, message_id)
        row.received_at = utcnow() - timedelta(minutes=10)
        row.claimed_by = "another-node"
        row.claim_expires_at = utcnow() + timedelta(minutes=10)
    async with running_server(settings):
        samples = await asyncio.to_thread(scrape, mport)
    assert value(samples, "mailledger_queue_depth", queue="received") == 1
    assert value(samples, "mailledger_queue_oldest_age_seconds", queue="received") >= 600
    assert value(samples, "mailledger_queue_depth", queue="outbound") == 0


def put_file_in_place(directory: Path) -> None:
    """Replace a directory with a regular file: unusable even for root."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.write_text("a file where the blob directory should be\n")


async def test_health_fails_while_the_blob_store_is_unusable(
    settings: Settings, demo: DemoAddresses, tmp_path: Path
) -> None:
    """/health is 503 naming the blob store while a file stands in its place, 200 after."""
    settings, mport = with_metrics_port(settings)
    blob_dir = Path(settings.storage.blob_dir)
    async with running_server(settings) as _port:
        good, good_body = await asyncio.to_thread(health, mport)
        await asyncio.to_thread(put_file_in_place, blob_dir)
        bad, bad_body = await asyncio.to_thread(health, mport)
        await asyncio.to_thread(blob_dir.unlink)
        again, _ = await asyncio.to_thread(health, mport)
    assert (good, good_body["status"]) == (200, "ok")
    assert bad == 503
    assert bad_body["checks"]["database"] == "ok"
    assert bad_body["checks"]["blob_store"] != "ok"
    assert again == 200
