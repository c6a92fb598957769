"""Which folders of a mailbox a pass reads, and what each is for us (DESIGN §12).

Sweep mode reads INBOX, the Sent folder and any folder the user named; folder mode reads only
its source folder. The Sent folder is found by its SPECIAL-USE flag (RFC 6154) first, then by
the names mail clients give it. Trash and Junk are never read, whatever they are called,
even when named by the user: mail there was thrown away.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from imapclient import IMAPClient

from mailledger.store.models import MailboxAccount, SyncMode

INBOX = "inbox"
SENT = "sent"
EXTRA = "extra"
SOURCE = "source"
PROCESSED = "processed"

# Names of the Sent folder, most usual first, when the server has no SPECIAL-USE.
SENT_NAMES = (
    "Sent",
    "Sent Items",
    "Sent Mail",
    "Sent Messages",
    "[Gmail]/Sent Mail",
    "[Google Mail]/Sent Mail",
    "INBOX.Sent",
    "INBOX/Sent",
    "INBOX.Sent Items",
    "INBOX.Sent Messages",
)
# Flags and names of folders never read (RFC 6154 §2).
NEVER_FLAGS = frozenset({"\\TRASH", "\\JUNK", "\\DRAFTS", "\\ALL", "\\FLAGGED"})
NEVER_NAMES = frozenset(
    {
        "trash",
        "deleted items",
        "deleted messages",
        "bin",
        "junk",
        "junk e-mail",
        "junk email",
        "spam",
        "bulk mail",
        "[gmail]/trash",
        "[gmail]/spam",
        "[gmail]/bin",
        "[gmail]/all mail",
        "drafts",
        "[gmail]/drafts",
    }
)


@dataclass(frozen=True, slots=True)
class Listed:
    """A folder as LIST returned it: its name and flags (upper-case, with backslash)."""

    name: str
    flags: frozenset[str]
    delimiter: str = "/"

    @property
    def selectable(self) -> bool:
        """Whether the folder holds messages (``\\Noselect`` ones are only parents)."""
        return not self.flags & {"\\NOSELECT", "\\NONEXISTENT"}


@dataclass(frozen=True, slots=True)
class Planned:
    """A folder a pass reads, and its role: inbox, sent, extra or source."""

    name: str
    role: str


def list_folders(imap: IMAPClient) -> list[Listed]:
    """LIST every folder, with its flags (SPECIAL-USE flags included where offered)."""
    listed = []
    for flags, delimiter, name in imap.list_folders():
        words = frozenset(_text(flag).upper() for flag in flags)
        listed.append(Listed(_text(name), words, _text(delimiter or b"/")))
    return listed


def never_read(folder: Listed) -> bool:
    """Trash, Junk and their kin: mail the user threw away, never synced."""
    if folder.flags & NEVER_FLAGS:
        return True
    name = folder.name.lower()
    leaf = name.rsplit(folder.delimiter.lower() or "/", 1)[-1] if folder.delimiter else name
    return name in NEVER_NAMES or leaf in NEVER_NAMES


def sent_folder(listed: Sequence[Listed]) -> str | None:
    """The Sent folder: the one flagged ``\\Sent``, else the first usual name there is."""
    for folder in listed:
        if "\\SENT" in folder.flags and folder.selectable:
            return folder.name
    by_name = {folder.name.lower(): folder for folder in listed if folder.selectable}
    for name in SENT_NAMES:
        found = by_name.get(name.lower())
        if found is not None and not never_read(found):
            return found.name
    return None


def plan(listed: Sequence[Listed], account: MailboxAccount) -> list[Planned]:
    """The folders a pass of ``account`` reads, in order, each once."""
    if account.mode is SyncMode.FOLDER:
        return [Planned(account.source_folder, SOURCE)]
    by_name = {folder.name.lower(): folder for folder in listed}
    planned = [Planned("INBOX", INBOX)]
    sent = sent_folder(listed)
    if sent is not None:
        planned.append(Planned(sent, SENT))
    for name in account.extra_folders or []:
        folder = by_name.get(str(name).lower())
        if folder is None or not folder.selectable or never_read(folder):
            continue
        planned.append(Planned(folder.name, EXTRA))
    seen: set[str] = set()
    unique = []
    for item in planned:
        if item.name.lower() not in seen:
            seen.add(item.name.lower())
            unique.append(item)
    return unique


def missing_extras(listed: Sequence[Listed], account: MailboxAccount) -> list[str]:
    """The ``--folder`` names the mailbox has no (readable) folder for, to tell the user."""
    names = {folder.name.lower() for folder in listed if folder.selectable}
    return [str(name) for name in account.extra_folders or [] if str(name).lower() not in names]


def ensure_folder_mode(imap: IMAPClient, account: MailboxAccount) -> None:
    """Create the source and processed folders when missing (folder mode).

    The user drops mail into the first; recorded mail is moved to the second. Subscribed,
    so mail clients that show only subscribed folders show them.
    """
    for name in (account.source_folder, account.processed_folder):
        if not imap.folder_exists(name):
            imap.create_folder(name)
            # A server without subscriptions still works.
            with contextlib.suppress(Exception):
                imap.subscribe_folder(name)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
