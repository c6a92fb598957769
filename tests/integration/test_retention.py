"""Retention deletes expired raw copies and quarantined mail, and nothing that is still needed."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.cli.main import main
from mailledger.config import RetentionSettings, Settings
from mailledger.service.retention import RETENTION_STEP, RetentionReport, run_retention, sweep
from mailledger.store.blobs import BlobStore
from mailledger.store.models import Activity, MessageState, ReceivedMessage, TraceEntry, utcnow
from mailledger.testing.mail import make_email, store_received


def aged(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    demo: DemoAddresses,
    *,
    days: float,
    state: MessageState,
    raw: bytes | None = None,
) -> ReceivedMessage:
    """A stored message received (and finished) ``days`` ago, in ``state``."""
    message_id = store_received(sessions, blobs, raw or make_email(), [demo.user_capture])
    with sessions.begin() as session:
        row = session.get_one(ReceivedMessage, message_id)
        row.received_at = row.finished_at = utcnow() - timedelta(days=days)
        row.state = state
        if state is MessageState.PROCESSED:
            session.add(
                Activity(
                    tenant_id=row.routes[0].tenant_id,
                    dedupe_key=f"mid:{row.queue_id}",
                    direction="inbound",
                    raw_blob=row.blob,
                )
            )
    return row


def retention_config(settings: Settings, retention: str) -> Path:
    """A configuration file on the test's database and blobs, with ``[retention]`` lines."""
    config = Path(settings.storage.blob_dir).parent / "retention.toml"
    config.write_text(
        f'[database]\nurl = "{settings.database.url}"\n'
        f'[storage]\nblob_dir = "{settings.storage.blob_dir}"\n'
        f"[retention]\n{retention}\n",
        encoding="utf-8",
    )
    return config


@pytest.mark.postgres
def test_raw_copies_past_raw_days_go_and_the_rest_stays(
    sessions: sessionmaker[Session], blobs: BlobStore, demo: DemoAddresses
) -> None:
    """Old processed raw bytes are deleted (trace kept, activity link cleared); new, shared
    and quarantined ones stay; a second pass deletes nothing more."""
    old = aged(sessions, blobs, demo, days=40, state=MessageState.PROCESSED)
    new = aged(sessions, blobs, demo, days=5, state=MessageState.PROCESSED)
    shared_raw = make_email()
    old_shared = aged(sessions, blobs, demo, days=40, state=MessageState.FAILED, raw=shared_raw)
    aged(sessions, blobs, demo, days=1, state=MessageState.PROCESSED, raw=shared_raw)
    held = aged(sessions, blobs, demo, days=40, state=MessageState.QUARANTINED)
    policy = RetentionSettings(raw_days=30)

    dry = run_retention(sessions, blobs, policy, dry_run=True)
    assert (dry.raw_messages, dry.quarantined) == (2, 0)
    assert blobs.path(old.blob).exists()

    report = run_retention(sessions, blobs, policy)
    assert (report.raw_messages, report.raw_blobs, report.quarantined) == (2, 1, 0)
    assert not blobs.path(old.blob).exists()
    assert blobs.path(new.blob).exists()
    assert blobs.path(old_shared.blob).exists()  # a newer message still needs the bytes
    assert blobs.path(held.blob).exists()
    with sessions() as session:
        kept = session.get_one(ReceivedMessage, old.id)
        assert kept.state is MessageState.PROCESSED
        steps = [(t.step, t.decision) for t in kept.trace]
        assert (RETENTION_STEP, "raw-deleted") in steps
        links = session.scalars(select(Activity.raw_blob).where(Activity.raw_blob == old.blob))
        assert list(links) == []
    again = run_retention(sessions, blobs, policy)
    assert (again.raw_messages, again.quarantined) == (0, 0)


