"""The loop every account worker runs: claim due accounts under a lease, one task each.

The mailbox sync worker (``service.syncing``) and the calendar worker (``service.calendars``)
differ in what a task does and what happens between rounds; the claiming loop, the lease
heartbeat, waking, stopping and the grace given to tasks in flight are written here once.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from structlog.typing import FilteringBoundLogger

from mailledger.store.leasetasks import keep_leases

# How long stop() lets tasks in flight finish before the worker stops waiting for them.
STOP_GRACE_SECONDS = 5.0


class WorkerSettings(Protocol):
    """The settings both ``[sync]`` and ``[calendar]`` give their worker."""

    @property
    def max_concurrent_accounts(self) -> int: ...
    @property
    def lease_seconds(self) -> float: ...
    @property
    def poll_interval_seconds(self) -> float: ...


class LeaseWorker(abc.ABC):
    """Claims due accounts and runs a task per account until stopped.

    ``kind`` names the worker's tasks (``{kind}-account-{id}``) and its lease heartbeat; the
    leases of the accounts with a running task are renewed every third of ``lease_seconds``.
    """

    def __init__(
        self,
        *,
        kind: str,
        settings: WorkerSettings,
        executor: ThreadPoolExecutor,
        log: FilteringBoundLogger,
        renew_failure: str,
    ) -> None:
        self._kind = kind
        self._max_concurrent = settings.max_concurrent_accounts
        self._lease_seconds = settings.lease_seconds
        self._poll_interval_seconds = settings.poll_interval_seconds
        self._executor = executor
        self._log = log
        self._renew_failure = renew_failure
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._done = asyncio.Event()
        self._active = False
        self._tasks: dict[int, asyncio.Task[None]] = {}

    def wake(self) -> None:
        """Something may be due: look now instead of at the next poll."""
        self._wakeup.set()

    async def run(self) -> None:
        """Claim due accounts and run them until :meth:`stop`."""
        self._active = True
        self._done.clear()
        heartbeat = asyncio.create_task(
            keep_leases(
                self._lease_seconds,
                lambda: sorted(self._tasks),
                self._renew,
                self._log,
                self._renew_failure,
            ),
            name=f"mailledger-{self._kind}-leases",
        )
        try:
            while not self._stopping:
                self._wakeup.clear()
                await self._claim_round(self._max_concurrent - len(self._tasks))
                if self._stopping:
                    break
                await self._between_rounds()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._poll_interval_seconds)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self._drain()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._active = False
            self._done.set()

    async def stop(self) -> None:
        """Stop claiming; tasks in flight get a moment to finish (each commits as it goes)."""
        self._stopping = True
        self._stop_waiting()
        self._wakeup.set()
        if self._active:
            await self._done.wait()

    def _start(self, account_id: int) -> None:
        task = asyncio.create_task(
            self._account(account_id), name=f"{self._kind}-account-{account_id}"
        )
        self._tasks[account_id] = task

        def _finished(_task: asyncio.Task[None]) -> None:
            self._tasks.pop(account_id, None)
            self._wakeup.set()  # a slot is free

        task.add_done_callback(_finished)

    @abc.abstractmethod
    async def _claim_round(self, slots: int) -> None:
        """Claim up to ``slots`` due accounts and :meth:`_start` each."""

    @abc.abstractmethod
    def _account(self, account_id: int) -> Coroutine[Any, Any, None]:
        """The work on one claimed account (its task)."""

    @abc.abstractmethod
    def _renew(self, ids: list[int]) -> None:
        """Renew these accounts' leases (runs in a thread)."""

    async def _between_rounds(self) -> None:
        """Work due between two claim rounds, before the worker waits to be woken."""
        return  # none by default

    def _stop_waiting(self) -> None:
        """Cut short what a task waits on, so :meth:`stop` does not wait for it."""
        return  # none by default

    async def _drain(self) -> None:
        """At stop: let the running tasks finish within a grace period."""
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE_SECONDS)
