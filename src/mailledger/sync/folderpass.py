"""One folder of one pass: check, fetch in batches, record, and (folder mode) move on.

The folder's stored state says where the last pass stopped: its UIDVALIDITY, the highest UID
taken, and what STATUS said then. An unchanged STATUS skips the folder without opening it.
A changed UIDVALIDITY (RFC 3501 §2.3.1.1: the old UIDs mean nothing now) starts the folder
over, matching what it finds by Message-ID to what was already recorded, and says so on the
account's error log as information. Then the new UIDs are read in batches of at most
``[sync] batch_size``: sizes, dates and Message-IDs first, then the bodies of those not yet
recorded, in FETCHes bounded by size, each batch committed with the folder's progress.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from imapclient import IMAPClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.config import SyncSettings
from mailledger.logs import get_logger
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.models import (
    MailboxAccount,
    MailboxError,
    MailboxFolder,
    SyncMode,
    utcnow,
)
from mailledger.sync import fetchanswer, foldermode, limits, sweep
from mailledger.sync.folders import Planned
from mailledger.sync.intake import (
    Linked,
    Where,
    advance,
    known_message_ids,
    record_batch,
    recorded_uids,
    store_blobs,
)
from mailledger.sync.messages import Fetched, headers_only, message_id_of

log = get_logger(__name__)

# Bodies per FETCH are bounded by their total size too, so memory stays bounded whatever
# the batch size: 500 messages of 20 MB would otherwise be 10 GB in one answer.
FETCH_BYTES = 16 * 1024 * 1024
_META = [b"RFC822.SIZE", b"INTERNALDATE", b"BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]
_META_HEADER = b"BODY[HEADER.FIELDS (MESSAGE-ID)]"
INFO = "info"


@dataclass(slots=True)
class Budget:
    """How many more messages this pass may record (the daily limit); None: no limit."""

    left: int | None = None
    exhausted: bool = False

    def take(self, wanted: int) -> int:
        """How many of ``wanted`` may be recorded now."""
        if self.left is None:
            return wanted
        allowed = min(wanted, self.left)
        if allowed < wanted:
            self.exhausted = True
        return allowed

    def spend(self, n: int) -> None:
        """Count ``n`` recorded messages."""
        if self.left is not None:
            self.left -= n
            if self.left <= 0:
                self.exhausted = True


@dataclass(slots=True)
class FolderRun:
    """What one pass needs to read folders: the stores, the settings, and its counters."""

    sessions: sessionmaker[Session]
    blobs: BlobBackend
    settings: SyncSettings
    account_id: int
    capabilities: frozenset[str]
    tls: str = ""
    budget: Budget = field(default_factory=Budget)
    on_stored: Callable[[], object] | None = None
    fetched: int = 0
    moved: int = 0
    appended: int = 0  # sent copies APPENDed to the Sent folder


def sync_folder(run: FolderRun, imap: IMAPClient, planned: Planned) -> int:
    """Bring one folder up to date; the number of messages recorded from it."""
    status = _status(imap, planned.name, run.capabilities)
    with run.sessions.begin() as session:
        account = session.get_one(MailboxAccount, run.account_id)
        folder = _folder_row(session, account, planned)
        mode, since = account.mode, account.since
        unchanged = (
            folder.uidvalidity == status.get("UIDVALIDITY")
            and folder.uidnext == status.get("UIDNEXT")
            and folder.messages == status.get("MESSAGES")
            and folder.highestmodseq == status.get("HIGHESTMODSEQ")
        )
        if mode is SyncMode.FOLDER:
            unchanged = status.get("MESSAGES") == 0
        if unchanged:
            folder.checked_at = utcnow()
            return 0
        folder_id = folder.id
    read_only = sweep.READ_ONLY if mode is SyncMode.SWEEP else foldermode.READ_ONLY
    selected = imap.select_folder(planned.name, readonly=read_only)
    uidvalidity = int(selected[b"UIDVALIDITY"])
    highest = _check_validity(run, folder_id, planned.name, uidvalidity)
    if mode is SyncMode.SWEEP:
        found = imap.search(sweep.search_criteria(highest, since))
        uids = sorted(int(uid) for uid in found if int(uid) > highest)
    else:
        uids = sorted(int(uid) for uid in imap.search(foldermode.SEARCH_ALL))
    before = run.fetched
    for batch in _chunks(uids, run.settings.batch_size):
        if run.budget.exhausted:
            break
        _batch(run, imap, planned, folder_id, uidvalidity, batch, mode, since)
    if not run.budget.exhausted:
        with run.sessions.begin() as session:
            folder = session.get_one(MailboxFolder, folder_id)
            folder.uidnext = status.get("UIDNEXT")
            folder.messages = status.get("MESSAGES")
            folder.highestmodseq = status.get("HIGHESTMODSEQ")
            folder.checked_at = utcnow()
    return run.fetched - before


def _batch(  # noqa: PLR0917 - one batch's whole context, passed once
    run: FolderRun,
    imap: IMAPClient,
    planned: Planned,
    folder_id: int,
    uidvalidity: int,
    batch: list[int],
    mode: SyncMode,
    since: datetime,
) -> None:
    """Fetch, record and (folder mode) move one batch of UIDs."""
    meta = fetchanswer.fetch(imap, batch, _META)
    wanted: list[tuple[int, int, str, datetime | None]] = []
    for uid in batch:
        data = meta.get(uid)
        if data is None:
            continue  # expunged meanwhile
        internal = data.get(b"INTERNALDATE")
        if mode is SyncMode.SWEEP and not sweep.in_window(internal, since):
            continue
        size = int(data.get(b"RFC822.SIZE", 0))
        message_id = message_id_of(bytes(data.get(_META_HEADER, b"")))
        wanted.append((uid, size, message_id, internal))
    with run.sessions.begin() as session:
        done = recorded_uids(
            session, run.account_id, planned.name, uidvalidity, [w[0] for w in wanted]
        )
        fresh = [w for w in wanted if w[0] not in done]
        known = known_message_ids(session, run.account_id, planned.name, [w[2] for w in fresh])
    linked = [Linked(w[0], w[2], known[w[2]]) for w in fresh if w[2] in known]
    to_fetch = [w for w in fresh if w[2] not in known]
    allowed = run.budget.take(len(to_fetch))
    cut = len(to_fetch) > allowed
    to_fetch = to_fetch[:allowed]
    if cut:
        # The rest waits for tomorrow: progress stops at the last UID taken, never past it.
        last = to_fetch[-1][0] if to_fetch else 0
        linked = [link for link in linked if link.uid <= last]
        done = {uid for uid in done if uid <= last}
        batch = [uid for uid in batch if uid <= last]
    messages = list(_bodies(run, imap, planned.name, to_fetch))
    digests = store_blobs(run.blobs, messages)
    now = utcnow()
    with run.sessions.begin() as session:
        account = session.get_one(MailboxAccount, run.account_id)
        folder = session.get_one(MailboxFolder, folder_id)
        where = Where(account, planned.name, uidvalidity, run.tls)
        record_batch(session, where, messages, digests, linked)
        if batch:
            advance(folder, uidvalidity, max(batch), now)
        limits.count(session, account, now, len(messages))
        if cut:
            limits.defer(session, account, now)
    run.budget.spend(len(messages))
    run.fetched += len(messages)
    if messages and run.on_stored is not None:
        run.on_stored()
    if mode is SyncMode.FOLDER:
        recorded = sorted({*done, *(m.uid for m in messages), *(link.uid for link in linked)})
        _move(run, imap, planned.name, uidvalidity, recorded)


def _move(run: FolderRun, imap: IMAPClient, folder: str, uidvalidity: int, uids: list[int]) -> None:
    """Move recorded messages to the processed folder, then note that they were moved."""
    if not uids:
        return
    with run.sessions() as session:
        processed = session.get_one(MailboxAccount, run.account_id).processed_folder
    foldermode.move(imap, uids, processed, run.capabilities)
    with run.sessions.begin() as session:
        foldermode.mark_moved(session, run.account_id, folder, uidvalidity, uids, utcnow())
    run.moved += len(uids)


def _bodies(
    run: FolderRun,
    imap: IMAPClient,
    folder: str,
    wanted: Sequence[tuple[int, int, str, datetime | None]],
) -> Iterator[Fetched]:
    """The messages' bytes: whole up to the size limit, headers only above it."""
    limit = run.settings.max_message_bytes
    small = [w for w in wanted if w[1] <= limit]
    big = [w for w in wanted if w[1] > limit]
    for group in _by_size(small):
        answer = fetchanswer.fetch(imap, [w[0] for w in group], [b"BODY.PEEK[]"])
        for uid, size, message_id, internal in group:
            data = answer.get(uid)
            if data is None:
                continue
            raw = bytes(data.get(b"BODY[]", b""))
            yield Fetched(uid, raw, message_id or message_id_of(raw), size, internal)
    for uid, size, message_id, internal in big:
        answer = fetchanswer.fetch(imap, [uid], [b"BODY.PEEK[HEADER]"])
        data = answer.get(uid)
        if data is None:
            continue
        header = bytes(data.get(b"BODY[HEADER]", b""))
        raw = headers_only(header, size, limit, folder)
        log.info("message over the sync size limit: headers only", uid=uid, size=size)
        yield Fetched(uid, raw, message_id, size, internal, headers_only=True)


