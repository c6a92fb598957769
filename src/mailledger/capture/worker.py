"""The processing worker: claims stored messages and runs them through the processor.

Claims are leases (owner, expiry) in the database, so a message claimed by a process that died
is taken over once its lease lapses, and on PostgreSQL several nodes share the work with
``FOR UPDATE SKIP LOCKED`` (DESIGN §9). Attempts are counted when claimed, so a message that
crashes the process every time ends ``failed`` instead of looping forever.

A claimed batch is recorded in one transaction: each message is read, parsed and
authenticated first (no transaction open), then all of them are written together, each in a
savepoint of its own, so a message that fails is rolled back alone and handled after the
commit (retried later, or ``failed``) while the others are committed. One commit (one fsync on
SQLite) and one insert per table of the rows every message writes serve the whole batch,
where a transaction per message spent most of its time in the database's fixed costs
(`make bench`). The messages are loaded as plain rows and their statements run on the
driver's cursor (``pipeline.claimed``, ``store.precompiled``): SQLAlchemy's execution of
them cost more than the database's work (``python -m bench.processing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Engine, bindparam, select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mailledger.capture.pipeline.claimed import ClaimedMessage, load_claimed, write_outcomes
from mailledger.capture.pipeline.lookups import Lookups
from mailledger.capture.pipeline.pending import TRACE, PendingRows
from mailledger.capture.processor import (
    MAILBOX_FACTS,
    Arrival,
    Prepared,
    RetryLater,
    mailbox_of,
    prepare,
    record_claimed,
)
from mailledger.config import Settings
from mailledger.dnsauth.orgdomain import organizational_domain
from mailledger.dnsauth.resolver import Resolver
from mailledger.logs import bound_ids
from mailledger.mail.freemail import free_mail_domains
from mailledger.metrics import FinishedSink, Metrics
from mailledger.store import leases
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.blobs import BlobStoreError
from mailledger.store.deferredblobs import DeferredBlobs
from mailledger.store.engine import reading
from mailledger.store.lockwaits import LockWaits, lock_waits
from mailledger.store.models import (
    MessageRoute,
    MessageState,
    ReceivedMessage,
    Tenant,
    TraceEntry,
    utcnow,
)
from mailledger.store.precompiled import Cursor
from mailledger.verify.authenticate import Authenticator
from mailledger.verify.messageauth import Gateway

log = structlog.get_logger("mailledger.worker")

# What preparing a message reads, as plain rows: loading ORM objects cost more than the reads.
_FACTS = select(
    ReceivedMessage.id,
    ReceivedMessage.queue_id,
    ReceivedMessage.trace_id,
    ReceivedMessage.state,
    ReceivedMessage.blob,
    ReceivedMessage.peer,
    ReceivedMessage.helo,
    ReceivedMessage.mail_from,
    ReceivedMessage.received_at,
    ReceivedMessage.mailbox_account_id,
    *MAILBOX_FACTS,
).where(ReceivedMessage.id.in_(bindparam("ids", expanding=True)))
_ROUTE_GATEWAYS = (
    select(
        MessageRoute.message_id,
        MessageRoute.tenant_id,
        Tenant.gateway_networks,
        Tenant.gateway_authserv_id,
    )
    .join(Tenant, Tenant.id == MessageRoute.tenant_id)
    .where(MessageRoute.message_id.in_(bindparam("ids", expanding=True)))
)
# Claimed messages are loaded for recording this many at a time: a transaction that runs
# out of time leaves the rest to the next one, which loads them again.
LOAD_CHUNK = 4
# A batch is prepared message by message before its transaction opens; after this long, the
# messages prepared so far are recorded, so a check that waits on DNS holds back few others.
RECORD_AFTER_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class _Claimed:
    """What intake stored about a claimed message: enough to prepare it and name it in logs."""

    arrival: Arrival
    log_ids: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Finished:
    """A message whose outcome was committed, for the log line and the metrics."""

    id: int
    state: MessageState
    reason: str
    received_at: datetime


@dataclass(slots=True)
class _Batch:
    """One recording transaction's shared state: its cursor, caches, rows and outcomes."""

    session: Session
    sql: Cursor
    blobs: DeferredBlobs  # attachments, stored together before the commit
    lookups: Lookups
    rows: PendingRows
    decided: list[ClaimedMessage]  # their outcomes are written together at the end
    finished: list[_Finished]
    failures: dict[int, Exception]

    def rolled_back(self, message_id: int, exc: Exception) -> None:
        """A message's savepoint was rolled back: forget what it added, note why.

        What it changed through the session (forwarding set-up) went with the savepoint;
        the session forgets its objects, so the commit cannot write them again. Earlier
        messages' were written at the end of their savepoints.
        """
        self.rows.discard()
        self.lookups.forget()
        self.session.expunge_all()
        self.failures[message_id] = exc


