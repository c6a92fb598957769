"""Sweep mode: which messages of a folder a pass takes, touching nothing (DESIGN §12).

A sweep reads INBOX, Sent and the named folders from the account's ``since`` moment on,
read-only: the folder is opened with EXAMINE and bodies are fetched with ``BODY.PEEK[]``, so
no ``\\Seen`` flag is set and nothing is moved (RFC 3501 §6.3.2, §6.4.5). The mailbox looks
exactly as it did before.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

READ_ONLY = True


def search_criteria(highest_uid: int, since: datetime) -> list[Any]:
    """UIDs after the last one taken, received on or after ``since``'s day.

    SEARCH SINCE compares dates only (RFC 3501 §6.4.4); :func:`in_window` then compares the
    INTERNALDATE to the moment. ``UID n:*`` always matches the last message, even below
    ``n`` (RFC 3501 §6.4.8), so the caller drops UIDs at or below ``highest_uid``.
    """
    return ["UID", f"{highest_uid + 1}:*", "SINCE", as_utc(since).date()]


def in_window(internal_date: datetime | None, since: datetime) -> bool:
    """Whether a message the server received at ``internal_date`` is in the sync window."""
    if internal_date is None:
        return True  # a server that gives no date: take it rather than lose it
    return as_utc(internal_date) >= as_utc(since)


def as_utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC time (the database may hand back naive UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
