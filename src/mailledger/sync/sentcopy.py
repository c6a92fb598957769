"""Sent copies: mail a staff member sends through our relay also lands in their Sent folder.

Aspire and Assentir promise it: a mail client shows what the CRM sent for its user. Sync
reads what was submitted (the received messages the relay stored for the staff member's
login, ``submitted_by_staff_id``; sync never imports the relay) and APPENDs each, ``\\Seen``,
to the Sent folder of their connected account. The account's ``sent_copied_through`` is the
cursor: the first look starts from the newest message, so history is not appended.

A crash between an APPEND and the cursor's commit appends that one message again at the next
look; the sweep reads both copies as the same email (one Message-ID, one activity), so the
record is unharmed; only the mailbox shows it twice. Committing after every APPEND keeps that
to one message.
"""

from __future__ import annotations

from imapclient import IMAPClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.logs import get_logger
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.models import MailboxAccount, ReceivedMessage
from mailledger.sync.folders import list_folders, sent_folder
from mailledger.sync.sweep import as_utc

log = get_logger(__name__)

SEEN = "\\Seen"
MAX_PER_LOOK = 200


def start_cursor(session: Session, account: MailboxAccount) -> int:
    """Where an account's sent copies begin: after the newest message stored so far."""
    if account.sent_copied_through is None:
        newest = session.scalar(select(func.max(ReceivedMessage.id)))
        account.sent_copied_through = int(newest or 0)
    return account.sent_copied_through


def waiting(session: Session, account: MailboxAccount, limit: int = MAX_PER_LOOK) -> list[int]:
    """Ids of messages the account's staff member submitted that are not appended yet."""
    if account.shared:
        return []  # a shared mailbox is not the sender's own
    cursor = start_cursor(session, account)
    return list(
        session.scalars(
            select(ReceivedMessage.id)
            .where(
                ReceivedMessage.submitted_by_staff_id == account.staff_id,
                ReceivedMessage.id > cursor,
            )
            .order_by(ReceivedMessage.id)
            .limit(limit)
        )
    )


def any_waiting(sessions: sessionmaker[Session], account_id: int) -> bool:
    """Whether the account has sent copies to append (first look: sets the cursor)."""
    with sessions.begin() as session:
        account = session.get_one(MailboxAccount, account_id)
        return bool(waiting(session, account, 1))


def append_sent_copies(
    sessions: sessionmaker[Session], blobs: BlobBackend, account_id: int, imap: IMAPClient
) -> int:
    """APPEND the waiting sent copies to the Sent folder; how many were appended."""
    with sessions.begin() as session:
        account = session.get_one(MailboxAccount, account_id)
        ids = waiting(session, account)
    if not ids:
        return 0
    sent = sent_folder(list_folders(imap))
    if sent is None:
        log.warning("no Sent folder for sent copies", account_id=account_id)
        return 0
    appended = 0
    for message_id in ids:
        with sessions() as session:
            message = session.get_one(ReceivedMessage, message_id)
            blob, when = message.blob, message.received_at
        raw = blobs.get(blob)
        imap.append(sent, raw, flags=[SEEN], msg_time=as_utc(when))
        with sessions.begin() as session:
            account = session.get_one(MailboxAccount, account_id)
            account.sent_copied_through = message_id
        appended += 1
    log.info("sent copies appended", account_id=account_id, count=appended, folder=sent)
    return appended
