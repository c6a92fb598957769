"""The processing worker: claims stored messages and runs them through the processor.

Claims are leases (owner, expiry) in the database, so a message claimed by a process that died
is taken over once its lease lapses, and on PostgreSQL several nodes share the work with
``FOR UPDATE SKIP LOCKED`` (DESIGN §9). Attempts are counted when claimed, so a message that
crashes the process every time ends ``failed`` instead of looping forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Select, bindparam, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mailledger.capture.processor import Prepared, RetryLater, prepare, process_message
from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.metrics import FinishedSink, Metrics
from mailledger.store.blobs import BlobStore, BlobStoreError
from mailledger.store.engine import finds_any, is_postgres, reading
from mailledger.store.models import (
    MessageRoute,
    MessageState,
    ReceivedMessage,
    Tenant,
    TraceEntry,
    utcnow,
)
from mailledger.verify.authenticate import Authenticator, in_networks
from mailledger.verify.authresults import stamp
from mailledger.verify.messageauth import trusts_loopback

log = structlog.get_logger("mailledger.worker")

# What preparing a message reads, as plain rows: loading ORM objects cost more than the reads.
_FACTS = select(
    ReceivedMessage.queue_id,
    ReceivedMessage.trace_id,
    ReceivedMessage.state,
    ReceivedMessage.blob,
    ReceivedMessage.peer,
    ReceivedMessage.helo,
    ReceivedMessage.mail_from,
    ReceivedMessage.received_at,
).where(ReceivedMessage.id == bindparam("id"))
_ROUTE_GATEWAYS = (
    select(MessageRoute.tenant_id, Tenant.gateway_networks)
    .join(Tenant, Tenant.id == MessageRoute.tenant_id)
    .where(MessageRoute.message_id == bindparam("id"))
)


def _claimable(now: datetime) -> Select[int]:
    """Messages waiting for processing whose claim, if any, has lapsed."""
    return select(ReceivedMessage.id).where(
        ReceivedMessage.state == MessageState.RECEIVED,
        or_(ReceivedMessage.claim_expires_at.is_(None), ReceivedMessage.claim_expires_at < now),
    )


class Worker:
    """Processes received messages until stopped; ``wake`` makes it look at once."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        blobs: BlobStore,
        settings: Settings,
        authenticator: Authenticator | None = None,
        metrics: FinishedSink | None = None,
    ) -> None:
        self._sessions = sessions
        self._metrics: FinishedSink = metrics or Metrics()
        self._blobs = blobs
        self._settings = settings
        self._authenticator = authenticator or Authenticator(Resolver(settings.dns), settings)
        self._owner = settings.service.node_id
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._running: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """New work was stored: look now instead of at the next poll."""
        self._wakeup.set()

    async def run(self) -> None:
        """Claim and process batches until ``stop`` is called."""
        poll = self._settings.processing.poll_interval_seconds
        while not self._stopping:
            try:
                claimed = await asyncio.to_thread(self.claim_batch)
            except (OperationalError, DBAPIError) as exc:
                log.warning("claim failed; database unavailable", error=str(exc)[:200])
                claimed = []
            for message_id in claimed:
                if self._stopping:
                    break
                await asyncio.to_thread(self.process_one, message_id)
            if self._stopping:
                break
            if not claimed:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), poll)
        await asyncio.to_thread(self.release_claims)

    async def stop(self) -> None:
        """Finish the message in hand, hand back the rest of the batch, and return."""
        self._stopping = True
        self._wakeup.set()

    def claim_batch(self) -> list[int]:
        """Claim up to ``batch_size`` messages that are unclaimed or whose lease lapsed."""
        settings = self._settings.processing
        now = utcnow()
        expires = now + timedelta(seconds=settings.lease_seconds)
        if not finds_any(self._sessions, _claimable(now)):
            return []  # an idle poll of each process, without taking the write lock
        with self._sessions.begin() as session:
            query = _claimable(now).order_by(ReceivedMessage.id).limit(settings.batch_size)
            if is_postgres(session.get_bind().engine):
                query = query.with_for_update(skip_locked=True)
            ids = list(session.scalars(query))
            if ids:
                session.execute(
                    update(ReceivedMessage)
                    .where(ReceivedMessage.id.in_(ids))
                    .values(
                        claimed_by=self._owner,
                        claim_expires_at=expires,
                        attempts=ReceivedMessage.attempts + 1,
                    )
                )
        return ids

    def process_one(self, message_id: int) -> None:
        """Process one claimed message in one transaction; failures retry, then end ``failed``."""
        bound = log.bind(message=message_id)
        try:
            prepared = self._prepare(message_id)
            if prepared is None:
                return
            with self._sessions.begin() as session:
                # The row lock keeps a node whose lease lapsed from racing the new owner.
                message = session.get(ReceivedMessage, message_id, with_for_update=True)
                if (
                    message is None
                    or message.state is not MessageState.RECEIVED
                    or message.claimed_by != self._owner
                ):
                    return  # finished elsewhere, or our lease lapsed and another node took it
                if message.attempts > self._settings.processing.max_attempts:
                    self._fail(session, message, "too many processing attempts")
                    return
                process_message(
                    session,
                    self._blobs,
                    message,
                    self._settings,
                    self._authenticator,
                    final_attempt=message.attempts >= self._settings.processing.max_attempts,
                    prepared=prepared,
                )
                bound.info("processed", state=message.state.value, reason=message.reason or None)
            self._metrics.message_finished(message.state, message.received_at)
        except RetryLater as exc:
            bound.info("processing deferred: a check failed temporarily", reason=str(exc)[:200])
            self._defer(message_id, str(exc))
        except IntegrityError:
            # Another worker recorded the same email at the same moment; processing again
            # finds its activity and merges into it.
            bound.info("dedupe race; will merge on retry")
            self._release(message_id, retry_now=True)
        except (BlobStoreError, OperationalError, DBAPIError) as exc:
            bound.warning("processing deferred: storage unavailable", error=str(exc)[:200])
            self._release(message_id, retry_now=False)
        except Exception as exc:  # noqa: BLE001 - an unknown fault must not stop the worker
            bound.exception("processing failed")
            self._record_error(message_id, f"{type(exc).__name__}: {exc}"[:500])

    def _prepare(self, message_id: int) -> Prepared | None:
        """Parse, run the sender checks and stamp the copy before the write transaction opens.

        The checks wait on DNS for up to the time budget, and parsing and writing a blob take
        CPU and a disk flush; inside the transaction they would hold the database's write lock
        (SQLite) and stall intake's commits meanwhile. None: nothing to do any more.
        """
        with reading(self._sessions) as session:
            connection = session.connection()
            message = connection.execute(_FACTS, {"id": message_id}).one_or_none()
            if message is None or message.state is not MessageState.RECEIVED:
                return None
            routes = connection.execute(_ROUTE_GATEWAYS, {"id": message_id}).all()
        # process_one runs in a copied context (asyncio.to_thread): these ids reach every
        # log line of this message's processing, the processor's included.
        structlog.contextvars.bind_contextvars(
            queue_id=message.queue_id,
            trace_id=message.trace_id,
            tenant_id=sorted({route.tenant_id for route in routes}),
        )
        peer, helo, mail_from = message.peer, message.helo, message.mail_from
        behind_gateway = bool(routes) and all(
            r.gateway_networks and in_networks(peer, list(r.gateway_networks)) for r in routes
        )
        prepared = prepare(self._blobs, message.blob, message.received_at, self._settings)
        if behind_gateway or trusts_loopback(self._settings, peer):
            return prepared
        sender = prepared.parsed.sender if prepared.parsed is not None else None
        if sender is None:
            return prepared  # unparseable or ambiguous From: quarantined before any check
        checked = self._authenticator.authenticate(
            prepared.raw, peer=peer, helo=helo, mail_from=mail_from, from_domain=sender.domain
        )
        stamped = stamp(prepared.raw, self._authenticator.authserv_id, checked)
        return replace(prepared, checked=checked, stamped=self._blobs.put_pieces(stamped))

    def _fail(self, session: Session, message: ReceivedMessage, reason: str) -> None:
        message.state = MessageState.FAILED
        message.reason = reason
        message.finished_at = utcnow()
        message.claimed_by = None
        message.claim_expires_at = None
        session.add(
            TraceEntry(
                message_id=message.id, at=utcnow(), step="worker", decision="failed", detail=reason
            )
        )

    def _record_error(self, message_id: int, error: str) -> None:
        """Note the error in the trace; the message is retried until max_attempts."""
        try:
            with self._sessions.begin() as session:
                message = session.get(ReceivedMessage, message_id)
                if message is None or message.state is not MessageState.RECEIVED:
                    return
                session.add(
                    TraceEntry(
                        message_id=message.id,
                        at=utcnow(),
                        step="worker",
                        decision="error",
                        detail=error,
                    )
                )
                if message.attempts >= self._settings.processing.max_attempts:
                    self._fail(session, message, f"processing error: {error}")
                else:
                    message.claimed_by = None
                    message.claim_expires_at = utcnow() + timedelta(
                        seconds=min(2**message.attempts, 300)
                    )
        except (OperationalError, DBAPIError):
            log.warning("could not record processing error", message=message_id)

    def _defer(self, message_id: int, reason: str) -> None:
        """Try again later, backing off; the last attempt decides whatever DNS says."""
        with contextlib.suppress(OperationalError, DBAPIError), self._sessions.begin() as session:
            message = session.get(ReceivedMessage, message_id)
            if message is None or message.state is not MessageState.RECEIVED:
                return
            delay = min(30 * 2 ** max(message.attempts - 1, 0), 3600)
            session.add(
                TraceEntry(
                    message_id=message.id,
                    at=utcnow(),
                    step="worker",
                    decision="deferred",
                    detail=f"retry in {delay} s: {reason}"[:2000],
                )
            )
            message.claimed_by = None
            message.claim_expires_at = utcnow() + timedelta(seconds=delay)

    def _release(self, message_id: int, *, retry_now: bool) -> None:
        delay = 0 if retry_now else self._settings.processing.poll_interval_seconds * 5
        with contextlib.suppress(OperationalError, DBAPIError), self._sessions.begin() as session:
            session.execute(
                update(ReceivedMessage)
                .where(
                    ReceivedMessage.id == message_id,
                    ReceivedMessage.claimed_by == self._owner,
                )
                .values(
                    claimed_by=None,
                    claim_expires_at=utcnow() + timedelta(seconds=delay),
                    attempts=ReceivedMessage.attempts - (1 if retry_now else 0),
                )
            )

    def release_claims(self) -> None:
        """Hand back messages claimed but not processed, so they need not wait for the lease."""
        with contextlib.suppress(OperationalError, DBAPIError), self._sessions.begin() as session:
            session.execute(
                update(ReceivedMessage)
                .where(
                    ReceivedMessage.claimed_by == self._owner,
                    ReceivedMessage.state == MessageState.RECEIVED,
                )
                .values(
                    claimed_by=None,
                    claim_expires_at=None,
                    attempts=ReceivedMessage.attempts - 1,
                )
            )
