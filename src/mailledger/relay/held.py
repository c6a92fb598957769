"""Held mail: relayed messages waiting for their From domain's DKIM key.

With ``[relay] unsigned_policy = "hold"``, mail from a domain whose key is not yet published
is kept (state ``held``) rather than sent unsigned. Once the DNS admin publishes the record,
the next pass signs it and queues it; an operator can also release it unsigned on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.domains.signing import sign_outgoing
from mailledger.mail.parsing import sender_domain
from mailledger.store import outbox
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.engine import reading
from mailledger.store.models import OutboundMessage, OutboundState, utcnow

log = structlog.get_logger("mailledger.relay.held")

RELEASED_UNSIGNED = "unsigned: released by the operator"


@dataclass(frozen=True, slots=True)
class Release:
    """What a pass did with one held message (all rows sharing its queue id)."""

    queue_id: str
    released: bool
    signing: str


@dataclass(frozen=True, slots=True)
class _Held:
    queue_id: str
    tenant_id: int | None
    blob: str


def _held(sessions: sessionmaker[Session], ident: str | None) -> list[_Held]:
    with reading(sessions) as session:
        if ident is None:
            rows = list(
                session.scalars(
                    select(OutboundMessage)
                    .where(OutboundMessage.state == OutboundState.HELD)
                    .order_by(OutboundMessage.id)
                )
            )
        else:
            rows = [r for r in outbox.find_rows(session, ident) if r.state is OutboundState.HELD]
            if not rows:
                raise outbox.OutboxError(f"{ident} is not held")
        groups = {row.queue_id: _Held(row.queue_id, row.tenant_id, row.blob) for row in rows}
        return list(groups.values())


def _apply(
    sessions: sessionmaker[Session], queue_id: str, *, blob: str, size: int, signing: str, go: bool
) -> None:
    with sessions.begin() as session:
        rows = session.scalars(
            select(OutboundMessage).where(
                OutboundMessage.queue_id == queue_id, OutboundMessage.state == OutboundState.HELD
            )
        )
        now = utcnow()
        for row in rows:
            row.signing = signing
            if go:
                row.blob, row.size = blob, size
                row.state = OutboundState.QUEUED
                row.retry_after = now


async def release_held(
    sessions: sessionmaker[Session],
    blobs: BlobBackend,
    resolver: Resolver,
    settings: Settings,
    *,
    ident: str | None = None,
    unsigned: bool = False,
) -> list[Release]:
    """Sign and queue held messages whose key is now verified (or all of them, ``unsigned``).

    ``ident`` (a row id or queue id) limits the pass to one message; without it every held
    message is tried. A message whose key is still not published stays held, with the reason.
    """
    relay = settings.relay.model_copy(update={"unsigned_policy": "hold"})
    results = []
    for item in await asyncio.to_thread(_held, sessions, ident):
        raw = await asyncio.to_thread(blobs.get, item.blob)
        if unsigned:
            await asyncio.to_thread(
                _apply, sessions, item.queue_id, blob=item.blob, size=len(raw),
                signing=RELEASED_UNSIGNED, go=True,
            )  # fmt: skip
            results.append(Release(item.queue_id, True, RELEASED_UNSIGNED))
            continue
        domain = await asyncio.to_thread(sender_domain, raw)
        if item.tenant_id is None or domain is None:
            continue  # nothing to sign with: only an operator's unsigned release sends it
        outcome = await sign_outgoing(
            sessions,
            resolver,
            relay,
            raw=raw,
            tenant_id=item.tenant_id,
            from_domain=domain,
            key_file=settings.secrets.key_file,
        )
        signed_blob = item.blob
        if not outcome.held:
            signed_blob = await asyncio.to_thread(blobs.put, outcome.raw)
        await asyncio.to_thread(
            _apply, sessions, item.queue_id, blob=signed_blob, size=len(outcome.raw),
            signing=outcome.signing, go=not outcome.held,
        )  # fmt: skip
        results.append(Release(item.queue_id, not outcome.held, outcome.signing))
        if not outcome.held:
            log.info("held message signed and queued", queue_id=item.queue_id)
    return results


class HeldReleaser:
    """Tries held mail again every ``interval_seconds``, so a key published later sends it."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        blobs: BlobBackend,
        resolver: Resolver,
        settings: Settings,
        *,
        interval_seconds: float = 60.0,
        on_released: Callable[[], None] | None = None,
    ) -> None:
        self._args = (sessions, blobs, resolver, settings)
        self._interval = interval_seconds
        self._on_released = on_released
        self._stop = asyncio.Event()

    async def run(self) -> None:
        """Until stopped; a failed pass is logged and tried again at the next interval."""
        while not self._stop.is_set():
            try:
                done = await release_held(*self._args)
            except Exception:  # a database or DNS hiccup must not stop the service
                log.exception("held-mail pass failed")
                done = []
            if any(r.released for r in done) and self._on_released is not None:
                self._on_released()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._interval)

    async def stop(self) -> None:
        """Finish the pass in hand and return."""
        self._stop.set()
