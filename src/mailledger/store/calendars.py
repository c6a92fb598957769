"""Calendar accounts and their events (DESIGN §13): one set of functions behind CLI and API.

Accounts: add (after the calendar layer found the collection), find, list, show, the error
log, re-connect and remove. Events: the CRM's own appointments are added, changed and
deleted here and marked ``pending`` until the next pass writes them to the calendar; the
rules users rely on are written once, here: an event whose origin is the calendar is
read-only in the CRM, and the CRM never makes a recurring event. Who sees what: a private
calendar shows its owner and the colleagues it is shared with everything, and everyone
else a busy block (start, end, "busy": no title, attendees, place or description).

Passwords are sealed with the ``SecretBox`` before they reach a row; no function here
returns a secret.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from mailledger.mail.addresses import AddressError, parse_address
from mailledger.store.accountstatus import reset
from mailledger.store.directory import DirectoryError, find_staff
from mailledger.store.models import (
    AccountStatus,
    Activity,
    CalendarAccount,
    CalendarError,
    CalendarEvent,
    CalendarKind,
    CalendarPrivacy,
    CalendarViewer,
    EventOrigin,
    Staff,
    StaffAddress,
    Tenant,
)
from mailledger.store.queries import NotFoundError
from mailledger.store.secretbox import SecretBox

MAX_PASSWORD_CHARS: Final = 1024
MAX_SUMMARY_CHARS: Final = 1000
MAX_TEXT_CHARS: Final = 20000
MAX_ATTENDEES: Final = 100
# The longest appointment the CRM makes (a conference, not a season).
MAX_EVENT_DAYS: Final = 14
_URL = re.compile(r"^https?://[^\s/?#]+(?:/[^\s]*)?$", re.IGNORECASE)


class CalendarAccountError(DirectoryError):
    """A calendar account request that cannot be done; the message says what to change."""


class EventError(DirectoryError):
    """An event request that cannot be done (bad times, no calendar); says what to change."""


class ReadOnlyEventError(EventError):
    """The CRM may not change this event: it was made in the calendar (Aspire's rule)."""


@dataclass
class CalendarRequest:
    """What ``calendar add`` (or the API) asks for, before it is checked."""

    tenant: Tenant
    username: str
    url: str
    login: str
    password: str | None = field(default=None, repr=False)
    oauth: CalendarKind | None = None  # GOOGLE
    privacy: CalendarPrivacy = CalendarPrivacy.PUBLIC
    share_with: list[str] = field(default_factory=list)
    calendar: str = ""  # --calendar NAME


def check_url(url: str) -> str:
    """A CalDAV address as given, if it is an http(s) URL."""
    text = url.strip()
    if not _URL.match(text) or len(text) > 2000:
        raise CalendarAccountError(
            f"{url!r} is not a CalDAV address: give the calendar's URL, or the server's "
            "(https://host/…)"
        )
    return text


def check_password(password: str | None) -> str:
    """A password as read from its file (without its final newline), if it is one."""
    if password is None or not password.strip():
        raise CalendarAccountError("the password is empty: put it in the --password-file")
    if len(password) > MAX_PASSWORD_CHARS or any(c in password for c in "\r\n\x00"):
        raise CalendarAccountError("the password file must hold one line: the password")
    return password


def _check_login(login: str) -> str:
    text = login.strip()
    if not text or len(text) > 320 or any(ord(c) < 33 for c in text):
        raise CalendarAccountError(f"{login!r} is not a login (the calendar's user name)")
    return text


def _pairs(result: Any) -> dict[Any, Any]:
    """A two-column result as a dict."""
    return {row[0]: row[1] for row in result}


def _time(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


# --- accounts -----------------------------------------------------------------------------------


def check_request(session: Session, request: CalendarRequest) -> Staff:
    """Check what can be checked without the network; returns the staff member."""
    staff = find_staff(session, request.tenant, request.username)
    check_url(request.url)
    _check_login(request.login)
    if request.oauth is None:
        check_password(request.password)
    elif request.password is not None:
        raise CalendarAccountError("an OAuth calendar signs in with its provider: no password")
    for name in request.share_with:
        find_staff(session, request.tenant, name)
    return staff


def add_account(
    session: Session,
    box: SecretBox,
    request: CalendarRequest,
    *,
    calendar_url: str,
    calendar_name: str,
    now: datetime,
) -> CalendarAccount:
    """Add the account for the calendar discovery found at ``calendar_url``: ``pending``."""
    staff = check_request(session, request)
    login = _check_login(request.login)
    duplicate = session.scalars(
        select(CalendarAccount.id).where(
            CalendarAccount.tenant_id == request.tenant.id,
            CalendarAccount.calendar_url == calendar_url,
        )
    ).first()
    if duplicate is not None:
        raise CalendarAccountError(
            f"{calendar_url} is already calendar account {duplicate}: re-connect it with "
            f"`mailledger calendar reconnect {duplicate}` instead"
        )
    kind = request.oauth or CalendarKind.CALDAV
    secret = box.seal(check_password(request.password)) if request.oauth is None else ""
    # An OAuth calendar waits for its sign-in: ``reconnect``, quietly (nobody to tell yet).
    status = AccountStatus.PENDING if request.oauth is None else AccountStatus.RECONNECT
    waiting = "" if request.oauth is None else f"waiting for {kind.value.title()} sign-in"
    account = CalendarAccount(
        tenant_id=request.tenant.id,
        staff_id=staff.id,
        kind=kind,
        url=check_url(request.url),
        calendar_url=calendar_url,
        calendar_name=calendar_name[:255],
        login=login,
        secret=secret,
        access_token="",
        privacy=CalendarPrivacy(request.privacy),
        sync_token="",
        ctag="",
        status=status,
        status_changed_at=now,
        announced_status=status.value,
        mailed_status="" if request.oauth is None else status.value,
        last_error=waiting,
        failures=0,
        events_synced=0,
        created_at=now,
    )
    session.add(account)
    session.flush()
    set_viewers(session, account, request.share_with)
    return account


def set_calendar(
    session: Session, account: CalendarAccount, *, calendar_url: str, calendar_name: str
) -> None:
    """The calendar an OAuth account's discovery found once signed in (it needs the token)."""
    duplicate = session.scalars(
        select(CalendarAccount.id).where(
            CalendarAccount.tenant_id == account.tenant_id,
            CalendarAccount.calendar_url == calendar_url,
            CalendarAccount.id != account.id,
        )
    ).first()
    if duplicate is not None:
        raise CalendarAccountError(
            f"{calendar_url} is already calendar account {duplicate}: re-connect it with "
            f"`mailledger calendar reconnect {duplicate}` instead"
        )
    account.calendar_url = calendar_url
    account.calendar_name = calendar_name[:255]
    session.flush()


def find_account(
    session: Session, account_id: int, tenant_id: int | None = None
) -> CalendarAccount:
    """An account by id; with ``tenant_id``, another tenant's account is not found either."""
    account = session.get(CalendarAccount, account_id)
    if account is None or (tenant_id is not None and account.tenant_id != tenant_id):
        raise NotFoundError(f"no calendar account {account_id}")
    return account


def account_of_staff(session: Session, staff: Staff) -> CalendarAccount:
    """The staff member's calendar account the CRM writes appointments to (the oldest)."""
    account = session.scalars(
        select(CalendarAccount)
        .where(CalendarAccount.staff_id == staff.id)
        .order_by(CalendarAccount.id)
        .limit(1)
    ).first()
    if account is None:
        raise EventError(
            f"{staff.username} has no calendar connected: `mailledger calendar add` first"
        )
    return account


def set_viewers(session: Session, account: CalendarAccount, usernames: list[str]) -> list[str]:
    """The colleagues who see a private calendar's details (`--share-with`)."""
    tenant = session.get_one(Tenant, account.tenant_id)
    chosen = [find_staff(session, tenant, name) for name in dict.fromkeys(usernames)]
    session.execute(delete(CalendarViewer).where(CalendarViewer.account_id == account.id))
    for staff in chosen:
        session.add(CalendarViewer(account_id=account.id, staff_id=staff.id))
    session.flush()
    return [s.username for s in chosen]


def account_dicts(session: Session, accounts: list[CalendarAccount]) -> list[dict[str, Any]]:
    """Accounts as ``calendar list --json``, ``show`` and the API show them; never a secret."""
    if not accounts:
        return []
    ids = [a.id for a in accounts]
    tenants = _pairs(
        session.execute(
            select(Tenant.id, Tenant.name).where(Tenant.id.in_({a.tenant_id for a in accounts}))
        )
    )
    viewer_rows = session.execute(
        select(CalendarViewer.account_id, CalendarViewer.staff_id).where(
            CalendarViewer.account_id.in_(ids)
        )
    ).all()
    staff_ids = {a.staff_id for a in accounts} | {s for _, s in viewer_rows}
    usernames = _pairs(
        session.execute(select(Staff.id, Staff.username).where(Staff.id.in_(staff_ids)))
    )
    viewers: dict[int, list[str]] = {}
    for account_id, staff_id in viewer_rows:
        viewers.setdefault(account_id, []).append(usernames.get(staff_id, "?"))
    errors = _pairs(
        session.execute(
            select(CalendarError.account_id, func.count())
            .where(CalendarError.account_id.in_(ids))
            .group_by(CalendarError.account_id)
        )
    )
    events = _pairs(
        session.execute(
            select(CalendarEvent.account_id, func.count())
            .where(CalendarEvent.account_id.in_(ids), CalendarEvent.deleted_at.is_(None))
            .group_by(CalendarEvent.account_id)
        )
    )
    return [
        {
            "id": a.id,
            "tenant": tenants.get(a.tenant_id),
            "staff": usernames.get(a.staff_id),
            "kind": a.kind.value,
            "status": a.status.value,
            "login": a.login,
            "url": a.url,
            "calendar_url": a.calendar_url,
            "calendar": a.calendar_name,
            "privacy": a.privacy.value,
            "share_with": sorted(viewers.get(a.id, [])),
            "incremental": "sync-token" if a.sync_token else ("ctag" if a.ctag else "-"),
            "last_sync": _time(a.last_sync_at),
            "last_error": a.last_error,
            "status_changed_at": _time(a.status_changed_at),
            "retry_at": _time(a.retry_at),
            "failures": a.failures,
            "events": int(events.get(a.id, 0)),
            "errors": int(errors.get(a.id, 0)),
            "created_at": _time(a.created_at),
        }
        for a in accounts
    ]


def list_accounts(session: Session, tenant: Tenant | None = None) -> list[dict[str, Any]]:
    """Accounts, oldest first: all, or one tenant's."""
    statement = select(CalendarAccount).order_by(CalendarAccount.id)
    if tenant is not None:
        statement = statement.where(CalendarAccount.tenant_id == tenant.id)
    return account_dicts(session, list(session.scalars(statement)))


def account_errors(
    session: Session, account: CalendarAccount, limit: int = 100
) -> list[dict[str, Any]]:
    """The account's error log, newest first: when, the status it led to, what, and the fix."""
    rows = session.scalars(
        select(CalendarError)
        .where(CalendarError.account_id == account.id)
        .order_by(CalendarError.at.desc(), CalendarError.id.desc())
        .limit(limit)
    )
    return [
        {"at": _time(row.at), "status": row.status, "what": row.what, "fix": row.fix}
        for row in rows
    ]


def reconnect_password(
    session: Session, box: SecretBox, account: CalendarAccount, password: str, now: datetime
) -> None:
    """A new password: stored sealed, and the account is tried again."""
    if account.kind is not CalendarKind.CALDAV:
        raise CalendarAccountError(
            f"calendar account {account.id} signs in with Google: no password, just sign in "
            f"again (`mailledger calendar reconnect {account.id}`)"
        )
    account.secret = box.seal(check_password(password))
    reset(session, account, now)


def retry_now(session: Session, account: CalendarAccount, now: datetime) -> None:
    """Make the account due now (``calendar sync``); a ``reconnect`` one stays put."""
    if account.status is AccountStatus.RECONNECT:
        raise CalendarAccountError(
            f"calendar account {account.id} needs re-connecting first: "
            f"{account.last_error or 'sign in'}"
        )
    account.retry_at = None
    if account.status is AccountStatus.CONNECTION:
        reset(session, account, now)
    session.flush()


def remove_account(session: Session, account: CalendarAccount, *, keep_history: bool) -> int:
    """Disconnect the calendar; returns how many meeting activities were removed.

    With ``keep_history`` the meetings stay on the timelines; otherwise the meetings only
    this account's events made are deleted too.
    """
    removed = 0
    if not keep_history:
        mine = select(CalendarEvent.activity_id).where(
            CalendarEvent.account_id == account.id, CalendarEvent.activity_id.is_not(None)
        )
        others = select(CalendarEvent.activity_id).where(
            CalendarEvent.account_id != account.id, CalendarEvent.activity_id.is_not(None)
        )
        ids = list(
            session.scalars(
                select(Activity.id).where(
                    Activity.id.in_(mine), Activity.id.not_in(others), Activity.kind == "meeting"
                )
            )
        )
        if ids:
            session.execute(delete(Activity).where(Activity.id.in_(ids)))
        removed = len(ids)
    session.delete(account)
    session.flush()
    return removed


# --- events: the CRM's side ---------------------------------------------------------------------


@dataclass
class EventInput:
    """An appointment as the CLI or the API gives it, before it is checked."""

    summary: str
    start: datetime
    end: datetime
    attendees: list[str] = field(default_factory=list)
    description: str = ""
    location: str = ""
    all_day: bool = False
    tzid: str = ""
    recurrence: str = ""  # an RRULE asked for: always refused (recurring events are made
    # in the calendar)


def _check_event(event: EventInput) -> list[str]:
    if event.recurrence:
        raise EventError(
            "the CRM does not make recurring appointments: make the series in the calendar "
            "app; it appears here after the next sync"
        )
    if not event.summary.strip() or len(event.summary) > MAX_SUMMARY_CHARS:
        raise EventError(f"give the appointment a title (1 to {MAX_SUMMARY_CHARS} characters)")
    if event.start.tzinfo is None or event.end.tzinfo is None:
        raise EventError("give start and end with a UTC offset (2027-01-05T09:00:00+01:00)")
    if event.end <= event.start:
        raise EventError("the appointment must end after it starts")
    if event.end - event.start > timedelta(days=MAX_EVENT_DAYS):
        raise EventError(f"an appointment made in the CRM lasts at most {MAX_EVENT_DAYS} days")
    if len(event.description) > MAX_TEXT_CHARS or len(event.location) > MAX_SUMMARY_CHARS:
        raise EventError("the description or the place is too long")
    if len(event.attendees) > MAX_ATTENDEES:
        raise EventError(f"at most {MAX_ATTENDEES} attendees")
    if event.tzid:
        try:
            ZoneInfo(event.tzid)
        except (ZoneInfoNotFoundError, ValueError):
            raise EventError(f"{event.tzid!r} is not a time zone (say Europe/Berlin)") from None
    addresses = []
    for value in event.attendees:
        try:
            addresses.append(parse_address(value).address.lower())
        except AddressError:
            raise EventError(f"{value!r} is not an attendee's email address") from None
    return list(dict.fromkeys(addresses))


def _due_now(session: Session, account_id: int) -> None:
    """A CRM change waits for a pass: make a healthy account due now (a failing one keeps
    its back-off; the change is written when it recovers)."""
    account = session.get_one(CalendarAccount, account_id)
    if account.status in (AccountStatus.ENABLED, AccountStatus.PENDING):
        account.retry_at = None


def _organizer(session: Session, staff_id: int) -> str:
    staff = session.get_one(Staff, staff_id)
    return staff.primary_address.lower()


def add_event(
    session: Session, account: CalendarAccount, event: EventInput, now: datetime
) -> CalendarEvent:
    """A new appointment made in the CRM: stored now, written to the calendar next pass."""
    attendees = _check_event(event)
    uid = f"{secrets.token_hex(16)}@mailledger"
    row = CalendarEvent(
        account_id=account.id,
        tenant_id=account.tenant_id,
        href=f"{_calendar_path(account)}{uid.replace('@', '-')}.ics",
        etag="",
        uid=uid,
        recurrence_id="",
        origin=EventOrigin.CRM,
        recurring=False,
        summary=event.summary.strip(),
        description=event.description,
        location=event.location,
        start_at=event.start.astimezone(UTC),
        end_at=event.end.astimezone(UTC),
        tzid=event.tzid,
        all_day=event.all_day,
        organizer=_organizer(session, account.staff_id),
        attendees=[{"address": a, "name": "", "status": "needs-action"} for a in attendees],
        status="confirmed",
        pending="create",
        conflict="",
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    _due_now(session, account.id)
    session.flush()
    return row


def _calendar_path(account: CalendarAccount) -> str:
    path = urlsplit(account.calendar_url).path
    return path if path.endswith("/") else path + "/"


def _writable(event: CalendarEvent) -> None:
    if event.deleted_at is not None:
        raise NotFoundError(f"no event {event.id}")
    if event.origin is EventOrigin.CALENDAR:
        raise ReadOnlyEventError(
            f"event {event.id} was made in the calendar, so it is read-only here: change it "
            "in the calendar app"
        )


def update_event(
    session: Session, event: CalendarEvent, changes: EventInput, now: datetime
) -> CalendarEvent:
    """Change a CRM-made appointment; written to the calendar (``If-Match``) next pass."""
    _writable(event)
    attendees = _check_event(changes)
    event.summary = changes.summary.strip()
    event.description = changes.description
    event.location = changes.location
    event.start_at = changes.start.astimezone(UTC)
    event.end_at = changes.end.astimezone(UTC)
    event.tzid = changes.tzid
    event.all_day = changes.all_day
    event.attendees = [{"address": a, "name": "", "status": "needs-action"} for a in attendees]
    event.pending = "create" if event.pending == "create" else "update"
    event.conflict = ""
    event.updated_at = now
    _due_now(session, event.account_id)
    session.flush()
    return event


def delete_event(session: Session, event: CalendarEvent, now: datetime) -> None:
    """Delete a CRM-made appointment here now, and from the calendar next pass.

    Deleted here, it never comes back: a pass that meets it again (before its ``DELETE``
    reached the server) keeps it deleted.
    """
    _writable(event)
    event.deleted_at = now
    event.updated_at = now
    event.pending = "" if event.pending == "create" else "delete"
    _due_now(session, event.account_id)
    session.flush()


def find_event(session: Session, event_id: int, tenant_id: int | None = None) -> CalendarEvent:
    """An event by id, of one tenant when ``tenant_id`` is given."""
    event = session.get(CalendarEvent, event_id)
    if event is None or (tenant_id is not None and event.tenant_id != tenant_id):
        raise NotFoundError(f"no event {event_id}")
    return event


# --- events: who sees what --------------------------------------------------------------------


def sees_details(account: CalendarAccount, viewer: Staff | None, shared_with: set[int]) -> bool:
    """Whether ``viewer`` sees the details of ``account``'s events (privacy, §13)."""
    if account.privacy is CalendarPrivacy.PUBLIC:
        return True
    if viewer is None:
        return False
    return viewer.id == account.staff_id or viewer.id in shared_with


def event_dicts(
    session: Session, events: list[CalendarEvent], viewer: Staff | None
) -> list[dict[str, Any]]:
    """Events as the CLI and the API show them; a private calendar's to others: busy blocks."""
    if not events:
        return []
    account_ids = {e.account_id for e in events}
    accounts = {
        a.id: a
        for a in session.scalars(select(CalendarAccount).where(CalendarAccount.id.in_(account_ids)))
    }
    shared: dict[int, set[int]] = {}
    for account_id, staff_id in session.execute(
        select(CalendarViewer.account_id, CalendarViewer.staff_id).where(
            CalendarViewer.account_id.in_(account_ids)
        )
    ):
        shared.setdefault(account_id, set()).add(staff_id)
    owners = _pairs(
        session.execute(
            select(Staff.id, Staff.username).where(
                Staff.id.in_({a.staff_id for a in accounts.values()})
            )
        )
    )
    rows = []
    for event in events:
        account = accounts[event.account_id]
        base: dict[str, Any] = {
            "id": event.id,
            "calendar_account": account.id,
            "staff": owners.get(account.staff_id),
            "start": _time(event.start_at),
            "end": _time(event.end_at),
            "all_day": event.all_day,
            "busy": True,
        }
        if not sees_details(account, viewer, shared.get(account.id, set())):
            base.update({"private": True, "summary": "Busy"})
            rows.append(base)
            continue
        base.update(
            {
                "private": False,
                "summary": event.summary,
                "description": event.description,
                "location": event.location,
                "tzid": event.tzid,
                "uid": event.uid,
                "recurrence_id": event.recurrence_id,
                "recurring": event.recurring,
                "origin": event.origin.value,
                "read_only": event.origin is EventOrigin.CALENDAR,
                "organizer": event.organizer,
                "attendees": [a.get("address", "") for a in event.attendees],
                "status": event.status,
                "synced": event.pending == "",
                "conflict": event.conflict,
                "activity": event.activity_id,
            }
        )
        rows.append(base)
    return rows


def list_events(
    session: Session,
    tenant: Tenant,
    *,
    viewer: Staff | None,
    staff: Staff | None = None,
    account: CalendarAccount | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 500,
) -> list[dict[str, Any]]:
    """The tenant's events (one staff member's, one account's), by start, as ``viewer`` sees."""
    statement = (
        select(CalendarEvent)
        .where(CalendarEvent.tenant_id == tenant.id, CalendarEvent.deleted_at.is_(None))
        .order_by(CalendarEvent.start_at, CalendarEvent.id)
        .limit(limit)
    )
    if staff is not None:
        statement = statement.where(
            CalendarEvent.account_id.in_(
                select(CalendarAccount.id).where(CalendarAccount.staff_id == staff.id)
            )
        )
    if account is not None:
        statement = statement.where(CalendarEvent.account_id == account.id)
    if start is not None:
        statement = statement.where(CalendarEvent.end_at > start)
    if end is not None:
        statement = statement.where(CalendarEvent.start_at < end)
    return event_dicts(session, list(session.scalars(statement)), viewer)


def staff_by_address(session: Session, tenant_id: int, address: str) -> int | None:
    """The staff member of the tenant with this own address, if any."""
    return session.scalar(
        select(StaffAddress.staff_id).where(
            StaffAddress.tenant_id == tenant_id, func.lower(StaffAddress.address) == address
        )
    )


def conflicts(session: Session, account: CalendarAccount) -> int:
    """How many of the account's CRM changes were refused because the calendar changed first."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(CalendarEvent)
            .where(CalendarEvent.account_id == account.id, CalendarEvent.conflict != "")
        )
        or 0
    )


__all__ = [
    "CalendarAccountError",
    "CalendarRequest",
    "EventError",
    "EventInput",
    "ReadOnlyEventError",
    "account_dicts",
    "account_errors",
    "account_of_staff",
    "add_account",
    "add_event",
    "check_request",
    "delete_event",
    "event_dicts",
    "find_account",
    "find_event",
    "list_accounts",
    "list_events",
    "reconnect_password",
    "remove_account",
    "retry_now",
    "set_viewers",
    "update_event",
]
