"""``mailledger serve``: every listener and worker in one process, in one event loop.

Start order follows the data: storage first, then the workers that drain it (processing,
hand-back of forwarding confirmations, outbound delivery), then the listeners that fill it
(capture, then submission). Stop order is the reverse: the listeners first (no new mail; a DATA
in progress may finish), then the intake drains what it was handed, then the workers put down
their claims. Anything still unprocessed or undelivered stays queued for the next start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from mailledger.capture.worker import Worker
from mailledger.capture.workerpool import WorkerProcesses
from mailledger.config import ConfigError, Settings, load_settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.forwarding.handback import HandbackRunner
from mailledger.logs import configure_logging, get_logger
from mailledger.metrics import Metrics
from mailledger.relay.held import HeldReleaser
from mailledger.relay.submission import SubmissionHandler, SubmissionListener
from mailledger.relay.worker import DeliveryWorker
from mailledger.service.calendars import CalendarWorker
from mailledger.service.forwardinghealth import HealthRunner
from mailledger.service.listeners import (
    INTAKE_LOCK_POLL_SECONDS,
    ListenerProcesses,
    can_share_port,
    capture_side,
)
from mailledger.service.preflight import preflight
from mailledger.service.runtime import ServiceRuntime
from mailledger.service.syncing import SyncWorker
from mailledger.smtp.protocol import build_tls_context
from mailledger.store.blobbackend import BlobBackend, open_blob_backend
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.freespace import FreeSpaceGuard, storage_paths
from mailledger.verify.patches import install_patches
from mailledger.web.app import build_app
from mailledger.web.serving import HTTPServer
from mailledger.web.webhooks import WebhookWorker

log = get_logger("mailledger.service.server")  # not "__main__" under python -m
LOCK_POLL = INTAKE_LOCK_POLL_SECONDS  # seconds between tries for the write lock at most

Ready = Callable[[list[tuple[str, int]]], None]
HTTPReady = Callable[[tuple[str, int]], None]


async def serve(  # noqa: PLR0915 - one place wires every part, in start order
    settings: Settings,
    *,
    ready: Ready | None = None,
    stop: asyncio.Event | None = None,
    config_path: str | Path | None = None,
    http_ready: HTTPReady | None = None,
) -> None:
    """Run the capture service until ``stop`` is set or SIGTERM/SIGINT arrives.

    ``ready`` is called with the bound (host, port) addresses once mail can be sent;
    ``http_ready`` with the HTTP API's (when ``[http] listen`` is set) once it answers;
    ``config_path`` is the file SIGHUP reloads.
    """
    stop_event = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    # The server's writers answer waiting clients (intake's and submission's 250) or keep mail
    # moving (delivery): they take SQLite's write lock as soon as it is free instead of backing
    # off (store.engine._begin_immediate), trying every millisecond at most; processing
    # processes try half as often (capture.workerpool.LOCK_POLL_SECONDS) and so tend to give
    # way to them.
    engine = make_engine(
        settings.database.url,
        echo=settings.database.echo,
        lock_poll_seconds=INTAKE_LOCK_POLL_SECONDS,
        announce_waits=True,
    )
    sessions = make_sessionmaker(engine)
    # [storage] backend: the database backend shares this engine (on PostgreSQL).
    blobs = open_blob_backend(settings, engine=engine)
    metrics = Metrics()
    guard = FreeSpaceGuard(
        storage_paths(settings.storage.blob_dir, settings.database.url),
        settings.storage.min_free_bytes,
    )
    worker: Worker | WorkerProcesses
    if settings.processing.worker_processes:
        worker = WorkerProcesses(settings, settings.processing.worker_processes, metrics)
    else:
        worker = Worker(sessions, blobs, settings, metrics=metrics)
    settings = _listener_count_checked(settings)
    tls_context = build_tls_context(settings.tls)
    # The capture side in this process; [service] listener_processes - 1 more processes
    # accept on the same port, each with its own (listeners.py).
    capture = capture_side(
        settings,
        sessions,
        blobs,
        guard,
        metrics=metrics,
        on_stored=worker.wake,
        tls_context=tls_context,
    )
    intake, handler, listener = capture.intake, capture.handler, capture.listener
    more_listeners = (
        ListenerProcesses(
            settings, settings.service.listener_processes - 1, metrics, on_stored=worker.wake
        )
        if settings.service.listener_processes > 1
        else None
    )

    def apply_reload(new: Settings) -> None:
        handler.update_limits(new.capture)
        if more_listeners is not None:
            more_listeners.reload(new)

    runtime = ServiceRuntime(
        settings,
        sessions,
        blobs,
        guard,
        metrics=metrics,
        config_path=config_path,
        appliers=[apply_reload],
    )
    blobs.sweep_spool()
    resolver = Resolver(settings.dns)
    delivery = DeliveryWorker(sessions, blobs, settings, resolver, metrics=metrics)
    webhook_worker = WebhookWorker(
        sessions, settings, resolver, blobs=blobs, on_mail_queued=delivery.wake
    )
    handback = HandbackRunner(sessions, blobs, settings, on_queued=[delivery.wake])
    # Mailbox sync: passes run in threads; a committed batch wakes the processing worker.
    syncing = SyncWorker(
        sessions,
        blobs,
        settings,
        on_stored=lambda: loop.call_soon_threadsafe(worker.wake),
        resolver=resolver,
        on_mail_queued=delivery.wake,
    )
    # Calendar sync: an hourly pass per calendar account, sooner when the CRM changed one.
    calendar_worker = CalendarWorker(sessions, settings)
    forwarding_health = HealthRunner(
        sessions, blobs, lambda: runtime.settings, resolver, on_queued=delivery.wake
    )
    held = HeldReleaser(
        sessions,
        blobs,
        resolver,
        settings,
        interval_seconds=settings.relay.held_retry_seconds,
        on_released=delivery.wake,
    )
    submission = _submission_listener(
        settings,
        tls_context,
        SubmissionHandler(
            sessions, blobs, settings, resolver, on_stored=[worker.wake, delivery.wake]
        ),
    )

    http = _http_server(settings, sessions, blobs, on_queued=[worker.wake, delivery.wake])

    signals = _install_signal_handlers(loop, stop_event)
    intake.start()
    tasks = {
        asyncio.create_task(worker.run(), name="mailledger-worker"): "processing worker",
        asyncio.create_task(handback.run(), name="mailledger-handback"): "hand-back runner",
        asyncio.create_task(
            forwarding_health.run(), name="mailledger-forwarding-health"
        ): "forwarding health pass",
        asyncio.create_task(delivery.run(), name="mailledger-delivery"): "delivery worker",
        asyncio.create_task(webhook_worker.run(), name="mailledger-webhooks"): "webhook worker",
        asyncio.create_task(held.run(), name="mailledger-held"): "held-mail releaser",
        asyncio.create_task(syncing.run(), name="mailledger-sync"): "mailbox sync worker",
        asyncio.create_task(
            calendar_worker.run(), name="mailledger-calendar"
        ): "calendar sync worker",
    }
    try:
        await runtime.start()
        addresses = await listener.start()
        if more_listeners is not None:
            # The port the kernel gave this process (port 0) is the one the others bind.
            await more_listeners.start(list(addresses))
        if submission is not None:
            addresses += await submission.start()
        if http is not None:
            http_address = await http.start()
            if http_ready is not None:
                http_ready(http_address)
        runtime.ready(addresses)
        if ready is not None:
            ready(addresses)
        stopped = asyncio.create_task(stop_event.wait())
        # A worker that dies is a fault to surface, not to run on without.
        done, _ = await asyncio.wait({stopped, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        for task, what in tasks.items():
            if task in done:
                stopped.cancel()
                task.result()
                raise RuntimeError(f"the {what} stopped unexpectedly")
        log.info("stopping")
    finally:
        runtime.stopping()
        for sig in signals:
            loop.remove_signal_handler(sig)
        grace = settings.service.shutdown_grace_seconds
        if submission is not None:
            await submission.stop(grace)
        if more_listeners is not None:
            await asyncio.gather(listener.stop(grace), more_listeners.stop())
        else:
            await listener.stop(grace)
        # After the SMTP listeners, which start refusing at once (421) when stopping begins.
        if http is not None:
            await http.stop()
        await intake.close()
        await syncing.stop()
        await calendar_worker.stop()
        await worker.stop()
        await handback.stop()
        await forwarding_health.stop()
        await held.stop()
        await delivery.stop()
        await webhook_worker.stop()
        for task in tasks:
            if not task.done():
                await task
        await runtime.stop()
        engine.dispose()
        log.info("stopped")


def _listener_count_checked(settings: Settings) -> Settings:
    """The settings, with one listener process where the system cannot share a port."""
    if settings.service.listener_processes > 1 and not can_share_port():
        log.warning(
            "listener_processes needs SO_REUSEPORT (Linux); accepting in one process",
            listener_processes=settings.service.listener_processes,
        )
        service = settings.service.model_copy(update={"listener_processes": 1})
        return settings.model_copy(update={"service": service})
    return settings


def _submission_listener(
    settings: Settings, tls_context: ssl.SSLContext | None, handler: SubmissionHandler
) -> SubmissionListener | None:
    """The submission listener, or None when it cannot run: AUTH needs TLS (RFC 4954 §4)."""
    if not settings.submission.listen and not settings.submission.listen_tls:
        return None
    if tls_context is None:
        log.warning("submission listeners off: no [tls] cert_file/key_file for STARTTLS")
        return None
    return SubmissionListener(settings, handler, tls_context=tls_context)


def _http_server(
    settings: Settings,
    sessions: sessionmaker[Session],
    blobs: BlobBackend,
    *,
    on_queued: Sequence[Callable[[], None]] = (),
) -> HTTPServer | None:
    """The API's listener, or None when ``[http] listen`` is empty."""
    if not settings.http.listen:
        return None
    return HTTPServer(
        build_app(sessions, blobs, settings.http, site=settings, on_queued=on_queued),
        settings.http.listen,
        trusted_proxies=settings.http.trusted_proxies,
        grace_seconds=settings.service.shutdown_grace_seconds,
    )