def warm_up() -> None:
    """Load now what the first message would otherwise wait for.

    The Public Suffix List (DMARC alignment) takes ~0.2 s of CPU to read, and the free-mail
    list a little: at start-up, not in the first message's time.
    """
    organizational_domain("example.com")
    free_mail_domains()


class Worker:
    """Processes received messages until stopped; ``wake`` makes it look at once."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        blobs: BlobBackend,
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
        # The next batch, claimed in the transaction that recorded the last one.
        self._claimed_ahead: list[int] = []
        # Whether the server's writers wait for SQLite's lock (None: as if always).
        self._waits = _lock_waits_of(sessions)

    def wake(self) -> None:
        """New work was stored: look now instead of at the next poll."""
        self._wakeup.set()

    async def run(self) -> None:
        """Claim and process batches until ``stop`` is called."""
        poll = self._settings.processing.poll_interval_seconds
        await asyncio.to_thread(warm_up)
        while not self._stopping:
            try:
                claimed = await asyncio.to_thread(self.claim_batch)
            except (OperationalError, DBAPIError) as exc:
                log.warning("claim failed; database unavailable", error=str(exc)[:200])
                claimed = []
            if claimed and not self._stopping:
                await asyncio.to_thread(self.process_batch, claimed, claim_next=True)
            if self._stopping:
                break
            if not claimed:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), poll)
        await asyncio.to_thread(self.release_claims)

    async def stop(self) -> None:
        """Record the messages prepared so far, hand back the rest of the batch, and return."""
        self._stopping = True
        self._wakeup.set()

    def claim_batch(self) -> list[int]:
        """Claim up to ``batch_size`` messages that are unclaimed or whose lease lapsed.

        The batch the last one's final transaction claimed comes first (``_record_some``).
        """
        if self._claimed_ahead:
            ahead, self._claimed_ahead = self._claimed_ahead, []
            return ahead
        claimed = leases.claim_waiting(self._sessions, leases.PROCESSING, **self._claim_terms())
        return [lease.id for lease in claimed]

    def _claim_terms(self) -> dict[str, Any]:
        """Whose claim, for how long, how many: the same for a batch claimed either way."""
        settings = self._settings.processing
        return {
            "owner": self._owner,
            "lease_seconds": settings.lease_seconds,
            "limit": settings.batch_size,
        }

    def process_one(self, message_id: int) -> None:
        """Process one claimed message (a batch of one)."""
        self.process_batch([message_id])

    def process_batch(self, message_ids: Sequence[int], *, claim_next: bool = False) -> None:
        """Prepare each claimed message, then record them together in one transaction.

        Failures are per message: one that cannot be prepared or recorded is retried later,
        then ends ``failed``, and the others are recorded all the same. ``claim_next`` (the
        run loop): the last transaction claims the next batch too (``claim_batch``).
        """
        try:
            claimed = self._read_claimed(message_ids)
        except (OperationalError, DBAPIError) as exc:
            log.warning("processing deferred: storage unavailable", error=str(exc)[:200])
            for message_id in message_ids:
                self._release(message_id, retry_now=False)
            return
        prepared: dict[int, Prepared] = {}
        # The stamped copies, stored together before the messages are recorded.
        blobs = DeferredBlobs(self._blobs)
        started = time.monotonic()
        for message_id in message_ids:
            if self._stopping:
                break  # what is prepared is recorded; the rest is handed back by run()
            found = claimed.get(message_id)
            if found is None:
                continue  # finished elsewhere
            with bound_ids(found.log_ids):
                try:
                    prepared[message_id] = prepare(
                        blobs, self._settings, self._authenticator, found.arrival
                    )
                except Exception as exc:  # noqa: BLE001 - one message's fault is its own
                    self._after_failure(message_id, exc)
            if prepared and time.monotonic() - started >= RECORD_AFTER_SECONDS:
                self._store_and_record(blobs, prepared, claimed)
                prepared, started = {}, time.monotonic()
        if prepared:
            self._store_and_record(blobs, prepared, claimed, claim_next=claim_next)

    def _store_and_record(
        self,
        blobs: DeferredBlobs,
        prepared: dict[int, Prepared],
        claimed: dict[int, _Claimed],
        *,
        claim_next: bool = False,
    ) -> None:
        """Store the prepared messages' blobs (fsyncs side by side), then record them."""
        try:
            blobs.flush()
        except BlobStoreError as exc:
            for message_id in prepared:
                with bound_ids(claimed[message_id].log_ids):
                    self._after_failure(message_id, exc)
            return
        self._record(prepared, claimed, claim_next=claim_next)

    def _claim_in(self, sql: Cursor) -> list[int]:
        """The next batch, claimed in the caller's transaction (``claim_batch``'s rule)."""
        return leases.claim_on(sql, leases.PROCESSING, **self._claim_terms())

    def _read_claimed(self, message_ids: Sequence[int]) -> dict[int, _Claimed]:
        """What preparing the messages needs, read in two statements, outside any write.

        Parsing and the sender checks (which wait on DNS) happen before the write transaction
        opens: inside it they would hold the database's write lock (SQLite) and stall intake's
        commits meanwhile. Messages already finished are left out.
        """
        with reading(self._sessions) as session:
            connection = session.connection()
            ids = {"ids": list(message_ids)}
            facts = [
                row for row in connection.execute(_FACTS, ids) if row.state is MessageState.RECEIVED
            ]
            routes = connection.execute(_ROUTE_GATEWAYS, ids).all()
        gateways: dict[int, dict[int, Gateway]] = {}
        for route in routes:
            gateways.setdefault(route.message_id, {})[route.tenant_id] = Gateway(
                tuple(route.gateway_networks), route.gateway_authserv_id
            )
        claimed = {}
        for message in facts:
            tenants = gateways.get(message.id, {})
            arrival = Arrival(
                message.blob,
                message.received_at,
                message.peer,
                message.helo,
                message.mail_from,
                tenants,
                mailbox=mailbox_of(
                    message.mailbox_account_id, message.mailbox_kind, message.mailbox_authserv_id
                ),
            )
            # These ids reach every log line of this message's processing.
            log_ids = {
                "queue_id": message.queue_id,
                "trace_id": message.trace_id,
                "tenant_id": sorted(tenants),
            }
            claimed[message.id] = _Claimed(arrival, log_ids)
        return claimed

    def _record(
        self,
        prepared: dict[int, Prepared],
        claimed: dict[int, _Claimed],
        *,
        claim_next: bool = False,
    ) -> None:
        """Record prepared messages, as many per transaction as its hold time allows.

        ``[processing] transaction_hold_seconds``: on SQLite intake's commit, and so the 250,
        waits for the transaction (`make bench`: a whole batch of 32 in one transaction raised
        the p99 to 250 from 41 to 221 ms at a load processing kept up with). A few messages per
        commit already share its fsync. While none of the server's writers waits for the lock,
        a transaction goes on up to ``transaction_max_seconds`` (``store.lockwaits``): a
        backlog is recorded with a third of the commits.

        The transactions share their lookups (``pipeline.lookups``): they follow one another
        within about a second. A transaction that fails takes its answers with it.
        """
        waiting: dict[int, Prepared] = dict(prepared)
        lookups: Lookups | None = None
        while waiting:
            waiting, lookups = self._record_some(waiting, claimed, lookups, claim_next=claim_next)

    def _record_some(
        self,
        prepared: dict[int, Prepared],
        claimed: dict[int, _Claimed],
        lookups: Lookups | None,
        *,
        claim_next: bool = False,
    ) -> tuple[dict[int, Prepared], Lookups | None]:
        """Record prepared messages in one transaction, then handle those that failed.

        Returns the messages left for the next transaction (the time was up), and the
        lookups it may go on with. ``claim_next``: the batch's last transaction also claims
        the next batch, which then needs no transaction (and no commit) of its own.
        """
        failures: dict[int, Exception] = {}
        finished: list[_Finished] = []
        left: dict[int, Prepared] = {}
        ahead: list[int] = []
        try:
            with self._sessions.begin() as session, Cursor.of(session) as sql:
                if lookups is None:
                    lookups = Lookups(session, sql)
                else:
                    lookups.move_to(session, sql)
                batch = _Batch(
                    session,
                    sql,
                    DeferredBlobs(self._blobs),
                    lookups,
                    PendingRows(sql),
                    [],
                    [],
                    failures,
                )
                finished, left = self._record_in(batch, prepared, claimed)
                if claim_next and not left and not self._stopping:
                    ahead = self._claim_in(sql)
            # Committed: the claim is ours (rolled back with the rest, it never was).
            self._claimed_ahead = ahead
        except IntegrityError as exc:
            lookups = None
            # A row written for the whole batch clashed with another node's at the same
            # moment: each message alone, so the others are not held back by it.
            if len(prepared) > 1:
                for message_id, one in prepared.items():
                    self._record({message_id: one}, claimed)
                return {}, None
            failures, finished, left = dict.fromkeys(prepared, exc), [], {}
        except Exception as exc:  # noqa: BLE001 - handled per message below
            lookups = None
            failures, finished, left = dict.fromkeys(prepared, exc), [], {}
        for done in finished:
            with bound_ids(claimed[done.id].log_ids):
                log.info(
                    "processed", message=done.id, state=done.state.value, reason=done.reason or None
                )
            self._metrics.message_finished(done.state, done.received_at)
        for message_id, fault in failures.items():
            with bound_ids(claimed[message_id].log_ids):
                self._after_failure(message_id, fault)
        return left, lookups

    def _record_in(
        self, batch: _Batch, prepared: dict[int, Prepared], claimed: dict[int, _Claimed]
    ) -> tuple[list[_Finished], dict[int, Prepared]]:
        """Walk each message in a savepoint of its own; write the batch's rows at the end.

        Returns the finished messages, and those left for another transaction.
        """
        began = time.monotonic()
        waiting = sorted(prepared)
        settings = self._settings.processing
        longest = max(settings.transaction_hold_seconds, settings.transaction_max_seconds)

        def time_is_up() -> bool:
            if not (batch.finished or batch.failures):
                return False  # every transaction records at least one message
            spent = time.monotonic() - began
            if spent <= settings.transaction_hold_seconds:
                return False
            # A server's writer waiting for SQLite's lock (intake's 250) ends it now; with
            # nobody waiting it goes on, up to the longest hold (``store.lockwaits``).
            return spent > longest or self._waits is None or self._waits.since(began)

        while waiting and not time_is_up():
            # A few at a time: what does not fit is loaded again by the next transaction.
            chunk, waiting = waiting[:LOAD_CHUNK], waiting[LOAD_CHUNK:]
            messages = load_claimed(batch.sql, chunk)
            for index, message in enumerate(messages):
                if time_is_up():
                    waiting = [m.id for m in messages[index:]] + waiting
                    break
                with bound_ids(claimed[message.id].log_ids):
                    self._record_one(message, prepared[message.id], batch)
        batch.blobs.flush()  # durable before any row naming them commits
        batch.rows.write()
        write_outcomes(batch.sql, batch.decided)
        return batch.finished, {message_id: prepared[message_id] for message_id in waiting}

    def _record_one(self, message: ClaimedMessage, prepared: Prepared, batch: _Batch) -> None:
        """One message in its own savepoint: rolled back alone if it fails.

        The savepoint is taken on the driver's cursor (``store.precompiled``): the session's
        own cost more than the statements of a message.
        """
        settings = self._settings.processing
        if message.state is not MessageState.RECEIVED or message.claimed_by != self._owner:
            return  # finished elsewhere, or our lease lapsed and another node took it
        if message.attempts > settings.max_attempts:
            batch.rows.add(TRACE, [_fail(message, "too many processing attempts")])
            batch.decided.append(message)
            return
        try:
            with batch.sql.savepoint():
                batch.rows.begin()
                record_claimed(
                    batch.session,
                    batch.sql,
                    batch.blobs,
                    message,
                    self._settings,
                    prepared=prepared,
                    final_attempt=message.attempts >= settings.max_attempts,
                    lookups=batch.lookups,
                    rows=batch.rows,
                )
                _flush_session(batch.session)
        except (OperationalError, DBAPIError) as exc:
            if not isinstance(exc, IntegrityError):
                raise  # the database itself failed: the whole transaction waits
            batch.rolled_back(message.id, exc)
        except Exception as exc:  # noqa: BLE001 - rolled back alone, handled after commit
            batch.rolled_back(message.id, exc)
        else:
            batch.decided.append(message)
            batch.finished.append(
                _Finished(message.id, message.state, message.reason, message.received_at)
            )

    def _after_failure(self, message_id: int, exc: Exception) -> None:
        """What a message that could not be finished becomes: retried soon, later, or failed."""
        bound = log.bind(message=message_id)
        if isinstance(exc, RetryLater):
            bound.info("processing deferred: a check failed temporarily", reason=str(exc)[:200])
            self._defer(message_id, str(exc))
        elif isinstance(exc, IntegrityError):
            # Another worker recorded the same email at the same moment; processing again
            # finds its activity and merges into it.
            bound.info("dedupe race; will merge on retry")
            self._release(message_id, retry_now=True)
        elif isinstance(exc, (BlobStoreError, OperationalError, DBAPIError)):
            bound.warning("processing deferred: storage unavailable", error=str(exc)[:200])
            self._release(message_id, retry_now=False)
        else:
            bound.error("processing failed", exc_info=exc)
            self._record_error(message_id, f"{type(exc).__name__}: {exc}"[:500])

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
                    session.add(TraceEntry(**_fail(message, f"processing error: {error}")))
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


def _lock_waits_of(sessions: sessionmaker[Session]) -> LockWaits | None:
    """The shared note of writers waiting for the lock of the sessions' SQLite database."""
    bind = sessions.kw.get("bind")
    if not isinstance(bind, Engine):
        return None
    return lock_waits(bind.url.render_as_string(hide_password=False))


def _fail(message: ReceivedMessage | ClaimedMessage, reason: str) -> dict[str, Any]:
    """Give up on the message: it ends ``failed``. Returns its trace line, for the caller."""
    message.state = MessageState.FAILED
    message.reason = reason
    message.finished_at = utcnow()
    message.claimed_by = None
    message.claim_expires_at = None
    return {
        "message_id": message.id,
        "at": message.finished_at,
        "step": "worker",
        "decision": "failed",
        "detail": reason,
    }


def _flush_session(session: Session) -> None:
    """Write what a step changed through the session, inside the message's savepoint.

    Forwarding set-up (a Gmail confirmation kept, a check proven) goes through the session;
    its flush must happen before the savepoint is released, so a message rolled back later
    leaves nothing behind. The session's own savepoint keeps a failed flush from spoiling
    the transaction for the other messages.
    """
    if session.new or session.dirty or session.deleted:
        with session.begin_nested():
            session.flush()
