"""The forwarding health pass, run by ``mailledger serve`` every ``[forwarding] interval_seconds``.

The rules live in ``forwarding.health``; this only runs them on a timer. Every node ticks, and
the pass's periodic lease lets one of them run it per interval (``store.periodic``). A pass
that queued mail (a check, a breakage notice) wakes the delivery worker; a failed pass is
logged and tried again at the next tick, because a database hiccup must not stop the service.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.forwarding.health import run_pass
from mailledger.logs import get_logger
from mailledger.store.blobbackend import BlobBackend

log = get_logger(__name__)


class HealthRunner:
    """Runs the forwarding health pass on a timer until stopped."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        blobs: BlobBackend,
        settings: Callable[[], Settings],
        resolver: Resolver,
        *,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._blobs = blobs
        self._settings = settings  # read at each tick, so a reload's interval applies
        self._resolver = resolver
        self._on_queued = on_queued
        self._stop = asyncio.Event()
        self.passes = 0  # passes this node ran (the status and tests read it)

    async def run_once(self) -> bool:
        """One tick: run the pass if it is this node's turn; whether it ran."""
        settings = self._settings()
        every = timedelta(seconds=settings.forwarding.interval_seconds)
        report = await run_pass(
            self._sessions,
            self._blobs,
            settings,
            self._resolver,
            owner=settings.service.node_id,
            every=every,
        )
        if not report.ran:
            return False
        self.passes += 1
        for change in report.changes:
            log.info("forwarding health", change=str(change))
        if any(c.mailed_to or c.check_sent_to for c in report.changes) and self._on_queued:
            self._on_queued()
        return True

    async def run(self) -> None:
        """Tick every interval until :meth:`stop`."""
        while not self._stop.is_set():
            try:
                await self.run_once()
            except Exception:  # a database or DNS fault: the next tick tries again
                log.exception("forwarding health pass failed")
            interval = self._settings().forwarding.interval_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)

    async def stop(self) -> None:
        """Stop after the pass in hand."""
        self._stop.set()
