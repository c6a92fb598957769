"""Connecting a calendar: find the collection, check the login, then store the account.

The network part of ``calendar add`` and ``calendar test``: the store checks and keeps what
was asked (``store.calendars``), this module talks to the server first, outside any
transaction, so a slow server never holds the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from mailledger.accounts.problems import SyncProblem
from mailledger.calendar.connection import (
    CalendarConnection,
    Found,
    NoSyncTokens,
    discover,
    open_client,
)
from mailledger.calendar.passes import CalendarSyncer, window
from mailledger.calendar.problems import describe
from mailledger.config import Settings
from mailledger.store import calendars
from mailledger.store.models import CalendarAccount, CalendarKind, utcnow
from mailledger.store.secretbox import SecretBox


def connect(
    sessions: sessionmaker[Session],
    box: SecretBox,
    request: calendars.CalendarRequest,
    settings: Settings,
    now: datetime | None = None,
) -> CalendarAccount:
    """Check ``request``, find its calendar on the server, and add the account.

    Raises ``calendars.CalendarAccountError`` for what the request got wrong and
    :class:`SyncProblem` (in words) for what the server said. An OAuth calendar
    (``request.oauth``) is added at once, waiting for its sign-in (the server cannot be
    asked anything before it): the caller signs in, then :func:`find_signed_in` finds it.
    """
    with sessions() as session:
        calendars.check_request(session, request)
    if request.oauth is not None:
        with sessions.begin() as session:
            account = calendars.add_account(
                session, box, request, calendar_url=calendars.check_url(request.url),
                calendar_name=request.calendar, now=now or utcnow(),
            )  # fmt: skip
            session.flush()
            session.expunge(account)
        return account
    client = open_client(
        request.url,
        request.login,
        password=request.password,
        timeout=settings.calendar.timeout_seconds,
    )
    probe = CalendarAccount(
        id=0, url=request.url, calendar_url=request.url, login=request.login,
        kind=CalendarKind.CALDAV,
    )  # fmt: skip
    try:
        found = discover(client, request.url, request.calendar)
    except Exception as exc:  # noqa: BLE001 - said in words to the person adding it
        raise describe(exc, probe) from None
    with sessions.begin() as session:
        account = calendars.add_account(
            session,
            box,
            request,
            calendar_url=found.url,
            calendar_name=found.name,
            now=now or utcnow(),
        )
        session.flush()
        session.expunge(account)
    return account


def find_signed_in(
    sessions: sessionmaker[Session],
    box: SecretBox,
    settings: Settings,
    account_id: int,
    calendar: str = "",
) -> Found:
    """After an OAuth calendar's first sign-in: find its calendar with the new token.

    Google's CalDAV address names the calendar (``…/caldav/v2/CALENDAR_ID/events/``) and is
    used as it is; a server or principal address is searched as for passwords, ``calendar``
    picking one. Raises :class:`SyncProblem` in words.
    """
    syncer = CalendarSyncer(sessions, settings, box)
    with sessions() as session:
        account = calendars.find_account(session, account_id)
        session.expunge(account)
    try:
        client = open_client(
            account.url, account.login, bearer=syncer.bearer(account_id),
            timeout=settings.calendar.timeout_seconds,
        )  # fmt: skip
        found = discover(client, account.url, calendar)
    except SyncProblem:
        raise
    except Exception as exc:  # noqa: BLE001 - said in words to the person adding it
        raise describe(exc, account) from None
    with sessions.begin() as session:
        calendars.set_calendar(
            session, calendars.find_account(session, account_id),
            calendar_url=found.url, calendar_name=found.name,
        )  # fmt: skip
    return found


@dataclass(frozen=True, slots=True)
class TestReport:
    """What ``calendar test`` found: the calendar, how it syncs, and the window's events."""

    calendar: Found
    incremental: str  # sync-token | ctag | none
    objects_in_window: int


def test(
    sessions: sessionmaker[Session], box: SecretBox, settings: Settings, account_id: int
) -> TestReport:
    """Log in and look at the calendar; nothing is read into the CRM or changed."""
    with sessions() as session:
        account = calendars.find_account(session, account_id)
        session.expunge(account)
    try:
        connection: CalendarConnection = CalendarSyncer(sessions, settings, box).connect(account)
        ctag, token = connection.collection_state()
        incremental = "sync-token" if token else ("ctag" if ctag else "none")
        if token:
            try:
                connection.sync_collection(token)
            except NoSyncTokens:
                incremental = "ctag" if ctag else "none"
        start, end = window(settings, utcnow())
        objects = len(connection.window_etags(start, end))
    except SyncProblem:
        raise
    except Exception as exc:  # noqa: BLE001 - said in words
        raise describe(exc, account) from None
    return TestReport(Found(account.calendar_url, account.calendar_name), incremental, objects)
