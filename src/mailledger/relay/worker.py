"""The delivery worker: claims due rows of the outbound queue, delivers, records, bounces.

One :class:`DeliveryWorker` per process claims due rows (``store.outbox``) and delivers each
in its own task, at most ``[relay] max_concurrent`` at once and ``max_per_domain`` per
recipient domain (per node: on PostgreSQL several nodes each apply their own limit). Each
delivery routes the row's domain (``relay.mx``) and speaks SMTP to the targets
(``relay.client``); leases are renewed while it runs, so no other node takes the row over.

Each recipient's outcome (``relay.outcomes``) is stored on the row: a deferred recipient is
tried again after the next interval of ``retry_schedule_seconds``; when a recipient fails, or
the schedule runs out, its sender gets a DSN (``relay.dsn``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from datetime import datetime, timedelta
from typing import Any, Final

import structlog
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.mail.replies import Reply
from mailledger.metrics import Metrics
from mailledger.relay.client import DeliveryClient
from mailledger.relay.dsn import FailedRecipient, queue_dsn, wants_dsn
from mailledger.relay.mx import Router
from mailledger.relay.outcomes import Attempt, Deferred, Delivered, Failed, Outcome
from mailledger.store import outbox
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.blobs import BlobStoreError
from mailledger.store.leasetasks import finish_or_cut_off, hand_back, keep_leases
from mailledger.store.models import OutboundMessage, OutboundState, utcnow
from mailledger.store.outbox import Claim

log = structlog.get_logger("mailledger.relay")

# How long stop() lets deliveries in flight finish before cutting them off and handing their
# rows back (systemd's stop timeout is 90 s; the listeners take up to 30 s of it).
STOP_GRACE_SECONDS: Final = 20.0
_FINAL_STATES: Final = frozenset(
    s.value for s in (OutboundState.DELIVERED, OutboundState.BOUNCED, OutboundState.EXPIRED)
)


class DeliveryWorker:
    """Delivers the outbound queue until stopped; ``wake`` makes it look at once."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        blobs: BlobBackend,
        settings: Settings,
        resolver: Resolver,
        *,
        smarthost_tls_context: ssl.SSLContext | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """``smarthost_tls_context`` replaces the system CAs for verifying the smarthost."""
        self._sessions = sessions
        self._metrics = metrics or Metrics()
        self._blobs = blobs
        self._relay = settings.relay
        self._owner = settings.service.node_id
        self._hostname = settings.service.hostname
        self._router = Router(resolver, settings.relay)
        self._client = DeliveryClient(
            settings.relay, self._hostname, smarthost_tls_context=smarthost_tls_context
        )
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._done = asyncio.Event()
        self._active = False
        self._tasks: dict[int, asyncio.Task[None]] = {}  # row id → its delivery
        self._claims: dict[int, Claim] = {}  # rows claimed and not yet recorded
        self._busy: dict[str, int] = {}  # domain → deliveries in flight

    # --- the loop -----------------------------------------------------------------------------

    def wake(self) -> None:
        """New mail was queued: look now instead of at the next poll."""
        self._wakeup.set()

    async def run(self) -> None:
        """Claim and deliver due rows until :meth:`stop`; then finish or hand back the rest."""
        self._active = True
        self._done.clear()
        heartbeat = asyncio.create_task(self._heartbeat(), name="mailledger-relay-leases")
        try:
            while not self._stopping:
                self._wakeup.clear()
                slots = self._relay.max_concurrent - len(self._tasks)
                claims: list[Claim] = []
                if slots > 0:
                    try:
                        claims = await asyncio.to_thread(self._claim, slots)
                    except (OperationalError, DBAPIError) as exc:
                        log.warning(
                            "queue claim failed; database unavailable", error=str(exc)[:200]
                        )
                for claim in claims:
                    self._start(claim)
                if self._stopping:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._relay.poll_interval_seconds)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self._drain()
            self._active = False
            self._done.set()

    async def stop(self) -> None:
        """Stop claiming; deliveries in flight finish (or are cut off and handed back)."""
        self._stopping = True
        self._wakeup.set()
        if self._active:
            await self._done.wait()

    async def _drain(self) -> None:
        await finish_or_cut_off(list(self._tasks.values()), STOP_GRACE_SECONDS)
        await hand_back(
            list(self._claims),
            self._release,
            log,
            "could not hand back deliveries; their leases will lapse",
            done="handed back unfinished deliveries",
        )

    async def _heartbeat(self) -> None:
        # A long delivery (slow host, several MX) must not outlive its lease, or another node
        # would take the row over and send it a second time.
        await keep_leases(
            self._relay.lease_seconds,
            lambda: list(self._claims),
            self._renew,
            log,
            "could not renew delivery leases",
        )

    def _start(self, claim: Claim) -> None:
        self._claims[claim.id] = claim
        self._busy[claim.domain] = self._busy.get(claim.domain, 0) + 1
        task = asyncio.create_task(self._deliver_row(claim), name=f"deliver-{claim.id}")
        self._tasks[claim.id] = task

        def _finished(_task: asyncio.Task[None]) -> None:
            self._tasks.pop(claim.id, None)
            count = self._busy.get(claim.domain, 1) - 1
            if count > 0:
                self._busy[claim.domain] = count
            else:
                self._busy.pop(claim.domain, None)
            self._wakeup.set()  # a slot is free

        task.add_done_callback(_finished)

    # --- database work (in threads) -------------------------------------------------------------

    def _claim(self, slots: int) -> list[Claim]:
        if not outbox.any_due(self._sessions):
            return []  # an idle poll, without taking SQLite's write lock
        with self._sessions.begin() as session:
            return outbox.claim_due(
                session,
                owner=self._owner,
                lease_seconds=self._relay.lease_seconds,
                slots=slots,
                busy=self._busy,
                max_per_domain=self._relay.max_per_domain,
            )

    def _renew(self, ids: list[int]) -> None:
        with self._sessions.begin() as session:
            outbox.renew(session, ids, owner=self._owner, lease_seconds=self._relay.lease_seconds)

    def _release(self, ids: list[int]) -> None:
        with self._sessions.begin() as session:
            outbox.release(session, ids, owner=self._owner)

    # --- one row ----------------------------------------------------------------------------------

    async def _deliver_row(self, claim: Claim) -> None:
        bound = log.bind(queue_id=claim.queue_id, row=claim.id, domain=claim.domain)
        attempt = Attempt()
        try:
            if not claim.pending:
                attempt = Attempt()  # nothing left to send (recorded by an earlier attempt)
            else:
                data = await asyncio.to_thread(self._blobs.get, claim.blob)
                attempt = await self.deliver(claim, data)
        except BlobStoreError as exc:
            reason = Reply(451, "4.3.0", f"message bytes unavailable: {exc}")
            attempt = Attempt({r: Deferred(None, reason) for r in claim.pending})
        except asyncio.CancelledError:
            bound.info("delivery cut off by shutdown; the row is handed back")
            raise
        except Exception as exc:  # noqa: BLE001 - an unknown fault is temporary (STYLE.md)
            bound.exception("delivery failed unexpectedly")
            reason = Reply(451, "4.3.0", f"internal error: {type(exc).__name__}")
            attempt = Attempt({r: Deferred(None, reason) for r in claim.pending})
        try:
            summary, dsn_queued = await asyncio.to_thread(self._record, claim, attempt)
        except (OperationalError, DBAPIError, BlobStoreError) as exc:
            # The lease lapses and the row is tried again: at worst one duplicate delivery.
            bound.warning("could not record delivery outcome", error=str(exc)[:200])
            return
        self._claims.pop(claim.id, None)
        # The summary starts with the row's state, committed by now (see _record).
        state = summary.split(" ", 1)[0]
        if state in _FINAL_STATES:
            self._metrics.delivery_finished(OutboundState(state), claim.created_at)
        if dsn_queued:
            self.wake()
        bound.info(
            "delivery attempt",
            attempt=claim.attempts,
            host=attempt.host or None,
            tls=attempt.tls or None,
            outcome=summary,
        )

    async def deliver(self, claim: Claim, data: bytes) -> Attempt:
        """One attempt at ``claim``'s pending recipients: route, then each address in turn."""
        pending = list(claim.pending)
        route = await self._router.route(claim.domain)
        if isinstance(route, Failed | Deferred):
            return Attempt(dict.fromkeys(pending, route))
        return await self._client.send(route, claim, pending, data)

    # --- recording ----------------------------------------------------------------------------

    def _record(self, claim: Claim, attempt: Attempt) -> tuple[str, bool]:
        """Store the attempt's results, schedule the retry or finish the row, queue any DSN.

        Returns a summary for the log line and whether a DSN was queued.
        """
        now = utcnow()
        with self._sessions.begin() as session:
            row = session.get(OutboundMessage, claim.id, with_for_update=True)
            if row is None:
                return "row deleted meanwhile", False
            if row.state is not OutboundState.QUEUED:
                return f"already {row.state.value}", False
            if row.claimed_by != self._owner:
                log.warning("lease lost during delivery; recording anyway", row=claim.id)
            results = dict(row.results or {})
            for rcpt, outcome in attempt.outcomes.items():
                results[rcpt] = _result(outcome, now, attempts=row.attempts)
            pending = [r for r in row.rcpt_to if not outbox.is_final(results.get(r))]
            schedule = self._relay.retry_schedule_seconds
            if pending:
                reasons = {results[r]["reply"] for r in pending if r in results}
                row.last_error = "; ".join(sorted(reasons))[:2000]
                if row.attempts <= len(schedule):
                    row.retry_after = now + timedelta(seconds=schedule[row.attempts - 1])
                else:
                    # The schedule ran out: what is still pending fails with its last reply.
                    for rcpt in pending:
                        entry = dict(
                            results.get(rcpt)
                            or _result(
                                Deferred(None, Reply(451, "4.4.7", "not attempted")),
                                now,
                                attempts=0,
                            )
                        )
                        entry.update(status="failed", expired=True)
                        results[rcpt] = entry
                    row.state = OutboundState.EXPIRED
                    row.finished_at = now
            else:
                failed = [r for r in row.rcpt_to if results[r]["status"] == "failed"]
                row.state = OutboundState.BOUNCED if failed else OutboundState.DELIVERED
                row.finished_at = now
                if failed:
                    row.last_error = "; ".join(sorted({results[r]["reply"] for r in failed}))[:2000]
            unreported = [
                r
                for r in row.rcpt_to
                if results.get(r, {}).get("status") == "failed" and not results[r].get("reported")
            ]
            dsn_queued = bool(unreported) and self._bounce(session, row, results, unreported)
            row.results = results
            row.claimed_by = None
            row.claim_expires_at = None
            session.flush()
            counts = {
                s: sum(1 for r in row.rcpt_to if results.get(r, {}).get("status") == s)
                for s in ("delivered", "deferred", "failed")
            }
            summary = f"{row.state.value} " + " ".join(f"{k}={v}" for k, v in counts.items() if v)
            if row.state is OutboundState.QUEUED:
                summary += f" next={row.retry_after.isoformat(timespec='seconds')}"
            return summary, dsn_queued

    def _bounce(
        self, session: Session, row: OutboundMessage, results: dict[str, Any], failed: list[str]
    ) -> bool:
        """Mark ``failed`` as reported and queue their DSN; whether one was queued."""
        for rcpt in failed:
            results[rcpt] = {**results[rcpt], "reported": True}
        if not wants_dsn(row):
            log.info("no DSN: null sender or a DSN itself", queue_id=row.queue_id)
            return False
        recipients = [
            FailedRecipient(
                address=rcpt,
                code=int(results[rcpt]["code"]),
                text=str(results[rcpt]["text"]),
                remote_mta=str(results[rcpt].get("host", "")).split("[", 1)[0],
                last_attempt=datetime.fromisoformat(results[rcpt]["at"]),
            )
            for rcpt in failed
        ]
        original = self._blobs.get(row.blob)
        dsn = queue_dsn(
            session, self._blobs, row, recipients, hostname=self._hostname, original=original
        )
        for dsn_row in dsn:
            log.info("DSN queued", queue_id=row.queue_id, dsn_queue_id=dsn_row.queue_id)
        return bool(dsn)


def _result(outcome: Outcome, at: datetime, *, attempts: int) -> dict[str, Any]:
    """One recipient's outcome as stored in ``OutboundMessage.results``."""
    if isinstance(outcome, Delivered):
        status, reply = "delivered", outcome.reply
    elif isinstance(outcome, Failed):
        status, reply = "failed", outcome.reason
    else:
        status, reply = "deferred", outcome.reason
    return {
        "status": status,
        "code": reply.code,
        "text": reply.message,  # the enhanced status first, as the DSN reads it (relay.dsn)
        "host": reply.host,
        "reply": str(reply),
        "at": at.isoformat(),
        "attempt": attempts,
    }
