"""The operational side of ``mailledger serve``: systemd, the status endpoint, retention, reload.

Kept out of ``server.py``, which wires the mail path; this wires what an operator needs around
it: sd_notify READY/STOPPING/WATCHDOG, ``/metrics`` and ``/health``, the periodic retention
pass, and SIGHUP reloading the configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from mailledger.config import Settings
from mailledger.logs import configure_logging, get_logger
from mailledger.metrics import CONTENT_TYPE, Metrics
from mailledger.service import health
from mailledger.service.notify import Notifier
from mailledger.service.reconfigure import Applier, Reloader
from mailledger.service.retention import RetentionReport, retention_loop
from mailledger.service.statushttp import Response, StatusServer, json_response
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.freespace import FreeSpaceGuard, free_bytes

log = get_logger(__name__)


class ServiceRuntime:
    """Starts and stops the operational tasks around the mail path."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        blobs: BlobBackend,
        guard: FreeSpaceGuard,
        *,
        metrics: Metrics,
        config_path: str | Path | None = None,
        appliers: list[Applier] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.metrics = metrics
        self.guard = guard
        self.notifier = notifier or Notifier()
        self._sessions = sessions
        self._blobs = blobs
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._hup_installed = False
        self.reloader = Reloader(settings, config_path, [self._apply, *(appliers or [])])
        self.status: StatusServer | None = None
        if settings.metrics.listen:
            self.status = StatusServer(
                settings.metrics.listen, {"/metrics": self._metrics, "/health": self._health}
            )

    @property
    def settings(self) -> Settings:
        """The running settings, reloads included."""
        return self.reloader.settings

    async def start(self) -> None:
        """Bind the status endpoint and start the retention, watchdog and SIGHUP handling."""
        if self.status is not None:
            await self.status.start()
        self._tasks.append(
            asyncio.create_task(
                retention_loop(
                    self._sessions,
                    self._blobs,
                    lambda: self.settings.retention,
                    self._stop,
                    on_report=self._count_retention,
                ),
                name="mailledger-retention",
            )
        )
        if self.notifier.watchdog_seconds:
            self._tasks.append(asyncio.create_task(self._watchdog(), name="mailledger-watchdog"))
        if threading.current_thread() is threading.main_thread():
            loop = asyncio.get_running_loop()
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signal.SIGHUP, self._on_hup)
                self._hup_installed = True

    def ready(self, addresses: list[tuple[str, int]]) -> None:
        """The listeners are bound: tell systemd (``Type=notify``)."""
        self.notifier.ready(f"accepting mail on {', '.join(f'{h}:{p}' for h, p in addresses)}")

    def stopping(self) -> None:
        """Shutdown begins: systemd starts its stop timeout now."""
        self.notifier.stopping()

    async def stop(self) -> None:
        """Stop the periodic tasks and the status endpoint."""
        if self._hup_installed:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._hup_installed = False
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.status is not None:
            await self.status.stop()

    # --- reload --------------------------------------------------------------------------

    def _on_hup(self) -> None:
        self.notifier.reloading()
        try:
            result = self.reloader.reload()
        finally:
            self.notifier.ready("configuration reloaded")
        self.metrics.reloads.labels("error" if result.error else "ok").inc()

    def _apply(self, settings: Settings) -> None:
        configure_logging(settings.logging)
        self.guard.min_free_bytes = settings.storage.min_free_bytes

    # --- periodic tasks ------------------------------------------------------------------

    async def _watchdog(self) -> None:
        # Half the interval, as sd_watchdog_enabled(3) recommends; a loop stuck for longer
        # than WatchdogSec misses its ping and systemd restarts the service.
        interval = (self.notifier.watchdog_seconds or 0) / 2
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    def _count_retention(self, report: RetentionReport) -> None:
        self.metrics.retention_deleted.labels("raw").inc(report.raw_messages)
        self.metrics.retention_deleted.labels("quarantine").inc(report.quarantined)

    # --- the status routes ---------------------------------------------------------------

    async def _metrics(self) -> Response:
        free = {}
        for path in self.guard.paths:
            with contextlib.suppress(OSError):
                free[str(path)] = free_bytes(path)
        try:
            await asyncio.wait_for(
                asyncio.to_thread(self.metrics.refresh, self._sessions, free),
                health.CHECK_TIMEOUT_SECONDS,
            )
        except Exception as exc:  # noqa: BLE001 - the counters are still worth a scrape
            self.metrics.database_up.set(0)
            log.warning("metrics: could not read the queues", error=str(exc)[:200])
        return Response(200, self.metrics.exposition(), CONTENT_TYPE)

    async def _health(self) -> Response:
        result = await health.check(self._sessions, self._blobs.root, self.guard, blobs=self._blobs)
        if not result.ok:
            log.warning("health check failed", problems=json.dumps(result.problems))
        return json_response(200 if result.ok else 503, result.as_dict())
