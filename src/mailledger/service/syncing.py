"""The sync worker: runs mailbox passes for due accounts, and IDLEs between them (DESIGN §12).

One :class:`SyncWorker` per process, started by ``serve()``. Accounts are claimed with a
lease (``claimed_by``/``claim_expires_at``, renewed while this node works on them), so
several nodes share the accounts and an account whose node died is taken over when its lease
lapses. Each account runs in a task of its own with a time limit (``[sync]
pass_timeout_seconds``): a slow or broken mailbox never holds the others up, and at most
``connections_per_account`` connections are open to one account.

An account's task: a full pass (``sync.passes``); then, until its next full pass is due
(``interval_minutes``), IDLE on INBOX (folder mode: on the source folder) re-issued every
``idle_seconds`` (RFC 2177 §3: under 29 minutes), a quick pass of the known folders when the
server reports new mail or the staff member sent mail through our relay (its sent copy is
appended), and the folder list read again every ``folder_refresh_minutes``. Then the lease is
handed back, and the next claim starts the next full pass. An account idling while another
is due and every slot is taken ends its idle phase early, so IDLE never starves a pass.

imapclient blocks: passes and IDLE waits run on a thread pool of the worker's own, so they
never take the threads the rest of the server's database work runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog
from imapclient import IMAPClient
from sqlalchemy import update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.service.leaseworker import STOP_GRACE_SECONDS, LeaseWorker
from mailledger.store import mailaccounts
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.leasetasks import hand_back
from mailledger.store.models import AccountStatus, MailboxAccount, utcnow
from mailledger.store.secretbox import SecretBox, SecretError
from mailledger.sync import sentcopy, statuses
from mailledger.sync.folders import INBOX, SOURCE, Planned
from mailledger.sync.imapconn import capabilities, close
from mailledger.sync.notices import mail_notices
from mailledger.sync.passes import PassResult, Syncer
from mailledger.sync.statuses import NEEDS_PEOPLE
from mailledger.sync.sweep import as_utc

log = structlog.get_logger("mailledger.sync")

T = TypeVar("T")
# Seconds between looks at an IDLE connection: how soon a stop or a sent copy is noticed.
IDLE_TICK_SECONDS = 1.0
# How often the worker looks for notices owed (one a node stopped before queueing).
NOTICE_SWEEP_SECONDS = 60.0


class SyncWorker(LeaseWorker):
    """Runs passes and IDLE for the mailbox accounts this node claims, until stopped."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        blobs: BlobBackend,
        settings: Settings,
        *,
        on_stored: Callable[[], object] | None = None,
        cafile: str | None = None,
        resolver: Resolver | None = None,
        on_mail_queued: Callable[[], object] | None = None,
    ) -> None:
        workers = settings.sync.max_concurrent_accounts * settings.sync.connections_per_account
        super().__init__(
            kind="sync",
            settings=settings.sync,
            executor=ThreadPoolExecutor(workers + 2, thread_name_prefix="mailledger-sync"),
            log=log,
            renew_failure="could not renew mailbox account leases",
        )
        self._sessions = sessions
        self._blobs = blobs
        self._all = settings
        self._settings = settings.sync
        self._owner = settings.service.node_id
        self._on_stored = on_stored
        self._cafile = cafile
        # The mails telling staff (and admins) an account needs them (sync.notices).
        self._resolver = resolver or Resolver(settings.dns)
        self._on_mail_queued = on_mail_queued
        self._noticed_at = 0.0
        self._syncer: Syncer | None = None  # made when first needed: serve starts without a key
        self._idlers: dict[int, asyncio.Event] = {}  # account → "end your idle phase"
        self._open: dict[int, set[IMAPClient]] = {}  # account → its connections, to cut off
        self._slots: dict[int, asyncio.Semaphore] = {}

    async def _claim_round(self, slots: int) -> None:
        claimed: list[int] = []
        waiting = 0
        try:
            claimed, waiting = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._claim, slots
            )
        except (OperationalError, DBAPIError) as exc:
            log.warning("sync claim failed; database unavailable", error=str(exc)[:200])
        for account_id in list(self._idlers)[:waiting]:
            self._idlers[account_id].set()  # every slot taken: IDLE gives way
        for account_id in claimed:
            self._start(account_id)

    async def _between_rounds(self) -> None:
        if time.monotonic() - self._noticed_at >= NOTICE_SWEEP_SECONDS:
            await self._notices()

    def _stop_waiting(self) -> None:
        # IDLE ends at once; passes get a moment to finish, then their accounts are handed back.
        for event in self._idlers.values():
            event.set()

    async def _drain(self) -> None:
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_SECONDS)
            for account_id in list(self._open):
                self._cut(account_id)
            if pending:
                await asyncio.wait(pending, timeout=STOP_GRACE_SECONDS)
            for task in pending:
                task.cancel()

    # --- one account ----------------------------------------------------------------------

    async def _account(self, account_id: int) -> None:
        bound = log.bind(account_id=account_id)
        try:
            result = await self._pass(account_id, None)
            if result is not None and result.status in NEEDS_PEOPLE:
                await self._notices()
            if result is not None and result.status is AccountStatus.ENABLED:
                await self._idle_phase(account_id, result.folders)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one account's fault never stops the worker
            bound.exception("sync of an account failed unexpectedly")
        finally:
            self._slots.pop(account_id, None)
            self._open.pop(account_id, None)
            await hand_back(
                [account_id],
                self._release,
                log,
                "could not hand back a mailbox account; its lease will lapse",
            )

    async def _pass(self, account_id: int, folders: list[Planned] | None) -> PassResult | None:
        """One pass in the worker's threads, cut off after ``pass_timeout_seconds``."""
        syncer = self._get_syncer()
        if syncer is None:
            return None
        async with self._slot(account_id):
            loop = asyncio.get_running_loop()
            opened = self._open.setdefault(account_id, set())
            mine: list[IMAPClient] = []

            def connected(imap: IMAPClient) -> None:
                mine.append(imap)
                opened.add(imap)

            future = loop.run_in_executor(
                self._executor,
                functools.partial(syncer.run, account_id, folders=folders, on_connect=connected),
            )
            try:
                return await asyncio.wait_for(
                    asyncio.shield(future), self._settings.pass_timeout_seconds
                )
            except TimeoutError:
                log.warning("sync pass overran its time: cut off", account_id=account_id)
                self._cut(account_id)
                return await future  # it fails now, and records the failure as its status
            finally:
                opened.difference_update(mine)

    async def _idle_phase(self, account_id: int, folders: list[Planned]) -> None:
        """IDLE until the next full pass is due; a quick pass whenever something arrived."""
        syncer = self._get_syncer()
        if syncer is None or not folders or self._stopping:
            return
        due_at = await self._run(self._next_pass_at, account_id)
        refresh_at = time.monotonic() + self._settings.folder_refresh_minutes * 60
        watched = next((f.name for f in folders if f.role in (INBOX, SOURCE)), None)
        if watched is None:
            return
        ended = self._idlers.setdefault(account_id, asyncio.Event())
        try:
            while not self._stopping and not ended.is_set():
                remaining = (due_at - utcnow()).total_seconds() if due_at is not None else 0.0
                if remaining <= 0 or time.monotonic() >= refresh_at:
                    return  # the next full pass (which lists the folders again) is due
                woken = await self._idle_once(account_id, watched, remaining, ended)
                if woken is None:
                    return  # the server offers no IDLE: the interval's passes must do
                if woken and not self._stopping and not ended.is_set():
                    result = await self._pass(account_id, folders)
                    if result is None or result.status is not AccountStatus.ENABLED:
                        return
        finally:
            self._idlers.pop(account_id, None)

    async def _idle_once(
        self, account_id: int, folder: str, remaining: float, ended: asyncio.Event
    ) -> bool | None:
        """One IDLE session: True when something arrived, False when its time ran out.

        None when the server has no IDLE. The command is re-issued every ``idle_seconds``
        by ending this session; sent copies waiting are looked for at every tick.
        """
        syncer = self._get_syncer()
        assert syncer is not None
        async with self._slot(account_id):
            imap = await self._run(syncer.open, account_id)
            self._open.setdefault(account_id, set()).add(imap)
            try:
                if "IDLE" not in capabilities(imap):
                    return None
                await self._run(imap.select_folder, folder, True)
                await self._run(imap.idle)
                until = time.monotonic() + min(self._settings.idle_seconds, remaining)
                looked = 0.0
                while time.monotonic() < until and not self._stopping and not ended.is_set():
                    responses: list[Any] = await self._run(imap.idle_check, IDLE_TICK_SECONDS)
                    if any(_is_news(r) for r in responses):
                        return True
                    if time.monotonic() - looked >= self._settings.poll_interval_seconds:
                        looked = time.monotonic()
                        if await self._run(sentcopy.any_waiting, self._sessions, account_id):
                            return True
                return False
            finally:
                with contextlib.suppress(Exception):
                    await self._run(imap.idle_done)
                await self._run(close, imap)
                self._open.get(account_id, set()).discard(imap)

    async def _notices(self) -> None:
        """Queue the mails owed to staff whose accounts need them; never fails the worker."""
        self._noticed_at = time.monotonic()
        try:
            queued = await mail_notices(self._sessions, self._resolver, self._blobs, self._all)
        except Exception:
            log.exception("could not queue mailbox account notices")
            return
        if queued and self._on_mail_queued is not None:
            self._on_mail_queued()

    def _slot(self, account_id: int) -> asyncio.Semaphore:
        """The account's connection budget (``connections_per_account``)."""
        return self._slots.setdefault(
            account_id, asyncio.Semaphore(self._settings.connections_per_account)
        )

    def _cut(self, account_id: int) -> None:
        """Drop the account's connections: a blocked read in a thread ends with an error."""
        for imap in list(self._open.get(account_id, [])):
            with contextlib.suppress(Exception):
                imap.shutdown()

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(function, *args))

    def _get_syncer(self) -> Syncer | None:
        if self._syncer is None:
            try:
                box = SecretBox.from_file(self._all.secrets.key_file)
            except SecretError as exc:
                log.warning("mailbox sync waits: cannot open credentials", error=str(exc))
                return None
            self._syncer = Syncer(
                self._sessions,
                self._blobs,
                self._all,
                box,
                on_stored=self._on_stored,
                cafile=self._cafile,
            )
        return self._syncer

    # --- database work (in threads) -------------------------------------------------------

    def _claim(self, slots: int) -> tuple[list[int], int]:
        """Lease up to ``slots`` due accounts; also how many due ones found no slot."""
        now = utcnow()
        with self._sessions() as session:
            due = [
                a
                for a in statuses.due_accounts(session, now, max(slots, 1) + len(self._tasks))
                if a not in self._tasks
            ]
        if slots <= 0:
            return [], len(due)
        claimed = []
        for account_id in due[:slots]:
            with self._sessions.begin() as session:
                lease = timedelta(seconds=self._settings.lease_seconds)
                if mailaccounts.claim_account(session, account_id, self._owner, now, lease):
                    claimed.append(account_id)
        return claimed, 0

    def _renew(self, ids: list[int]) -> None:
        expires = utcnow() + timedelta(seconds=self._settings.lease_seconds)
        with self._sessions.begin() as session:
            session.execute(
                update(MailboxAccount)
                .where(MailboxAccount.id.in_(ids), MailboxAccount.claimed_by == self._owner)
                .values(claim_expires_at=expires)
                .execution_options(synchronize_session=False)
            )

    def _release(self, ids: list[int]) -> None:
        with self._sessions.begin() as session:
            mailaccounts.release_accounts(session, ids, self._owner)

    def _next_pass_at(self, account_id: int) -> datetime | None:
        with self._sessions() as session:
            retry_at = session.get_one(MailboxAccount, account_id).retry_at
        return as_utc(retry_at) if retry_at is not None else None


def _is_news(response: Any) -> bool:
    """Whether an IDLE response says the folder changed (``EXISTS``, RFC 3501 §7.3.1)."""
    return isinstance(response, tuple) and len(response) >= 2 and response[1] == b"EXISTS"
