"""Durable intake: the raw message and its session facts are on disk before we answer 250.

Every accepted message is written to the blob store (fsynced) and recorded as a
``ReceivedMessage`` with its routes and a first trace entry, committed, and only then does
``store`` return the queue id the handler puts in its ``250`` (DESIGN §3, §9).

``add_received`` is the one writer of received messages (DESIGN §8): what a received message's
row, routes and first trace entry are is written down there once, for the batched ``Intake``
behind both capture listeners and for the submission listener, which adds its copy in the
transaction that also queues the relayed mail.

A commit with ``synchronous=FULL`` costs an fsync, which would cap a busy listener at one
message per disk flush. So one writer thread does *group commit*: it takes every message
waiting at that moment (up to ``batch_size``), writes their blobs, inserts all their rows in one
transaction and commits once, then wakes each waiting session. If that transaction fails, each
message is retried in a transaction of its own, so one bad row cannot fail its neighbours and
nothing is ever half stored: a caller gets its queue id only after its own commit succeeded.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, insert
from sqlalchemy.orm import Session, sessionmaker

from mailledger.logs import get_logger
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.blobs import BlobFile
from mailledger.store.freespace import FreeSpaceGuard, SpaceShortage
from mailledger.store.models import (
    MessageRoute,
    MessageState,
    ReceivedMessage,
    RouteKind,
    TraceEntry,
)
from mailledger.store.precompiled import Cursor, Statement
from mailledger.store.queueids import new_queue_id

log = get_logger(__name__)
_stdlib_log = logging.getLogger(__name__)  # the level check, without building a logger


@dataclass(frozen=True, slots=True)
class Route:
    """Where an accepted recipient's copy goes: a tenant, a kind, and for user capture the staff."""

    tenant_id: int
    kind: RouteKind
    staff_id: int | None
    rcpt: str  # the capture address, lowercased


class IntakeError(Exception):
    """The message could not be stored; the session must answer a temporary failure."""


class InsufficientStorageError(IntakeError):
    """The free-space reserve is reached: refuse with 452 4.3.1 before the disk fills."""


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What the SMTP session knew about a message, kept with it for the trace and the CLI."""

    peer: str  # "ip:port"
    helo: str
    mail_from: str  # "" for the null reverse path
    rcpt_to: list[str]
    tls: str  # cipher description, "" without TLS
    trace_id: str


@dataclass(frozen=True, slots=True)
class TraceLine:
    """A message's first trace entry: how it came in, and what was known when it did."""

    step: str
    decision: str
    detail: str


@dataclass(frozen=True, slots=True)
class Received:
    """An accepted message as the store records it; its bytes are already in the blob store."""

    queue_id: str
    facts: SessionFacts
    routes: Sequence[Route]
    blob: str  # the blob store digest
    size: int
    first: TraceLine
    # The login that submitted it through the relay (DESIGN §6); None for capture.
    submitted_by_staff_id: int | None = None
    # Read from the header section at intake (mail.headerscan), so every message can be found
    # by the ID its sender knows, also one quarantined before a full parse.
    message_id: str = ""
    # The mailbox account sync fetched it from (DESIGN §12); None for mail received over SMTP.
    mailbox_account_id: int | None = None


def add_received(session: Session, messages: Sequence[Received]) -> list[int]:
    """Add received messages with their routes and first trace entries; their row ids.

    In the caller's transaction: nothing is committed here, so a caller may record other rows
    (the relay's queued copies) in the same commit. Three statements however many messages:
    Core ``executemany`` rather than the ORM's unit of work, which costs far more per row; the
    tables' own types and Python-side defaults apply as they do for ORM objects. On SQLite the
    statements go straight to the driver's cursor (``store.precompiled``).
    """
    if not messages:
        return []
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        return _add_through_driver(connection, messages)
    returned = connection.execute(
        insert(ReceivedMessage).returning(ReceivedMessage.queue_id, ReceivedMessage.id),
        [_message_row(message) for message in messages],
    )
    ids: dict[str, int] = dict(returned.all())
    if len(ids) != len(messages):  # each queue id is unique: one row back for each
        raise IntakeError(f"{len(ids)} message ids returned for {len(messages)} messages")
    routes = [
        _route_row(ids[message.queue_id], route) for message in messages for route in message.routes
    ]
    if routes:
        connection.execute(insert(MessageRoute), routes)
    connection.execute(
        insert(TraceEntry),
        [_trace_row(ids[message.queue_id], message.first) for message in messages],
    )
    return [ids[message.queue_id] for message in messages]


