"""One pass of one mailbox account: log in, choose the folders, bring each up to date.

The pass is a named state machine (DESIGN §12): it starts (``syncing``), ends well
(``enabled``, or ``pending`` when the daily limit deferred the rest) or fails (``error``,
``reconnect``, ``connection``: ``sync.statuses`` decides, ``sync.problems`` says it in
words). Whatever is raised inside becomes a status and an error-log row, never a crash of
the worker: what was committed before the failure stays committed, and the next pass goes on
from there. Blocking (imapclient and the database): the service runs it in a thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from imapclient import IMAPClient
from sqlalchemy.orm import Session, sessionmaker

from mailledger.config import Settings
from mailledger.logs import get_logger
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.models import AccountStatus, MailboxAccount, SyncMode, utcnow
from mailledger.store.secretbox import SecretBox
from mailledger.sync import limits, statuses
from mailledger.sync.credentials import Login, login_for
from mailledger.sync.folderpass import Budget, FolderRun, sync_folder
from mailledger.sync.folders import Planned, ensure_folder_mode, list_folders, plan
from mailledger.sync.imapconn import Endpoint, capabilities, cipher, close, connect
from mailledger.sync.problems import SyncProblem, describe
from mailledger.sync.sentcopy import append_sent_copies

log = get_logger(__name__)


@dataclass(slots=True)
class PassResult:
    """How a pass ended: the status it left, what it recorded and moved, and its problem."""

    status: AccountStatus
    fetched: int = 0
    moved: int = 0
    problem: SyncProblem | None = None
    folders: list[Planned] = field(default_factory=list)


@dataclass(slots=True)
class Syncer:
    """What every pass needs: the stores, the settings, the key that opens credentials."""

    sessions: sessionmaker[Session]
    blobs: BlobBackend
    settings: Settings
    box: SecretBox
    # Called (in the pass's thread) after each committed batch: wakes the capture worker.
    on_stored: Callable[[], object] | None = None
    # A CA file to trust beside the system's (a private CA; the tests' own server).
    cafile: str | None = None

    def login(self, account_id: int) -> tuple[Endpoint, Login]:
        """Where to connect for ``account_id`` and how to log in (refreshing a token first)."""
        with self.sessions.begin() as session:
            account = session.get_one(MailboxAccount, account_id)
            login = login_for(session, account, self.box, self.settings.oauth, utcnow())
            return Endpoint.of(account), login

    def open(self, account_id: int) -> IMAPClient:
        """A logged-in connection to the account's server."""
        endpoint, login = self.login(account_id)
        return connect(
            endpoint, login, timeout_seconds=self.settings.sync.timeout_seconds, cafile=self.cafile
        )

    def run(
        self,
        account_id: int,
        *,
        folders: Sequence[Planned] | None = None,
        on_connect: Callable[[IMAPClient], None] | None = None,
    ) -> PassResult:
        """One pass of ``account_id``: every planned folder, or only ``folders`` (after IDLE).

        ``on_connect`` receives the connection once open, so a caller can cut it off when
        the pass overruns its time.
        """
        started = utcnow()
        with self.sessions.begin() as session:
            account = session.get_one(MailboxAccount, account_id)
            statuses.pass_started(session, account, started)
            allowance = limits.allowance(session, account, started, self.settings.sync)
        run = FolderRun(
            self.sessions,
            self.blobs,
            self.settings.sync,
            account_id,
            frozenset(),
            budget=Budget(allowance),
            on_stored=self.on_stored,
        )
        planned: list[Planned] = list(folders or [])
        try:
            if allowance != 0:
                planned = self._read(account_id, run, planned, on_connect)
        except Exception as error:  # noqa: BLE001 - every failure becomes a status, in words
            return self._failed(account_id, error, run)
        interval = timedelta(minutes=self.settings.sync.interval_minutes)
        with self.sessions.begin() as session:
            account = session.get_one(MailboxAccount, account_id)
            next_pass = account.retry_at if folders is not None else started + interval
            statuses.pass_succeeded(session, account, utcnow(), run.fetched, next_pass_at=next_pass)
            status = account.status
        log.info(
            "sync pass done",
            account_id=account_id,
            fetched=run.fetched,
            moved=run.moved,
            status=status.value,
        )
        return PassResult(status, run.fetched, run.moved, None, planned)

    def _read(
        self,
        account_id: int,
        run: FolderRun,
        planned: list[Planned],
        on_connect: Callable[[IMAPClient], None] | None,
    ) -> list[Planned]:
        imap = self.open(account_id)
        try:
            if on_connect is not None:
                on_connect(imap)
            run.capabilities = capabilities(imap)
            run.tls = cipher(imap)
            # Before the folders: the sweep then reads the copies as the same emails.
            run.appended = append_sent_copies(self.sessions, self.blobs, account_id, imap)
            if not planned:
                with self.sessions() as session:
                    account = session.get_one(MailboxAccount, account_id)
                if account.mode is SyncMode.FOLDER:
                    ensure_folder_mode(imap, account)
                planned = plan(list_folders(imap), account)
            for folder in planned:
                sync_folder(run, imap, folder)
                if run.budget.exhausted:
                    break
        finally:
            close(imap)
        return planned

    def _failed(self, account_id: int, error: BaseException, run: FolderRun) -> PassResult:
        with self.sessions.begin() as session:
            account = session.get_one(MailboxAccount, account_id)
            problem = describe(error, account)
            status = statuses.pass_failed(session, account, problem, utcnow())
            account.messages_synced += run.fetched
        log.warning(
            "sync pass failed",
            account_id=account_id,
            status=status.value,
            what=problem.what,
            error=type(error).__name__,
            fetched=run.fetched,
        )
        return PassResult(status, run.fetched, run.moved, problem)