@pytest.mark.postgres
def test_quarantine_past_quarantine_days_is_deleted(
    sessions: sessionmaker[Session], blobs: BlobStore, demo: DemoAddresses
) -> None:
    """Quarantined mail older than quarantine_days goes with its trace; younger mail stays."""
    old = aged(sessions, blobs, demo, days=20, state=MessageState.QUARANTINED)
    young = aged(sessions, blobs, demo, days=2, state=MessageState.QUARANTINED)
    report = run_retention(sessions, blobs, RetentionSettings(quarantine_days=14))
    assert report.quarantined == 1
    with sessions() as session:
        assert session.get(ReceivedMessage, old.id) is None
        assert session.get(ReceivedMessage, young.id) is not None
        orphans = session.scalars(select(TraceEntry).where(TraceEntry.message_id == old.id))
        assert list(orphans) == []
    assert not blobs.path(old.blob).exists()
    assert blobs.path(young.blob).exists()


def test_zero_days_keeps_everything(
    sessions: sessionmaker[Session], blobs: BlobStore, demo: DemoAddresses
) -> None:
    """The default policy (0 days) deletes nothing, however old."""
    old = aged(sessions, blobs, demo, days=4000, state=MessageState.QUARANTINED)
    report = run_retention(sessions, blobs, RetentionSettings())
    assert (report.raw_messages, report.quarantined) == (0, 0)
    assert blobs.path(old.blob).exists()


def test_retention_run_command(
    settings: Settings,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    demo: DemoAddresses,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``retention run --dry-run`` counts, ``retention run`` deletes, both say how many."""
    old = aged(sessions, blobs, demo, days=10, state=MessageState.QUARANTINED)
    config = retention_config(settings, "quarantine_days = 7")
    assert main(["--config", str(config), "retention", "run", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["quarantined"] == 1
    assert blobs.path(old.blob).exists()
    assert main(["--config", str(config), "retention", "run"]) == 0
    assert "1 quarantined message(s)" in capsys.readouterr().out
    assert not blobs.path(old.blob).exists()


def test_sweep_days_removes_stored_bytes_nothing_names(
    settings: Settings,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    demo: DemoAddresses,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``[retention] sweep_days``: the pass ``serve`` runs removes bytes no row names that
    nobody stored for that long (a quarantined message's stamped copy), and keeps the
    quarantined message's own bytes; the dry run counts them first."""
    kept = aged(sessions, blobs, demo, days=30, state=MessageState.QUARANTINED)
    stamped = blobs.put(b"Authentication-Results: mx; spf=pass\r\n" + make_email())
    ten_days_ago = (utcnow() - timedelta(days=10)).timestamp()
    for digest in (kept.blob, stamped):
        os.utime(blobs.path(digest), (ten_days_ago, ten_days_ago))
    policy = RetentionSettings(sweep_days=7, webhook_days=0)

    counted = run_retention(sessions, blobs, policy, dry_run=True)
    assert counted.unnamed_blobs == 1
    assert blobs.path(stamped).exists()
    report = run_retention(sessions, blobs, policy)
    assert report.unnamed_blobs == 1
    assert report.deleted_any
    assert "1 stored blob(s) nothing names" in str(report)
    assert not blobs.path(stamped).exists()
    assert blobs.path(kept.blob).exists()

    config = retention_config(settings, "sweep_days = 7\nwebhook_days = 0")
    assert main(["--config", str(config), "retention", "run", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["unnamed_blobs"], row["sweep_refused"]) == (0, None)


def test_sweep_days_is_not_applied_on_s3() -> None:
    """On a backend that cannot remove bytes only if nobody stored them meanwhile, the pass
    removes nothing and its report says why."""

    class NotSweepable:
        name = "s3"

    report = RetentionReport()
    sweep(
        sessionmaker(),
        NotSweepable(),  # type: ignore[arg-type]
        RetentionSettings(sweep_days=7),
        report,
    )
    assert (report.unnamed_blobs, report.deleted_any) == (0, False)
    assert "[storage] backend 's3' cannot remove an object" in report.sweep_refused
    assert "sweep_days not applied" in str(report)