def _by_size(
    wanted: Sequence[tuple[int, int, str, datetime | None]],
) -> Iterator[list[tuple[int, int, str, datetime | None]]]:
    """Groups of messages whose sizes add up to at most ``FETCH_BYTES`` (one at least)."""
    group: list[tuple[int, int, str, datetime | None]] = []
    total = 0
    for item in wanted:
        if group and total + item[1] > FETCH_BYTES:
            yield group
            group, total = [], 0
        group.append(item)
        total += item[1]
    if group:
        yield group


def _check_validity(run: FolderRun, folder_id: int, name: str, uidvalidity: int) -> int:
    """The highest UID already taken; after a UIDVALIDITY change, 0, logged as information."""
    with run.sessions.begin() as session:
        folder = session.get_one(MailboxFolder, folder_id)
        if folder.uidvalidity is None:
            folder.uidvalidity = uidvalidity
            return folder.highest_uid
        if folder.uidvalidity == uidvalidity:
            return folder.highest_uid
        old = folder.uidvalidity
        session.add(
            MailboxError(
                account_id=run.account_id,
                status=INFO,
                what=(
                    f"the server renumbered the folder {name} (UIDVALIDITY {old} → "
                    f"{uidvalidity}): it is read again, and messages already recorded are "
                    "recognised by their Message-ID, not recorded twice"
                ),
                fix="nothing to do",
            )
        )
        log.info("uidvalidity changed", folder=name, old=old, new=uidvalidity)
        folder.uidvalidity = uidvalidity
        folder.highest_uid = 0
        folder.uidnext = None
        folder.messages = None
        folder.highestmodseq = None
        return 0


