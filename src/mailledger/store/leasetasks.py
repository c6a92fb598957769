"""The asynchronous side of leases, shared by every worker that claims rows and works on them.

A worker claims rows (``store.leases``), starts one task per row, and must keep the claims
alive while the tasks run, or another node would take a row over and do the work twice; at
stop, tasks get a grace period, then are cut off and their rows handed back so another node
(or this one after a restart) can take them at once instead of waiting for the lease to lapse.
The delivery worker (``relay.worker``) and the webhook worker (``web.webhooks``) both do this.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence

from sqlalchemy.exc import DBAPIError, OperationalError
from structlog.typing import FilteringBoundLogger


async def keep_leases(
    lease_seconds: float,
    held: Callable[[], Sequence[int]],
    renew: Callable[[list[int]], object],
    log: FilteringBoundLogger,
    failure: str,
) -> None:
    """Renew the held rows' leases every third of a lease, until cancelled.

    ``renew`` runs in a thread; a database fault is logged as ``failure`` and tried again at
    the next beat (the lease outlasts two missed beats).
    """
    interval = max(lease_seconds / 3, 0.05)
    while True:
        await asyncio.sleep(interval)
        ids = list(held())
        if not ids:
            continue
        try:
            await asyncio.to_thread(renew, ids)
        except (OperationalError, DBAPIError) as exc:
            log.warning(failure, error=str(exc)[:200])


async def finish_or_cut_off(tasks: Collection[asyncio.Task[None]], grace_seconds: float) -> None:
    """Let running tasks finish within ``grace_seconds``; cancel the rest and wait for them."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=grace_seconds)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)


async def hand_back(
    ids: list[int],
    release: Callable[[list[int]], object],
    log: FilteringBoundLogger,
    failure: str,
    done: str = "",
) -> None:
    """Release rows whose work did not finish; if the database is gone, their leases lapse."""
    if not ids:
        return
    try:
        await asyncio.to_thread(release, ids)
    except (OperationalError, DBAPIError):
        log.warning(failure, rows=ids)
        return
    if done:
        log.info(done, rows=ids)
