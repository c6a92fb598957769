"""Processing in separate processes, so parsing and checks use every core.

One Python process runs on one core at a time: with processing in the listener's process, a
burst of mail makes the listener wait for the CPU and the 250 slows down. With
``[processing] worker_processes = N`` the server starts N processes, each running the same
``Worker`` against the same database; claims and leases already keep them from doing the same
message twice (DESIGN §9), exactly as for several nodes.

Each process reports the messages it finished (state and time since the 250) through a queue;
the parent counts them in its ``Metrics``, so ``/metrics`` shows the verdicts of every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import threading
from datetime import datetime
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

import structlog

from mailledger.config import Settings
from mailledger.metrics import Metrics, processing_latency
from mailledger.store.models import MessageState

log = structlog.get_logger("mailledger.workerpool")

# How long a stopping child gets to finish the message in hand before it is terminated.
STOP_GRACE_SECONDS = 30.0
WATCH_INTERVAL_SECONDS = 1.0
# On SQLite, a processing process waits for the write lock by trying at most this far apart,
# not with SQLite's backoff (1, 2, 5 … 100 ms), which left the lock idle between two
# processes' transactions: two processes drained a synced backlog 6-8 % faster (`make
# bench`'s sync phase). Twice intake's interval (service.listeners), so intake, whose client
# waits for its 250, still tends to get the lock first.
LOCK_POLL_SECONDS = 0.002


class _VerdictSender:
    """A processing process's metrics: each final state goes to the parent's queue."""

    def __init__(self, verdicts: Queue[tuple[str, float | None]]) -> None:
        self._verdicts = verdicts

    def message_finished(self, state: MessageState, received_at: datetime | None) -> None:
        self._verdicts.put((state.value, processing_latency(received_at)))


def _child(
    settings_data: dict[str, Any],
    wake: ProcessEvent,
    stop: ProcessEvent,
    verdicts: Queue[tuple[str, float | None]],
) -> None:
    """A processing process: its own engine and worker, woken and stopped through events."""
    # Imported here: the child is a fresh interpreter (spawn), and the parent needs none of it.
    from mailledger.capture.worker import Worker  # noqa: PLC0415
    from mailledger.logs import configure_logging  # noqa: PLC0415
    from mailledger.store.blobbackend import open_blob_backend  # noqa: PLC0415
    from mailledger.store.engine import make_engine, make_sessionmaker  # noqa: PLC0415
    from mailledger.verify.patches import install_patches  # noqa: PLC0415

    install_patches()  # a fresh interpreter: the parent's patches are not inherited
    settings = Settings.model_validate(settings_data)
    configure_logging(settings.logging)
    # Below the listeners: a client waiting for its 250 matters more than a backlog that
    # waits a little longer (`make bench`: the 250 waited behind processing for the CPU).
    os.nice(settings.processing.worker_nice)
    # It gives way to the server's writers: it stands back while one waits for SQLite's lock.
    engine = make_engine(
        settings.database.url,
        echo=settings.database.echo,
        lock_poll_seconds=LOCK_POLL_SECONDS,
        yield_to_waits=True,
    )
    worker = Worker(
        make_sessionmaker(engine),
        open_blob_backend(settings),
        settings,
        metrics=_VerdictSender(verdicts),
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def relay_events() -> None:
            while not stop.is_set():
                if wake.wait(timeout=0.5):
                    wake.clear()
                    loop.call_soon_threadsafe(worker.wake)
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(worker.stop()))

        threading.Thread(target=relay_events, name="mailledger-wake", daemon=True).start()
        await worker.run()

    try:
        asyncio.run(main())
    finally:
        engine.dispose()


class WorkerProcesses:
    """N processing processes with the Worker's interface: ``run``, ``wake``, ``stop``."""

    def __init__(self, settings: Settings, count: int, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self._count = count
        self._metrics = metrics
        self._context = multiprocessing.get_context("spawn")
        self._wake = [self._context.Event() for _ in range(count)]
        self._stop = self._context.Event()
        self._verdicts: Queue[tuple[str, float | None]] = self._context.Queue()
        self._counting: threading.Thread | None = None
        self._processes: list[SpawnProcess | None] = [None] * count
        self._stopping = asyncio.Event()

    def _start(self, index: int) -> SpawnProcess:
        # Each process claims under a name of its own, or two would think a claim is theirs.
        service = self._settings.service
        node = service.model_copy(update={"node_id": f"{service.node_id}-w{index}"})
        data = self._settings.model_copy(update={"service": node}).model_dump()
        process = self._context.Process(
            target=_child,
            args=(data, self._wake[index], self._stop, self._verdicts),
            name=f"mailledger-worker-{index}",
            daemon=True,
        )
        process.start()
        log.info("processing process started", index=index, pid=process.pid)
        return process

    def wake(self) -> None:
        """New work was stored: every process looks now."""
        for event in self._wake:
            event.set()

    def _count_verdicts(self) -> None:
        """Count what the processes report, until ``stop`` puts None."""
        while True:
            try:
                item = self._verdicts.get()
            except (EOFError, OSError, ValueError):  # a process died mid-write, or closing
                return
            if item is None:
                return
            if self._metrics is not None:
                state, latency = item
                self._metrics.verdict(state, latency)

    async def run(self) -> None:
        """Start the processes and restart any that dies, until ``stop``."""
        self._counting = threading.Thread(
            target=self._count_verdicts, name="mailledger-verdicts", daemon=True
        )
        self._counting.start()
        for index in range(self._count):
            self._processes[index] = self._start(index)
        while not self._stopping.is_set():
            for index, process in enumerate(self._processes):
                if process is not None and not process.is_alive():
                    log.error("processing process died; restarting", index=index,
                              exitcode=process.exitcode)  # fmt: skip
                    self._processes[index] = self._start(index)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), WATCH_INTERVAL_SECONDS)

    async def stop(self) -> None:
        """Let each process finish its message and hand back its claims, then reap it."""
        self._stopping.set()
        self._stop.set()
        for process in self._processes:
            if process is None:
                continue
            await asyncio.to_thread(process.join, STOP_GRACE_SECONDS)
            if process.is_alive():
                log.warning("processing process did not stop in time", pid=process.pid)
                process.terminate()
                await asyncio.to_thread(process.join, 5.0)
        if self._counting is not None:
            self._verdicts.put(None)  # type: ignore[arg-type]  # the end marker
            await asyncio.to_thread(self._counting.join, 5.0)