# Intake's statements on SQLite, run on the driver's cursor (``store.precompiled``): the same
# three every time, where SQLAlchemy's execution of each cost about as much as SQLite's.
_MESSAGE_INSERT = Statement(insert(ReceivedMessage).returning(ReceivedMessage.id))
_ROUTE_INSERT = Statement(insert(MessageRoute))
_TRACE_INSERT = Statement(insert(TraceEntry))


def _add_through_driver(connection: Connection, messages: Sequence[Received]) -> list[int]:
    """``add_received`` on SQLite: one insert per message for its row id, then two batches."""
    with Cursor(connection) as cursor:
        ids = [int(cursor.scalar(_MESSAGE_INSERT, _message_row(message))) for message in messages]
        routes = [
            _route_row(message_id, route)
            for message_id, message in zip(ids, messages, strict=True)
            for route in message.routes
        ]
        cursor.many(_ROUTE_INSERT, routes)
        cursor.many(
            _TRACE_INSERT,
            [
                _trace_row(message_id, message.first)
                for message_id, message in zip(ids, messages, strict=True)
            ],
        )
    return ids


def _message_row(message: Received) -> dict[str, object]:
    facts = message.facts
    return {
        "queue_id": message.queue_id,
        "trace_id": facts.trace_id,
        "blob": message.blob,
        "size": message.size,
        "peer": facts.peer,
        "helo": facts.helo,
        "mail_from": facts.mail_from,
        "rcpt_to": list(facts.rcpt_to),
        "tls": facts.tls,
        "state": MessageState.RECEIVED,
        "submitted_by_staff_id": message.submitted_by_staff_id,
        "message_id": message.message_id,
        "mailbox_account_id": message.mailbox_account_id,
    }


def _route_row(message_id: int, route: Route) -> dict[str, object]:
    return {
        "message_id": message_id,
        "tenant_id": route.tenant_id,
        "kind": route.kind,
        "staff_id": route.staff_id,
        "rcpt": route.rcpt,
    }


def _trace_row(message_id: int, line: TraceLine) -> dict[str, object]:
    return {
        "message_id": message_id,
        "step": line.step,
        "decision": line.decision,
        "detail": line.detail,
    }


@dataclass(slots=True)
class _Pending:
    facts: SessionFacts
    routes: list[Route]
    raw: bytes | BlobFile  # a BlobFile: a large message already on disk (``capture.spool``)
    queue_id: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[str]
    message_id: str = ""
    digest: str = field(default="")

    def received(self) -> Received:
        """The message as it is recorded, once its bytes are stored under ``digest``."""
        return Received(
            queue_id=self.queue_id,
            facts=self.facts,
            routes=self.routes,
            blob=self.digest,
            size=len(self.raw),
            first=TraceLine("intake", "stored", _trace_detail(self)),
            message_id=self.message_id,
        )


_STOP = object()


