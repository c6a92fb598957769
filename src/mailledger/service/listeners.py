"""A capture listener per core on one port: ``[service] listener_processes``.

One Python process answers SMTP on one core at a time. With ``listener_processes = N`` the
server's own process binds the capture addresses with ``SO_REUSEPORT`` (Linux) and starts
N - 1 more processes that bind the same addresses the same way; the kernel spreads new
connections over the N sockets. Each process runs the capture side whole: its own database
engine, router, handler and intake writer (``store.inbox.Intake``, group commit, fsync before
``250``), so a ``250`` means what it always meant (DESIGN §3). With port 0 the server's process
binds first and the others bind the port it got.

Supervision follows ``capture.workerpool``: a listener process that dies is restarted on the
same addresses (its sessions' senders never got ``250`` and retry); ``serve`` stops them with
its own listener on SIGTERM, each finishing the DATA in progress within
``shutdown_grace_seconds``. ``serve`` reports ready (systemd ``READY=1``) once every process is
accepting. What a process stores wakes the server's processing; its counts of accepted and
refused mail reach the server's ``/metrics``; a reload (SIGHUP) reaches its limits and logging.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import multiprocessing
import signal
import socket
import ssl
import sys
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from mailledger.capture.handler import AcceptCounter, CaptureHandler
from mailledger.config import Settings
from mailledger.logs import configure_logging, get_logger
from mailledger.mail.replies import Reply
from mailledger.metrics import Metrics, reason_of
from mailledger.routing.routes import RecipientRouter
from mailledger.smtp.listener import CaptureListener
from mailledger.smtp.protocol import build_tls_context
from mailledger.store.blobbackend import BlobBackend, open_blob_backend
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.freespace import FreeSpaceGuard, storage_paths
from mailledger.store.inbox import Intake

log = get_logger("mailledger.service.listeners")

# On SQLite, intake waits for the write lock by trying this often (seconds) instead of SQLite's
# backoff: a client is waiting for its 250 (store.engine._begin_immediate).
INTAKE_LOCK_POLL_SECONDS = 0.001
# How long the server waits for a listener process to bind and accept before it gives up.
START_TIMEOUT_SECONDS = 60.0
WATCH_INTERVAL_SECONDS = 1.0
# A listener process sends its counts to the server this often (seconds), not per message.
COUNTS_INTERVAL_SECONDS = 1.0
# After the sessions' grace, how long a stopping process gets to commit and exit.
EXIT_MARGIN_SECONDS = 10.0
PROCESS_TITLE = b"mailledger-smtp"  # what ps and top show for a listener process (Linux)


@dataclass
class CaptureSide:
    """What accepts capture mail in one process: intake, handler and listener, wired once."""

    intake: Intake
    handler: CaptureHandler
    listener: CaptureListener


def capture_side(
    settings: Settings,
    sessions: sessionmaker[Session],
    blobs: BlobBackend,
    guard: FreeSpaceGuard,
    *,
    metrics: AcceptCounter,
    on_stored: Callable[[], None],
    tls_context: ssl.SSLContext | None,
) -> CaptureSide:
    """The capture side of ``serve``, in the server's process or in a listener process."""
    intake = Intake(sessions, blobs, on_stored=on_stored, space=guard)
    router = RecipientRouter(sessions, max_local_part_bytes=settings.capture.max_local_part_bytes)
    handler = CaptureHandler(router, intake, settings.capture, metrics)
    listener = CaptureListener(
        settings,
        handler,
        tls_context=tls_context,
        spool=blobs.new_file,
        reuse_port=settings.service.listener_processes > 1,
    )
    return CaptureSide(intake, handler, listener)


def listen_values(addresses: list[tuple[str, int]]) -> list[str]:
    """``capture.listen`` values for bound addresses (IPv6 hosts in brackets)."""
    return [f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in addresses]


class _CountRelay:
    """A listener process's accept and refuse counts, sent to the server once a second."""

    def __init__(self, out: Queue[Any]) -> None:
        self._out = out
        self._counts: Counter[tuple[str, str, str]] = Counter()

    def message_accepted(self, listener: str = "capture") -> None:
        self._counts[("accepted", listener, "")] += 1

    def message_refused(self, stage: str, reply: Reply) -> None:
        self._counts[("refused", stage, reason_of(reply))] += 1

    def flush(self) -> None:
        if self._counts:
            counts, self._counts = dict(self._counts), Counter()
            self._out.put(("counts", -1, counts))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(COUNTS_INTERVAL_SECONDS)
            self.flush()


