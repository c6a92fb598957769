"""The calendar worker: runs calendar passes for due accounts (DESIGN §13).

One :class:`CalendarWorker` per process, started by ``serve()``. An account is due when its
``retry_at`` has passed: an hour after its last pass (``[calendar] interval_minutes``), at
once when the CRM made, changed or deleted an appointment in it or someone asked for a sync,
and after the back-off when a pass failed. Accounts are claimed with a lease (renewed while
their pass runs), so several nodes share them, ``mailledger calendar sync`` never runs beside
the worker on the same account, and an account whose node died is taken over once its lease
lapses. CalDAV requests block: passes run on a thread pool of the worker's own.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import structlog
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mailledger.accounts import statuses
from mailledger.calendar.passes import CalendarSyncer
from mailledger.config import Settings
from mailledger.service.leaseworker import LeaseWorker
from mailledger.store.models import CalendarAccount, utcnow
from mailledger.store.secretbox import SecretBox, SecretError

log = structlog.get_logger("mailledger.calendar")


class CalendarWorker(LeaseWorker):
    """Claims due calendar accounts and runs their passes, until stopped."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        slots = settings.calendar.max_concurrent_accounts
        super().__init__(
            kind="calendar",
            settings=settings.calendar,
            executor=ThreadPoolExecutor(slots + 1, thread_name_prefix="mailledger-calendar"),
            log=log,
            renew_failure="could not renew calendar account leases",
        )
        self._sessions = sessions
        self._all = settings
        self._settings = settings.calendar
        self._syncer: CalendarSyncer | None = None

    async def _claim_round(self, slots: int) -> None:
        if slots <= 0:
            return
        try:
            claimed = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._claim, slots
            )
        except (OperationalError, DBAPIError) as exc:
            log.warning("calendar claim failed; database unavailable", error=str(exc)[:200])
            claimed = []
        for account_id in claimed:
            self._start(account_id)

    async def _account(self, account_id: int) -> None:
        """One calendar pass (the syncer holds the lease and hands it back)."""
        syncer = self._get_syncer()
        if syncer is None:
            await asyncio.to_thread(self._release, [account_id])
            return
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self._executor, syncer.run, account_id
            )
            log.info(
                "calendar pass",
                account_id=account_id,
                status=result.status.value,
                mode=result.mode,
                changed=result.changed,
                written=result.written,
                conflicts=result.conflicts,
            )
        except Exception:
            log.exception("calendar pass failed unexpectedly", account_id=account_id)

    def _get_syncer(self) -> CalendarSyncer | None:
        if self._syncer is None:
            try:
                box = SecretBox.from_file(self._all.secrets.key_file)
            except SecretError as exc:
                log.warning("calendar sync waits: cannot open credentials", error=str(exc))
                return None
            self._syncer = CalendarSyncer(self._sessions, self._all, box)
        return self._syncer

    # --- database work (in threads) ---------------------------------------------------------

    def _claim(self, slots: int) -> list[int]:
        now = utcnow()
        with self._sessions() as session:
            due = [
                a
                for a in statuses.due_accounts(
                    session, now, slots + len(self._tasks), CalendarAccount
                )
                if a not in self._tasks
            ]
        syncer = self._get_syncer()
        if syncer is None:
            return []
        return [a for a in due[:slots] if syncer.claim(a, now)]

    def _renew(self, ids: list[int]) -> None:
        syncer = self._get_syncer()
        if syncer is not None:
            syncer.renew(ids)

    def _release(self, ids: list[int]) -> None:
        syncer = self._get_syncer()
        if syncer is not None:
            syncer.release(ids)