def _folder_row(session: Session, account: MailboxAccount, planned: Planned) -> MailboxFolder:
    """The folder's state row, made on first sight; its role kept up to date."""
    folder = session.scalars(
        select(MailboxFolder).where(
            MailboxFolder.account_id == account.id, MailboxFolder.name == planned.name
        )
    ).one_or_none()
    if folder is None:
        folder = MailboxFolder(account_id=account.id, name=planned.name, role=planned.role)
        session.add(folder)
        session.flush()
    elif folder.role != planned.role:
        folder.role = planned.role
    return folder


def _status(imap: IMAPClient, name: str, capabilities: frozenset[str]) -> dict[str, int | None]:
    """STATUS of the folder: MESSAGES, UIDNEXT, UIDVALIDITY (and HIGHESTMODSEQ: CONDSTORE)."""
    items = [b"MESSAGES", b"UIDNEXT", b"UIDVALIDITY"]
    if "CONDSTORE" in capabilities:
        items.append(b"HIGHESTMODSEQ")
    answer: dict[Any, Any] = imap.folder_status(name, items)
    status: dict[str, int | None] = {"HIGHESTMODSEQ": None}
    for key, value in answer.items():
        word = key.decode().upper() if isinstance(key, bytes) else str(key).upper()
        status[word] = int(value)
    return status


def _chunks(uids: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(uids), size):
        yield uids[start : start + size]