def _install_signal_handlers(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event
) -> list[signal.Signals]:
    # Signal handlers can only be set from the main thread (a test may run us elsewhere).
    if threading.current_thread() is not threading.main_thread():
        return []
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    return installed


def run_server(settings: Settings, config_path: str | Path | None = None) -> int:
    """Configure logging, run the pre-flight, and serve until stopped; the exit code.

    A problem the pre-flight finds (service/preflight.py) stops the start before any port is
    opened, with one line per problem and exit status 2, instead of a server that accepts
    mail it cannot keep or logs the same failure for ever.
    """
    configure_logging(settings.logging)
    problems = preflight(settings)
    if problems:
        for problem in problems:
            print(f"mailledger: {problem}", file=sys.stderr)
        print(f"mailledger: {len(problems)} problem(s): not starting", file=sys.stderr)
        return 2

    def _ready(addresses: list[tuple[str, int]]) -> None:
        log.info(
            "capture listening",
            addresses=[f"{host}:{port}" for host, port in addresses],
            hostname=settings.service.hostname,
        )

    try:
        asyncio.run(serve(settings, ready=_ready, config_path=config_path))
    except OSError as exc:
        # Typically the port is taken or the blob directory is not writable.
        log.error("cannot serve", error=str(exc))  # noqa: TRY400 - the message is the story
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mailledger.service.server --config FILE``: the server without the CLI."""
    install_patches()
    parser = argparse.ArgumentParser(prog="python -m mailledger.service.server")
    parser.add_argument("--config", help="TOML configuration file (or MAILLEDGER_CONFIG)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"mailledger: {exc}", file=sys.stderr)
        return 2
    return run_server(settings, args.config)


if __name__ == "__main__":
    sys.exit(main())