def _name_process(title: bytes) -> None:
    """Set the process's name as ps and top show it (Linux ``PR_SET_NAME``; elsewhere nothing)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(15, ctypes.c_char_p(title[:15]), 0, 0, 0)  # 15: PR_SET_NAME


def _child(
    settings_data: dict[str, Any],
    index: int,
    control: Queue[Any],
    events: Queue[Any],
    stored: ProcessEvent,
) -> None:
    """A listener process: the capture side on the server's addresses, until told to stop."""
    _name_process(PROCESS_TITLE)
    # Ctrl-C reaches the whole process group: the server stops us, in its own order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = Settings.model_validate(settings_data)
    configure_logging(settings.logging)
    engine = make_engine(
        settings.database.url,
        echo=settings.database.echo,
        lock_poll_seconds=INTAKE_LOCK_POLL_SECONDS,
        announce_waits=True,
    )
    blobs = open_blob_backend(settings, engine=engine)
    guard = FreeSpaceGuard(
        storage_paths(settings.storage.blob_dir, settings.database.url),
        settings.storage.min_free_bytes,
    )
    counts = _CountRelay(events)
    side = capture_side(
        settings,
        make_sessionmaker(engine),
        blobs,
        guard,
        metrics=counts,
        on_stored=stored.set,
        tls_context=build_tls_context(settings.tls),
    )
    try:
        asyncio.run(
            _serve_child(
                settings,
                side,
                guard=guard,
                counts=counts,
                index=index,
                control=control,
                events=events,
            ),
        )
    finally:
        blobs.close()
        engine.dispose()


