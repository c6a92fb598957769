"""The webhook worker: claims due deliveries from the outbox and posts them, signed.

One :class:`WebhookWorker` per process, started by ``serve()``. Deliveries are leased rows
(``store.webhooks`` on ``store.leases``): a process killed mid-attempt loses nothing, its
lease lapses and the delivery is attempted again, so every event arrives at least once and
receivers deduplicate on ``webhook-id``. Each attempt:

- resolves and checks the URL's host (``web.webhooktargets``) and connects to the checked
  address, with the name in ``Host`` and in TLS SNI (and the certificate checked for it);
- signs with a fresh ``webhook-timestamp`` (``web.webhooksign``);
- follows no redirect (a 3xx is a failed attempt), gives up after ``[webhooks]
  timeout_seconds`` in all, and keeps the status, the time taken and the answer's first KB;
- on a 2xx is done; on a 410 disables the endpoint; otherwise is retried on
  ``[webhooks] retry_schedule_seconds`` (``web.webhookretry``), no sooner than a 429 or 503
  answer's ``Retry-After``, until the schedule runs out and the endpoint is marked failing,
  which mails the tenant's admins once for that failing spell (``web.webhookmail``).

Signing secrets are kept sealed (``[secrets] key_file``); a claim opens them for its attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import datetime

import httpx
import structlog
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.store import webhooks
from mailledger.store.blobbackend import BlobBackend, open_blob_backend
from mailledger.store.engine import reading
from mailledger.store.leasetasks import finish_or_cut_off, hand_back, keep_leases
from mailledger.store.models import WebhookDeliveryState, utcnow
from mailledger.store.secretbox import SecretBox, SecretError
from mailledger.store.webhooks import RESPONSE_EXCERPT_BYTES, AttemptResult, Job
from mailledger.web.webhookmail import mail_failing_notice
from mailledger.web.webhookretry import (
    GONE,
    RETRY_AFTER_STATUSES,
    next_attempt_at,
    parse_retry_after,
)
from mailledger.web.webhooksign import webhook_headers
from mailledger.web.webhooktargets import TargetRefusedError, resolve_target

log = structlog.get_logger("mailledger.webhooks")

USER_AGENT = "mailledger-webhooks/1"
# How long stop() lets attempts in flight finish before cutting them off and handing back.
STOP_GRACE_SECONDS = 5.0
# How often an idle worker looks for failing endpoints whose admins are still owed a mail
# (one marked failing by a claim, or by a node that stopped before mailing).
NOTICE_SWEEP_SECONDS = 60.0


class WebhookWorker:
    """Delivers the webhook outbox until stopped; ``wake`` makes it look at once."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        resolver: Resolver,
        *,
        blobs: BlobBackend | None = None,
        on_mail_queued: Callable[[], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._all_settings = settings
        self._settings = settings.webhooks
        self._resolver = resolver
        self._key_file = settings.secrets.key_file
        self._box: SecretBox | None = None  # read when first needed: serve starts without it
        self._blobs = blobs or open_blob_backend(settings)
        self._on_mail_queued = on_mail_queued
        self._notices: set[asyncio.Task[None]] = set()
        self._swept_at = 0.0
        self._owner = settings.service.node_id
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._done = asyncio.Event()
        self._active = False
        self._tasks: dict[int, asyncio.Task[None]] = {}  # delivery id → its attempt
        self._held: set[int] = set()  # deliveries claimed and their attempt not yet recorded
        self._client: httpx.AsyncClient | None = None

    def wake(self) -> None:
        """An event was written: look now instead of at the next poll."""
        self._wakeup.set()

    async def run(self) -> None:
        """Claim and attempt due deliveries until :meth:`stop`; then hand back the rest."""
        self._active = True
        self._done.clear()
        # Redirects are not followed (a 3xx is an answer, and a failed attempt), proxies from
        # the environment are not used (the checked address is the one connected to), and no
        # connection is kept: each attempt connects to the address it checked, with that
        # name's SNI, so no connection verified for one name ever carries another's request.
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(self._settings.timeout_seconds),
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"user-agent": USER_AGENT},
        )
        heartbeat = asyncio.create_task(self._heartbeat(), name="mailledger-webhook-leases")
        try:
            while not self._stopping:
                self._wakeup.clear()
                slots = self._settings.max_concurrent - len(self._tasks)
                jobs: list[Job] = []
                if slots > 0:
                    try:
                        jobs = await asyncio.to_thread(self._claim, slots)
                    except (OperationalError, DBAPIError) as exc:
                        log.warning(
                            "webhook claim failed; database unavailable", error=str(exc)[:200]
                        )
                    except SecretError as exc:
                        # Nothing is claimed, so nothing is lost: deliveries wait for the key.
                        log.warning("webhook deliveries wait: cannot sign", error=str(exc))
                for job in jobs:
                    self._start(job)
                if self._stopping:
                    break
                if jobs and len(jobs) == slots:
                    continue  # more may be due
                if time.monotonic() - self._swept_at >= NOTICE_SWEEP_SECONDS:
                    self._swept_at = time.monotonic()
                    self._notify_owed()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._wakeup.wait(), self._settings.poll_interval_seconds
                    )
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self._drain()
            await self._client.aclose()
            self._active = False
            self._done.set()

    async def stop(self) -> None:
        """Stop claiming; attempts in flight finish (or are cut off and handed back)."""
        self._stopping = True
        self._wakeup.set()
        if self._active:
            await self._done.wait()

    async def _drain(self) -> None:
        await finish_or_cut_off([*self._tasks.values(), *self._notices], STOP_GRACE_SECONDS)
        await hand_back(
            sorted(self._held),
            self._release,
            log,
            "could not hand back webhook deliveries; leases will lapse",
        )

    async def _heartbeat(self) -> None:
        # An attempt must not outlive its lease, or another node would send it a second time.
        await keep_leases(
            self._settings.lease_seconds,
            lambda: sorted(self._held),
            self._renew,
            log,
            "could not renew webhook leases",
        )

    def _start(self, job: Job) -> None:
        self._held.add(job.delivery_id)
        task = asyncio.create_task(self._attempt(job), name=f"webhook-{job.delivery_id}")
        self._tasks[job.delivery_id] = task

        def _finished(_task: asyncio.Task[None]) -> None:
            self._tasks.pop(job.delivery_id, None)
            self._wakeup.set()  # a slot is free

        task.add_done_callback(_finished)

    # --- database work (in threads) -------------------------------------------------------

    def _claim(self, slots: int) -> list[Job]:
        if not webhooks.any_due(self._sessions):
            return []  # an idle poll, without taking SQLite's write lock
        with self._sessions.begin() as session:
            return webhooks.claim_due(
                session,
                owner=self._owner,
                lease_seconds=self._settings.lease_seconds,
                limit=slots,
                max_attempts=len(self._settings.retry_schedule_seconds),
                box=self._secret_box(),
            )

    def _secret_box(self) -> SecretBox:
        if self._box is None:
            self._box = SecretBox.from_file(self._key_file)
        return self._box

    def _renew(self, ids: list[int]) -> None:
        with self._sessions.begin() as session:
            webhooks.renew(
                session, ids, owner=self._owner, lease_seconds=self._settings.lease_seconds
            )

    def _release(self, ids: list[int]) -> None:
        with self._sessions.begin() as session:
            webhooks.release(session, ids, owner=self._owner)

    def _record(
        self, job: Job, result: AttemptResult, retry_at: datetime | None, *, gone: bool
    ) -> WebhookDeliveryState | None:
        with self._sessions.begin() as session:
            return webhooks.record_attempt(
                session, job, result, owner=self._owner, next_attempt_at=retry_at, gone=gone
            )

    # --- one attempt ----------------------------------------------------------------------

    async def _attempt(self, job: Job) -> None:
        bound = log.bind(
            delivery=job.delivery_id, endpoint=job.endpoint_id, webhook_id=job.webhook_id
        )
        retry_after: str | None = None
        try:
            result, retry_after = await self.post(job)
        except asyncio.CancelledError:
            bound.info("webhook attempt cut off by shutdown; the delivery is handed back")
            raise
        except Exception as exc:  # noqa: BLE001 - an unknown fault is a failed attempt
            bound.exception("webhook attempt failed unexpectedly")
            result = AttemptResult(utcnow(), None, 0, error=f"internal error: {type(exc).__name__}")
        now = utcnow()
        retry_at = None
        if not result.delivered and result.status != GONE:
            wait = None
            if result.status in RETRY_AFTER_STATUSES:
                wait = parse_retry_after(retry_after, now)
            retry_at = next_attempt_at(
                self._settings.retry_schedule_seconds,
                job.attempt,
                now,
                retry_after_seconds=wait,
            )
        try:
            state = await asyncio.to_thread(
                self._record, job, result, retry_at, gone=result.status == GONE
            )
        except (OperationalError, DBAPIError) as exc:
            # The lease lapses and the delivery is attempted again: at worst once more.
            bound.warning("could not record webhook attempt", error=str(exc)[:200])
            return
        self._held.discard(job.delivery_id)
        if state is WebhookDeliveryState.FAILED:
            self._notify(job.endpoint_id)
        bound.info(
            "webhook attempt",
            type=job.event_type,
            attempt=job.attempt,
            status=result.status,
            latency_ms=result.latency_ms,
            error=result.error or None,
            state=state.value if state is not None else "lease lost",
            next_attempt_at=retry_at.isoformat() if retry_at and state else None,
        )

    # --- telling the tenant's admins -------------------------------------------------------

    def _notify(self, endpoint_id: int) -> None:
        """Mail the admins if the endpoint's failing spell is owed a mail (in the background)."""
        task = asyncio.create_task(self._mail(endpoint_id), name=f"webhook-failing-{endpoint_id}")
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    def _notify_owed(self) -> None:
        def owed() -> list[int]:
            with reading(self._sessions) as session:
                return webhooks.failing_notices_owed(session)

        async def sweep() -> None:
            try:
                endpoints = await asyncio.to_thread(owed)
            except (OperationalError, DBAPIError) as exc:
                log.warning("could not look for failing endpoints", error=str(exc)[:200])
                return
            for endpoint_id in endpoints:
                await self._mail(endpoint_id)

        task = asyncio.create_task(sweep(), name="webhook-failing-sweep")
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    async def _mail(self, endpoint_id: int) -> None:
        try:
            queued = await mail_failing_notice(
                self._sessions, self._blobs, self._resolver, self._all_settings, endpoint_id
            )
        except Exception:  # still owed: the next failure or the next sweep tries again
            log.exception("could not mail the admins of a failing webhook endpoint")
            return
        if queued and self._on_mail_queued is not None:
            self._on_mail_queued()

    async def post(self, job: Job) -> tuple[AttemptResult, str | None]:
        """One signed POST of ``job``: what it saw, and the answer's ``Retry-After``."""
        assert self._client is not None, "run() creates the client"
        at = utcnow()
        started = time.monotonic()

        def elapsed() -> int:
            return round((time.monotonic() - started) * 1000)

        timeout = self._settings.timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                target = await resolve_target(
                    self._resolver,
                    job.url,
                    allow_private=self._settings.allow_private_targets,
                )
                body = job.body.encode("utf-8")
                headers = webhook_headers(job.secrets, job.webhook_id, int(time.time()), body)
                headers["host"] = target.host_header
                headers["content-type"] = "application/json"
                extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
                request = self._client.build_request(
                    "POST", target.pinned_url, content=body, headers=headers, extensions=extensions
                )
                response = await self._client.send(request, stream=True)
                try:
                    excerpt = await _excerpt(response)
                finally:
                    await response.aclose()
        except TargetRefusedError as exc:
            return AttemptResult(at, None, elapsed(), error=f"target refused: {exc}"), None
        except TimeoutError:
            return AttemptResult(at, None, elapsed(), error=f"timed out after {timeout:g} s"), None
        except httpx.HTTPError as exc:
            detail = str(exc) or type(exc).__name__
            return AttemptResult(at, None, elapsed(), error=f"{type(exc).__name__}: {detail}"), None
        except OSError as exc:
            return AttemptResult(at, None, elapsed(), error=f"connection failed: {exc}"), None
        result = AttemptResult(at, response.status_code, elapsed(), response=excerpt)
        return result, response.headers.get("retry-after")


async def _excerpt(response: httpx.Response) -> str:
    """The first KB of the answer's body, read no further, decoded leniently."""
    kept = bytearray()
    async for chunk in response.aiter_bytes():
        kept += chunk
        if len(kept) >= RESPONSE_EXCERPT_BYTES:
            break
    return bytes(kept[:RESPONSE_EXCERPT_BYTES]).decode("utf-8", errors="replace")
