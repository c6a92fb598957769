"""The processing worker: claims stored messages and runs them through the processor.

Claims are leases (owner, expiry) in the database, so a message claimed by a process that died
is taken over once its lease lapses, and on PostgreSQL several nodes share the work with
``FOR UPDATE SKIP LOCKED`` (DESIGN §9). Attempts are counted when claimed, so a message that
crashes the process every time ends ``failed`` instead of looping forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import structlog
from sqlalchemy import bindparam, select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mailledger.capture.processor import Arrival, Prepared, RetryLater, prepare, process_message
from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.metrics import FinishedSink, Metrics
from mailledger.store import leases
from mailledger.store.blobs import BlobStore, BlobStoreError
from mailledger.store.engine import reading
from mailledger.store.models import (
    MessageRoute,
    MessageState,
    ReceivedMessage,
    Tenant,
    TraceEntry,
    utcnow,
)
from mailledger.verify.authenticate import Authenticator
from mailledger.verify.messageauth import Gateway

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
    select(MessageRoute.tenant_id, Tenant.gateway_networks, Tenant.gateway_authserv_id)
    .join(Tenant, Tenant.id == MessageRoute.tenant_id)
    .where(MessageRoute.message_id == bindparam("id"))
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
        claimed = leases.claim_waiting(
            self._sessions,
            leases.PROCESSING,
            owner=self._owner,
            lease_seconds=settings.lease_seconds,
            limit=settings.batch_size,
        )
        return [lease.id for lease in claimed]

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
        """Parse and authenticate the message before the write transaction opens.

        The sender checks wait on DNS for up to the time budget, and parsing and writing a
        blob take CPU and a disk flush; inside the transaction they would hold the database's
        write lock (SQLite) and stall intake's commits meanwhile. None: nothing to do any more.
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
        gateways = {
            route.tenant_id: Gateway(tuple(route.gateway_networks), route.gateway_authserv_id)
            for route in routes
        }
        arrival = Arrival(
            message.blob,
            message.received_at,
            message.peer,
            message.helo,
            message.mail_from,
            gateways,
        )
        return prepare(self._blobs, self._settings, self._authenticator, arrival)

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
        """Hand one message back: at once and uncounted after a race, later after a fault."""
        delay = 0 if retry_now else self._settings.processing.poll_interval_seconds * 5
        with contextlib.suppress(OperationalError, DBAPIError), self._sessions.begin() as session:
            leases.release(
                session,
                leases.PROCESSING,
                [message_id],
                owner=self._owner,
                not_before=utcnow() + timedelta(seconds=delay),
                refund_attempt=retry_now,
            )

    def release_claims(self) -> None:
        """Hand back messages claimed but not processed, so they need not wait for the lease."""
        with contextlib.suppress(OperationalError, DBAPIError), self._sessions.begin() as session:
            leases.release(session, leases.PROCESSING, owner=self._owner, refund_attempt=True)