async def _serve_child(
    settings: Settings,
    side: CaptureSide,
    *,
    guard: FreeSpaceGuard,
    counts: _CountRelay,
    index: int,
    control: Queue[Any],
    events: Queue[Any],
) -> None:
    """Accept until the server says stop (or SIGTERM), then stop as ``serve`` stops."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def apply(data: dict[str, Any]) -> None:
        new = Settings.model_validate(data)
        configure_logging(new.logging)
        side.handler.update_limits(new.capture)
        guard.min_free_bytes = new.storage.min_free_bytes

    def read_control() -> None:
        while True:
            kind, data = control.get()
            if kind == "reload":
                loop.call_soon_threadsafe(apply, data)
                continue
            loop.call_soon_threadsafe(stopping.set)
            return

    threading.Thread(target=read_control, name="mailledger-control", daemon=True).start()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
    side.intake.start()
    relay = asyncio.create_task(counts.run(), name="mailledger-counts")
    try:
        await side.listener.start()
    except OSError as exc:
        events.put(("failed", index, str(exc)))
        raise
    events.put(("ready", index, None))
    await stopping.wait()
    await side.listener.stop(settings.service.shutdown_grace_seconds)
    await side.intake.close()
    relay.cancel()
    counts.flush()


class ListenerProcesses:
    """The extra listener processes of ``[service] listener_processes``, supervised."""

    def __init__(
        self,
        settings: Settings,
        count: int,
        metrics: Metrics,
        on_stored: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._count = count
        self._metrics = metrics
        self._on_stored = on_stored
        self._context = multiprocessing.get_context("spawn")
        self._events: Queue[Any] = self._context.Queue()
        self._stored = self._context.Event()
        self._controls: list[Queue[Any]] = []
        self._processes: list[SpawnProcess | None] = [None] * count
        self._ready: dict[int, asyncio.Future[None]] = {}
        self._stopping = False
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def pids(self) -> list[int]:
        """The running listener processes' ids, by index (for operators and tests)."""
        return [p.pid for p in self._processes if p is not None and p.pid is not None]

    async def start(self, addresses: list[tuple[str, int]]) -> None:
        """Start the processes on the addresses the server bound; return once all accept."""
        self._loop = asyncio.get_running_loop()
        capture = self._settings.capture.model_copy(update={"listen": listen_values(addresses)})
        self._settings = self._settings.model_copy(update={"capture": capture})
        for target, name in ((self._read_events, "events"), (self._relay_stored, "stored")):
            thread = threading.Thread(
                target=target, name=f"mailledger-listener-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        for index in range(self._count):
            self._processes[index] = self._start(index)
        await asyncio.gather(
            *(self._started(index, self._ready[index]) for index in range(self._count))
        )
        log.info("listener processes accepting", count=self._count, pids=self.pids)
        self._watch = asyncio.create_task(self._supervise(), name="mailledger-listeners")

    def reload(self, settings: Settings) -> None:
        """Hand a reloaded configuration's limits and logging to every listener process."""
        capture = settings.capture.model_copy(update={"listen": self._settings.capture.listen})
        self._settings = settings.model_copy(update={"capture": capture})
        data = self._settings.model_dump()
        for control in self._controls:
            control.put(("reload", data))

    async def stop(self) -> None:
        """Stop every process: new sessions get 421, a DATA in progress may finish."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for control in self._controls:
            control.put(("stop", None))
        limit = self._settings.service.shutdown_grace_seconds + EXIT_MARGIN_SECONDS
        for process in self._processes:
            if process is None:
                continue
            await asyncio.to_thread(process.join, limit)
            if process.is_alive():
                log.warning("listener process did not stop in time", pid=process.pid)
                process.terminate()
                await asyncio.to_thread(process.join, 5.0)
        self._closing.set()
        self._events.put(("closed", -1, None))
        for thread in self._threads:
            await asyncio.to_thread(thread.join, 5.0)

    # --- the processes -------------------------------------------------------------------

    def _start(self, index: int) -> SpawnProcess:
        control: Queue[Any] = self._context.Queue()
        if index < len(self._controls):
            self._controls[index].close()
            self._controls[index] = control
        else:
            self._controls.append(control)
        assert self._loop is not None
        if self._watch is None:  # the first start: ``start`` waits for it to accept
            self._ready[index] = self._loop.create_future()
        process = self._context.Process(
            target=_child,
            args=(self._settings.model_dump(), index, control, self._events, self._stored),
            name=f"mailledger-listener-{index + 1}",
            daemon=True,
        )
        process.start()
        log.info("listener process started", index=index + 1, pid=process.pid)
        return process

    async def _started(self, index: int, ready: asyncio.Future[None]) -> None:
        try:
            await asyncio.wait_for(ready, START_TIMEOUT_SECONDS)
        except TimeoutError:
            raise RuntimeError(f"listener process {index + 1} did not start listening") from None

    async def _supervise(self) -> None:
        """Restart a process that dies, until the server stops."""
        while not self._stopping:
            for index, process in enumerate(self._processes):
                if process is not None and not process.is_alive() and not self._stopping:
                    log.error("listener process died; restarting", index=index + 1,
                              exitcode=process.exitcode)  # fmt: skip
                    self._processes[index] = self._start(index)
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)

    # --- what the processes report (threads) --------------------------------------------

    def _read_events(self) -> None:
        while True:
            try:
                kind, index, data = self._events.get()
            except (EOFError, OSError, ValueError):  # a process died mid-write, or closing
                return
            if kind == "closed":
                return
            if kind == "counts":
                self._count_in(data)
            elif kind in ("ready", "failed"):
                self._call(self._settle, index, data)

    def _count_in(self, counts: dict[tuple[str, str, str], int]) -> None:
        for (what, first, reason), n in counts.items():
            if what == "accepted":
                self._metrics.accepted.labels(first).inc(n)
            else:
                self._metrics.refused.labels(first, reason).inc(n)

    def _settle(self, index: int, error: str | None) -> None:
        future = self._ready.pop(index, None)
        if future is None or future.done():
            if error is not None:
                log.error("listener process could not listen", index=index + 1, error=error)
            else:
                log.info("listener process accepting", index=index + 1)
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(OSError(f"listener process {index + 1}: {error}"))

    def _relay_stored(self) -> None:
        """A process committed mail: wake processing (cleared first, so no wake is lost)."""
        while not self._closing.is_set():
            if self._stored.wait(timeout=0.5):
                self._stored.clear()
                self._call(self._on_stored)

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            self._loop.call_soon_threadsafe(callback, *args)


def can_share_port() -> bool:
    """Whether this system lets several sockets bind one port (``SO_REUSEPORT``)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