class Intake:
    """Stores accepted messages durably, batching concurrent sessions into one commit."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        blobs: BlobBackend,
        *,
        batch_size: int = 64,
        on_stored: Callable[[], None] | None = None,
        space: FreeSpaceGuard | None = None,
    ) -> None:
        self._sessions = sessions
        self.space = space
        self._blobs = blobs
        self._batch_size = batch_size
        self.on_stored = on_stored
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start the writer thread; call from the event loop that will call ``store``."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="mailledger-intake", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Refuse new work, finish everything already handed in, and stop the writer."""
        self._closing = True
        if self._thread is None:
            return
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def shortage(self, incoming_bytes: int = 0) -> SpaceShortage | None:
        """Why a message of this size must be refused for lack of space, or None."""
        return None if self.space is None else self.space.shortage(incoming_bytes)

    async def store(
        self,
        facts: SessionFacts,
        routes: list[Route],
        raw: bytes | BlobFile,
        *,
        message_id: str = "",
    ) -> str:
        """Store one message for its routes; returns the queue id once it is committed.

        ``message_id`` is the ID read from its header section (``mail.headerscan``).

        Raises ``IntakeError`` if it could not be stored; then nothing of it was committed.
        """
        if self._thread is None or self._closing:
            raise IntakeError("intake is not running")
        if not routes:
            raise IntakeError("a message needs at least one route")
        if (short := self.shortage(len(raw))) is not None:
            raise InsufficientStorageError(f"below the free-space reserve: {short}")
        loop = asyncio.get_running_loop()
        pending = _Pending(
            facts, list(routes), raw, new_queue_id(), loop, loop.create_future(), message_id
        )
        self._queue.put(pending)
        # shield: a session that goes away mid-store must not cancel the future under the
        # writer; the message may still be committed, and the sender will retry (a duplicate
        # the processing step recognises by Message-ID, not a loss).
        return await asyncio.shield(pending.future)

    # --- the writer thread -------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            batch = [item]
            while len(batch) < self._batch_size:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stopping = True
                    break
                batch.append(more)
            try:
                self._write([p for p in batch if isinstance(p, _Pending)])
            except BaseException as exc:  # never leave a session waiting forever
                for pending in batch:
                    if isinstance(pending, _Pending):
                        self._fail(pending, exc)
                log.exception("intake writer failed")
                if not isinstance(exc, Exception):
                    raise

    def _write(self, batch: list[_Pending]) -> None:
        ready: list[_Pending] = []
        stored: list[str | OSError]
        try:
            stored = list(self._blobs.put_many([pending.raw for pending in batch]))
        except OSError as exc:
            stored = [exc] * len(batch)
        for pending, result in zip(batch, stored, strict=True):
            if isinstance(result, OSError):
                log.error(
                    "blob store refused a message",
                    queue_id=pending.queue_id,
                    trace_id=pending.facts.trace_id,
                    error=str(result),
                )
                self._fail(pending, result)
            else:
                pending.digest = result
                ready.append(pending)
        if not ready:
            return
        try:
            self._commit(ready)
        except Exception as exc:
            if len(ready) == 1:
                log.exception(
                    "could not record a message",
                    queue_id=ready[0].queue_id,
                    trace_id=ready[0].facts.trace_id,
                )
                self._fail(ready[0], exc)
                return
            log.warning(
                "group commit failed, retrying one by one",
                batch=len(ready),
                error=str(exc)[:300],
            )
            for pending in ready:
                try:
                    self._commit([pending])
                except Exception as one_exc:
                    log.exception(
                        "could not record a message",
                        queue_id=pending.queue_id,
                        trace_id=pending.facts.trace_id,
                    )
                    self._fail(pending, one_exc)
            return

    def _commit(self, batch: list[_Pending]) -> None:
        with self._sessions() as session, session.begin():
            add_received(session, [pending.received() for pending in batch])
        # Debug: the session logs "message accepted" with the same queue id at info.
        if _stdlib_log.isEnabledFor(logging.DEBUG):
            for pending in batch:
                log.debug(
                    "message stored",
                    queue_id=pending.queue_id,
                    trace_id=pending.facts.trace_id,
                    size=len(pending.raw),
                    routes=len(pending.routes),
                    tenant_id=sorted({route.tenant_id for route in pending.routes}),
                )
        # One wake-up of each waiting loop for the whole batch, not one per message.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[str], str]]] = {}
        for pending in batch:
            by_loop.setdefault(pending.loop, []).append((pending.future, pending.queue_id))
        notify = self.on_stored is not None and self._loop is not None
        for loop, answers in by_loop.items():
            stored_here = notify and loop is self._loop
            self._call_soon(loop, _set_results, answers, self._notify if stored_here else None)
        if notify and self._loop not in by_loop:
            assert self._loop is not None
            self._call_soon(self._loop, self._notify)

    def _notify(self) -> None:
        if self.on_stored is None:
            return
        try:
            self.on_stored()
        except Exception:
            log.exception("on_stored callback failed")

    def _fail(self, pending: _Pending, exc: BaseException) -> None:
        error = IntakeError(f"message {pending.queue_id} not stored: {exc}")
        self._call_soon(pending.loop, _set_exception, pending.future, error)

    @staticmethod
    def _call_soon(
        loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: object
    ) -> None:
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            # The loop is closed: nobody is waiting any more (the process is stopping).
            log.warning("event loop closed before a stored message could be acknowledged")


def _trace_detail(pending: _Pending) -> str:
    facts = pending.facts
    return (
        f"{len(pending.routes)} route(s) "
        f"({', '.join(route.rcpt for route in pending.routes)}), "
        f"{len(pending.raw)} bytes, peer {facts.peer}"
        + (f", helo {facts.helo}" if facts.helo else "")
        + (f", tls {facts.tls}" if facts.tls else "")
        + f", trace {facts.trace_id}"
    )


def _set_results(
    answers: list[tuple[asyncio.Future[str], str]], then: Callable[[], None] | None
) -> None:
    for future, value in answers:
        _set_result(future, value)
    if then is not None:
        then()


def _set_result(future: asyncio.Future[str], value: str) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[str], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
