"""Folder mode: import what the user drops into one folder, then move it on (DESIGN §12).

Aspire's way: the user drags mail into ``mailledger`` (or a configured name), the pass
records it and moves it to ``mailledger/Processed``. A message is moved only after its
received row is committed (``sync.intake``): a crash between the commit and the move leaves
it in the source folder, and the next pass finds its ``MailboxMessage`` and only moves it.
``UID MOVE`` (RFC 6851) where offered; elsewhere COPY, ``\\Deleted`` and ``UID EXPUNGE``
(RFC 4315), which removes only these messages and never another client's deletions.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from imapclient import IMAPClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from mailledger.store.models import MailboxMessage

READ_ONLY = False
SEARCH_ALL = ["ALL"]


def move(
    imap: IMAPClient, uids: Sequence[int], destination: str, capabilities: frozenset[str]
) -> None:
    """Move ``uids`` of the selected folder to ``destination``."""
    if not uids:
        return
    if "MOVE" in capabilities:
        imap.move(list(uids), destination)
        return
    imap.copy(list(uids), destination)
    imap.add_flags(list(uids), [b"\\Deleted"], silent=True)
    if "UIDPLUS" in capabilities:
        imap.uid_expunge(list(uids))
    else:
        # Without UIDPLUS an EXPUNGE would also remove what another client marked deleted;
        # the messages stay marked and disappear at the user's next expunge.
        pass


def mark_moved(  # noqa: PLR0917 - the key of a MailboxMessage, in its order
    session: Session,
    account_id: int,
    folder: str,
    uidvalidity: int,
    uids: Sequence[int],
    now: datetime,
) -> None:
    """Record that these UIDs were moved, so the folder-mode pass knows its work is done."""
    if not uids:
        return
    session.execute(
        update(MailboxMessage)
        .where(
            MailboxMessage.account_id == account_id,
            MailboxMessage.folder == folder,
            MailboxMessage.uidvalidity == uidvalidity,
            MailboxMessage.uid.in_(list(uids)),
        )
        .values(moved_at=now)
        .execution_options(synchronize_session=False)
    )
