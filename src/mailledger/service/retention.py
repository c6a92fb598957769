"""Retention: delete what has outlived ``[retention]``, and nothing else.

Two rules, each off (0 days) by default, because nothing accepted disappears unless the
operator says so (DESIGN §2):

- ``raw_days``: the raw bytes of a *finished* message (processed or failed) older than that
  are deleted. The message row, its trace and its activity (text, HTML, attachments) stay;
  the trace says when and why the raw copy went, and the activity's raw link is cleared.
  Bytes still referenced elsewhere (the same message received again recently, an outbound row
  still to deliver, an attachment) are kept.
- ``quarantine_days``: a message quarantined longer than that is deleted with its routes,
  trace and unshared bytes, exactly as the operator's ``quarantine delete`` does.
- ``webhook_days`` (30 by default: it is a log, not mail): webhook events whose every delivery
  is over (delivered, or failed for good) and finished longer ago than that are deleted with
  their deliveries and attempts. An event still to deliver is never touched.
- ``sweep_days``: stored bytes that no row names and no writer has stored for that long are
  removed, as ``mailledger storage sweep`` does (``store.blobsweep``); not on S3.

Rows are taken in batches, each in its own transaction; on PostgreSQL with ``SKIP LOCKED``, so
several nodes running the pass at once never handle the same row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from mailledger.config import RetentionSettings
from mailledger.logs import get_logger
from mailledger.store import quarantine, webhooks
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.blobsweep import SweepRefusedError, sweep_unreferenced
from mailledger.store.engine import is_postgres, reading
from mailledger.store.models import (
    Activity,
    Attachment,
    MessageState,
    OutboundMessage,
    OutboundState,
    ReceivedMessage,
    TraceEntry,
    utcnow,
)

log = get_logger(__name__)

RETENTION_STEP = "retention"
RAW_DELETED = "raw-deleted"
_FINISHED = (MessageState.PROCESSED, MessageState.FAILED)


@dataclass(slots=True)
class RetentionReport:
    """What one pass deleted (or, in a dry run, would delete)."""

    raw_messages: int = 0
    raw_blobs: int = 0
    quarantined: int = 0
    webhook_events: int = 0
    webhook_attempts: int = 0
    unnamed_blobs: int = 0  # ``sweep_days``: stored bytes no row names (store.blobsweep)
    sweep_refused: str = ""  # why ``sweep_days`` could not apply (the S3 backend)
    dry_run: bool = False

    def __str__(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        attempts = "" if self.dry_run else f" ({self.webhook_attempts} attempt(s))"
        said = (
            f"retention {verb}: raw copies of {self.raw_messages} finished message(s) "
            f"({self.raw_blobs} stored blob(s)), {self.quarantined} quarantined message(s), "
            f"{self.webhook_events} finished webhook event(s){attempts}, "
            f"{self.unnamed_blobs} stored blob(s) nothing names"
        )
        if self.sweep_refused:
            said += f"; sweep_days not applied: {self.sweep_refused}"
        return said

    @property
    def deleted_any(self) -> bool:
        """Whether the pass deleted (or would delete) anything at all."""
        return bool(
            self.raw_messages or self.quarantined or self.webhook_events or self.unnamed_blobs
        )


def enabled(policy: RetentionSettings) -> bool:
    """Whether any rule of ``policy`` deletes anything (0 days keeps for ever)."""
    return bool(
        policy.raw_days or policy.quarantine_days or policy.webhook_days or policy.sweep_days
    )


def sweep(
    sessions: sessionmaker[Session],
    blobs: BlobBackend,
    policy: RetentionSettings,
    report: RetentionReport,
) -> None:
    """``sweep_days``: remove (or count) stored bytes no row names, into ``report``."""
    try:
        swept = sweep_unreferenced(
            sessions, blobs, timedelta(days=policy.sweep_days), dry_run=report.dry_run
        )
    except SweepRefusedError as exc:
        report.sweep_refused = str(exc)
        log.warning("retention: sweep_days not applied", reason=str(exc))
        return
    report.unnamed_blobs = swept.removed


def _raw_expired(cutoff: datetime) -> ColumnElement[bool]:
    already = exists(
        select(TraceEntry.id).where(
            TraceEntry.message_id == ReceivedMessage.id,
            TraceEntry.step == RETENTION_STEP,
            TraceEntry.decision == RAW_DELETED,
        )
    )
    return ReceivedMessage.state.in_(_FINISHED) & (ReceivedMessage.received_at < cutoff) & ~already


def _quarantine_expired(cutoff: datetime) -> ColumnElement[bool]:
    since = func.coalesce(ReceivedMessage.finished_at, ReceivedMessage.received_at)
    return (ReceivedMessage.state == MessageState.QUARANTINED) & (since < cutoff)


def _batch(session: Session, where: ColumnElement[bool], size: int) -> list[int]:
    query = select(ReceivedMessage.id).where(where).order_by(ReceivedMessage.id).limit(size)
    if is_postgres(session.get_bind().engine):
        query = query.with_for_update(skip_locked=True)
    return list(session.scalars(query))


def _raw_still_needed(session: Session, digest: str, cutoff: datetime) -> bool:
    """Whether bytes must stay: another message keeps them, or a row still has to send them."""
    keeping = select(ReceivedMessage.id).where(
        ReceivedMessage.blob == digest,
        ~_raw_expired(cutoff),
        # A row whose raw copy was already deleted no longer keeps the bytes.
        ~exists(
            select(TraceEntry.id).where(
                TraceEntry.message_id == ReceivedMessage.id,
                TraceEntry.step == RETENTION_STEP,
                TraceEntry.decision == RAW_DELETED,
            )
        ),
    )
    sending = select(OutboundMessage.id).where(
        OutboundMessage.blob == digest,
        OutboundMessage.state.in_((OutboundState.QUEUED, OutboundState.HELD)),
    )
    attached = select(Attachment.id).where(Attachment.blob == digest)
    return any(session.scalar(select(exists(q))) for q in (keeping, sending, attached))


def delete_expired_raw(
    sessions: sessionmaker[Session], blobs: BlobBackend, days: int, *, batch_size: int = 200
) -> tuple[int, int]:
    """Delete raw copies of finished messages older than ``days``; (messages, blobs)."""
    cutoff = utcnow() - timedelta(days=days)
    messages = files = 0
    while True:
        with sessions.begin() as session:
            ids = _batch(session, _raw_expired(cutoff), batch_size)
            for message_id in ids:
                message = session.get_one(ReceivedMessage, message_id)
                session.add(
                    TraceEntry(
                        message_id=message_id,
                        at=utcnow(),
                        step=RETENTION_STEP,
                        decision=RAW_DELETED,
                        detail=f"raw message older than {days} day(s) deleted ([retention])",
                    )
                )
                session.flush()
                if _raw_still_needed(session, message.blob, cutoff):
                    continue
                session.execute(
                    update(Activity).where(Activity.raw_blob == message.blob).values(raw_blob="")
                )
                # Deleted inside the transaction, after the reference check (as quarantine
                # delete does): a failed commit loses only bytes that had expired anyway.
                blobs.delete(message.blob)
                files += 1
            messages += len(ids)
        if len(ids) < batch_size:
            return messages, files


def delete_expired_quarantine(
    sessions: sessionmaker[Session], blobs: BlobBackend, days: int, *, batch_size: int = 200
) -> int:
    """Delete messages quarantined more than ``days`` ago; how many."""
    cutoff = utcnow() - timedelta(days=days)
    deleted = 0
    while True:
        with sessions.begin() as session:
            ids = _batch(session, _quarantine_expired(cutoff), batch_size)
            for message_id in ids:
                quarantine.delete(session, blobs, message_id)
            deleted += len(ids)
        if len(ids) < batch_size:
            return deleted


def delete_finished_webhook_events(
    sessions: sessionmaker[Session], days: int, *, batch_size: int = 200
) -> tuple[int, int]:
    """Delete webhook events finished more than ``days`` ago; (events, attempts)."""
    cutoff = utcnow() - timedelta(days=days)
    events = attempts = 0
    while True:
        with sessions.begin() as session:
            skip_locked = is_postgres(session.get_bind().engine)
            done, gone = webhooks.delete_finished_events(
                session, cutoff, limit=batch_size, skip_locked=skip_locked
            )
        events += done
        attempts += gone
        if done < batch_size:
            return events, attempts


def count_expired(sessions: sessionmaker[Session], policy: RetentionSettings) -> RetentionReport:
    """What a pass would delete now, changing nothing (``--dry-run``)."""
    report = RetentionReport(dry_run=True)
    now = utcnow()
    with reading(sessions) as session:
        if policy.raw_days:
            where = _raw_expired(now - timedelta(days=policy.raw_days))
            report.raw_messages = int(
                session.scalar(select(func.count()).select_from(ReceivedMessage).where(where)) or 0
            )
            report.raw_blobs = int(
                session.scalar(select(func.count(func.distinct(ReceivedMessage.blob))).where(where))
                or 0
            )
        if policy.quarantine_days:
            where = _quarantine_expired(now - timedelta(days=policy.quarantine_days))
            report.quarantined = int(
                session.scalar(select(func.count()).select_from(ReceivedMessage).where(where)) or 0
            )
        if policy.webhook_days:
            report.webhook_events = webhooks.count_finished_events(
                session, now - timedelta(days=policy.webhook_days)
            )
    return report


def run_retention(
    sessions: sessionmaker[Session],
    blobs: BlobBackend,
    policy: RetentionSettings,
    *,
    dry_run: bool = False,
) -> RetentionReport:
    """One retention pass under ``policy``; a rule with 0 days is skipped."""
    if dry_run:
        report = count_expired(sessions, policy)
    else:
        report = _delete_expired(sessions, blobs, policy)
    if policy.sweep_days:
        sweep(sessions, blobs, policy, report)  # a dry run's sweep only counts
    return report


def _delete_expired(
    sessions: sessionmaker[Session], blobs: BlobBackend, policy: RetentionSettings
) -> RetentionReport:
    """The row rules of one pass: raw copies, quarantined mail, the webhook log."""
    report = RetentionReport()
    if policy.raw_days:
        report.raw_messages, report.raw_blobs = delete_expired_raw(
            sessions, blobs, policy.raw_days, batch_size=policy.batch_size
        )
    if policy.quarantine_days:
        report.quarantined = delete_expired_quarantine(
            sessions, blobs, policy.quarantine_days, batch_size=policy.batch_size
        )
    if policy.webhook_days:
        report.webhook_events, report.webhook_attempts = delete_finished_webhook_events(
            sessions, policy.webhook_days, batch_size=policy.batch_size
        )
    return report


async def retention_loop(
    sessions: sessionmaker[Session],
    blobs: BlobBackend,
    policy: Callable[[], RetentionSettings],
    stop: asyncio.Event,
    *,
    on_report: Callable[[RetentionReport], None] | None = None,
) -> None:
    """Run a pass every ``interval_seconds`` until ``stop``; ``policy`` is read each time, so
    a reload's new values apply from the next pass. A failed pass is logged and retried."""
    while not stop.is_set():
        current = policy()
        if enabled(current):
            try:
                report = await asyncio.to_thread(run_retention, sessions, blobs, current)
            except Exception as exc:  # noqa: BLE001 - storage down: try again next round
                log.warning("retention pass failed", error=str(exc)[:300])
            else:
                if report.deleted_any:
                    log.info(
                        "retention pass",
                        raw_messages=report.raw_messages,
                        raw_blobs=report.raw_blobs,
                        quarantined=report.quarantined,
                        webhook_events=report.webhook_events,
                        webhook_attempts=report.webhook_attempts,
                        unnamed_blobs=report.unnamed_blobs,
                    )
                if on_report is not None:
                    on_report(report)
        try:
            await asyncio.wait_for(stop.wait(), current.interval_seconds)
        except TimeoutError:
            continue
