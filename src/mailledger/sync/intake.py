"""Synced mail into the record: through the one intake writer, with the folder's progress.

Each batch is one transaction: the received messages (``store.inbox.add_received``, the
writer SMTP mail goes through, with a ``sync`` route for the account's staff member), one
``MailboxMessage`` per fetched UID, the folder's highest UID and the day's count. A crash
(even ``kill -9``) before the commit leaves nothing of the batch, so the next pass fetches it
again; after the commit the folder's state says it is done. Either way each message is
recorded exactly once. The blobs are written (and fsynced) before the transaction: a blob
without a row is harmless, a row without its blob would not be.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from mailledger.smtp.protocol import new_trace_id
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.inbox import Received, Route, SessionFacts, TraceLine, add_received
from mailledger.store.models import MailboxAccount, MailboxFolder, MailboxMessage, RouteKind
from mailledger.store.precompiled import Cursor, Statement
from mailledger.store.queueids import new_queue_id
from mailledger.sync.messages import Fetched, return_path


class BlobWriteError(OSError):
    """A fetched message's bytes could not be stored; the batch is fetched again later."""


@dataclass(frozen=True, slots=True)
class Linked:
    """A UID whose message is already recorded (same Message-ID, earlier UIDVALIDITY)."""

    uid: int
    message_id: str
    received_message_id: int | None


@dataclass(frozen=True, slots=True)
class Where:
    """The account, folder and UIDVALIDITY a batch was read from, and how it was reached."""

    account: MailboxAccount
    folder: str
    uidvalidity: int
    tls: str  # the cipher, "" without TLS


def recorded_uids(
    session: Session, account_id: int, folder: str, uidvalidity: int, uids: Sequence[int]
) -> set[int]:
    """Which of ``uids`` already have their ``MailboxMessage`` (recorded by an earlier pass)."""
    if not uids:
        return set()
    found = session.scalars(
        select(MailboxMessage.uid).where(
            MailboxMessage.account_id == account_id,
            MailboxMessage.folder == folder,
            MailboxMessage.uidvalidity == uidvalidity,
            MailboxMessage.uid.in_(list(uids)),
        )
    )
    return {int(uid) for uid in found}


def known_message_ids(
    session: Session, account_id: int, folder: str, message_ids: Sequence[str]
) -> dict[str, int | None]:
    """Message-IDs already fetched from this folder (any UIDVALIDITY): their received rows.

    After a UIDVALIDITY change every UID is new, but the messages are not: matching them by
    Message-ID keeps them from being recorded twice (the issue's "0 duplicates").
    """
    wanted = sorted({mid for mid in message_ids if mid})
    if not wanted:
        return {}
    rows = session.execute(
        select(MailboxMessage.message_id_header, MailboxMessage.received_message_id)
        .where(
            MailboxMessage.account_id == account_id,
            MailboxMessage.folder == folder,
            MailboxMessage.message_id_header.in_(wanted),
        )
        .order_by(MailboxMessage.id)
    )
    known: dict[str, int | None] = {}
    for message_id, received in rows:
        known.setdefault(message_id, received)
    return known


def store_blobs(blobs: BlobBackend, messages: Sequence[Fetched]) -> list[str]:
    """Write the messages' bytes durably; their digests. Raises when any could not be."""
    stored = blobs.put_many([message.raw for message in messages])
    digests = []
    for result in stored:
        if not isinstance(result, str):
            raise BlobWriteError(f"a fetched message could not be stored: {result}")
        digests.append(result)
    return digests


# The batch's MailboxMessage rows, on the driver's cursor (``store.precompiled``) like the
# received messages' own: the ORM's bulk insert cost more per row than the rows themselves.
_MAILBOX_MESSAGE_INSERT = Statement(insert(MailboxMessage))


def record_batch(
    session: Session,
    where: Where,
    messages: Sequence[Fetched],
    digests: Sequence[str],
    linked: Sequence[Linked],
) -> list[int]:
    """Add the batch's received messages and ``MailboxMessage`` rows, in the caller's transaction.

    Returns the received message ids, in the order of ``messages``.
    """
    account = where.account
    fetched = _Fetching.of(where)
    received = [
        fetched.received(message, digest) for message, digest in zip(messages, digests, strict=True)
    ]
    ids = add_received(session, received)
    uids = [message.uid for message in messages] + [link.uid for link in linked]
    message_ids = [message.message_id for message in messages]
    message_ids += [link.message_id for link in linked]
    received_ids: list[int | None] = [*ids, *(link.received_message_id for link in linked)]
    rows = [
        {
            "account_id": account.id,
            "folder": where.folder,
            "uidvalidity": where.uidvalidity,
            "uid": uid,
            "message_id_header": message_id[:998],
            "received_message_id": received_id,
        }
        for uid, message_id, received_id in zip(uids, message_ids, received_ids, strict=True)
    ]
    if rows:
        with Cursor.of(session) as cursor:
            cursor.many(_MAILBOX_MESSAGE_INSERT, rows)
    return ids


def advance(folder: MailboxFolder, uidvalidity: int, highest_uid: int, now: datetime) -> None:
    """The folder's progress after a batch: everything up to ``highest_uid`` is done."""
    if folder.uidvalidity != uidvalidity:
        folder.uidvalidity = uidvalidity
        folder.highest_uid = 0
    folder.highest_uid = max(folder.highest_uid, highest_uid)
    folder.checked_at = now


@dataclass(frozen=True, slots=True)
class _Fetching:
    """What every received message of one batch shares: where it came from and its route."""

    where: Where
    mailbox: str
    peer: str
    routes: tuple[Route, ...]
    source: str  # the trace detail's "fetched from mailbox …" opening
    server: str  # and its closing: the server and the cipher

    @classmethod
    def of(cls, where: Where) -> _Fetching:
        account = where.account
        mailbox = account.login.lower()
        return cls(
            where=where,
            mailbox=mailbox,
            peer=f"{account.host}:{account.port}",
            routes=(Route(account.tenant_id, RouteKind.SYNC, account.staff_id, mailbox),),
            source=f"fetched from mailbox {mailbox} (account {account.id}) folder {where.folder!r}",
            server=f", imap {account.host}:{account.port}"
            + (f", tls {where.tls}" if where.tls else ""),
        )

    def received(self, message: Fetched, digest: str) -> Received:
        """The received message of one fetched message whose bytes are stored as ``digest``."""
        where = self.where
        facts = SessionFacts(
            peer=self.peer,
            helo="",
            mail_from=return_path(message.raw),
            rcpt_to=[self.mailbox],
            tls=where.tls,
            trace_id=new_trace_id(),
        )
        detail = (
            f"{self.source} uid {message.uid} uidvalidity {where.uidvalidity}, "
            f"{len(message.raw)} bytes"
            + (
                f" (headers only: {message.size} bytes in the mailbox)"
                if message.headers_only
                else ""
            )
            + self.server
        )
        return Received(
            queue_id=new_queue_id(),
            facts=facts,
            routes=self.routes,
            blob=digest,
            size=len(message.raw),
            first=TraceLine("intake", "fetched", detail),
            message_id=message.message_id,
            mailbox_account_id=where.account.id,
        )
