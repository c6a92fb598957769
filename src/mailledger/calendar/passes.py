"""One pass of one calendar account: the CRM's changes out, the calendar's changes in.

A pass holds the account's lease (``claimed_by``/``claim_expires_at``, renewed after every
batch), so two nodes, or a node and ``mailledger calendar sync``, never pass one account at
once, and an account whose pass died is taken over when its lease lapses.

**Out** (the CRM's appointments marked ``pending``), one object per transaction: a new one
is written with ``If-None-Match: *``, a change with ``If-Match`` and the stored ETag, a
delete with ``If-Match``. A ``412`` means the calendar changed it first: the object is read
again and the calendar's version kept; the CRM's change is not written but reported as a
conflict on the event and in the account's error log. A ``412`` to a create whose object
carries our UID is our own write of a pass that died before it committed: adopted, never
written twice.

**In**: RFC 6578 ``sync-collection`` from the stored token names what changed; a token the
server no longer knows, the first pass, a server without tokens whose ``getctag`` moved, and
once a day (the window moves on) compare the window's hrefs and ETags with ours instead.
Objects whose ETag differs from ours are read with ``calendar-multiget`` a batch at a time,
expanded over the window (``calendar.ics``) and written a transaction per batch: rows are
keyed on (account, href, recurrence id), so a pass that dies and runs again never makes one
twice. The token is stored only at the end. A pass with nothing changed writes no row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import structlog
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from mailledger.accounts import statuses
from mailledger.accounts.oauth import access_token
from mailledger.accounts.problems import SyncProblem
from mailledger.calendar import ics
from mailledger.calendar.connection import (
    CalendarConnection,
    InvalidSyncToken,
    NoSyncTokens,
    PreconditionFailed,
    open_client,
)
from mailledger.calendar.problems import describe
from mailledger.calendar.timeline import place_on_timeline
from mailledger.config import Settings
from mailledger.store.models import (
    AccountStatus,
    CalendarAccount,
    CalendarError,
    CalendarEvent,
    CalendarKind,
    EventOrigin,
    Tenant,
    utcnow,
)
from mailledger.store.secretbox import SecretBox

log = structlog.get_logger("mailledger.calendar")

# Objects read per calendar-multiget and written per transaction.
BATCH: Final = 25
# The window's hrefs and ETags are compared in full at least this often.
FULL_COMPARISON_EVERY: Final = timedelta(days=1)
OUR_UID_SUFFIX: Final = "@mailledger"


@dataclass
class PassResult:
    """How a pass ended, and what it did."""

    account_id: int
    status: AccountStatus
    mode: str = ""  # sync-token | full | unchanged | busy
    fetched: int = 0  # calendar objects read
    changed: int = 0  # occurrences added or changed
    removed: int = 0  # occurrences gone from the calendar
    written: int = 0  # CRM changes written to the calendar
    conflicts: int = 0  # CRM changes refused: the calendar changed them first (412)
    problem: SyncProblem | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Account:
    """What a pass needs of the account, read once (no row held across the network)."""

    id: int
    tenant_id: int
    kind: CalendarKind
    calendar_url: str
    login: str
    secret: str
    sync_token: str
    ctag: str
    compared_at: datetime | None


@dataclass
class _Run:
    """One pass: the account as read at its start, the window, the moment, the tally."""

    account: _Account
    start: datetime
    end: datetime
    now: datetime
    result: PassResult


@dataclass
class _Plan:
    """What a pass reads (href → ETag), what is gone, and the state to store at the end."""

    token: str
    ctag: str
    full: bool
    wanted: dict[str, str] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)


def window(settings: Settings, now: datetime) -> tuple[datetime, datetime]:
    """The days synced: ``days_back`` before ``now`` to ``days_ahead`` after (whole days)."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (
        today - timedelta(days=settings.calendar.days_back),
        today + timedelta(days=settings.calendar.days_ahead + 1),
    )


class CalendarSyncer:
    """Runs passes of calendar accounts; one per process, shared by the service and the CLI."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        box: SecretBox,
        *,
        owner: str | None = None,
        on_connect: Callable[[CalendarConnection], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._box = box
        self._owner = owner or settings.service.node_id
        self._on_connect = on_connect

    # --- the lease ------------------------------------------------------------------------

    def claim(self, account_id: int, now: datetime) -> bool:
        """Take the account's lease (free, lapsed, or already ours); whether we hold it."""
        expires = now + timedelta(seconds=self._settings.calendar.lease_seconds)
        with self._sessions.begin() as session:
            taken = session.execute(
                update(CalendarAccount)
                .where(
                    CalendarAccount.id == account_id,
                    or_(
                        CalendarAccount.claim_expires_at.is_(None),
                        CalendarAccount.claim_expires_at < now,
                        CalendarAccount.claimed_by == self._owner,
                    ),
                )
                .values(claimed_by=self._owner, claim_expires_at=expires)
                .execution_options(synchronize_session=False)
            )
            return getattr(taken, "rowcount", 0) == 1

    def renew(self, account_ids: list[int]) -> None:
        """Keep the leases of accounts whose passes are still running."""
        expires = utcnow() + timedelta(seconds=self._settings.calendar.lease_seconds)
        with self._sessions.begin() as session:
            session.execute(
                update(CalendarAccount)
                .where(
                    CalendarAccount.id.in_(account_ids), CalendarAccount.claimed_by == self._owner
                )
                .values(claim_expires_at=expires)
                .execution_options(synchronize_session=False)
            )

    def release(self, account_ids: list[int]) -> None:
        """Hand the leases back."""
        with self._sessions.begin() as session:
            session.execute(
                update(CalendarAccount)
                .where(
                    CalendarAccount.id.in_(account_ids), CalendarAccount.claimed_by == self._owner
                )
                .values(claimed_by=None, claim_expires_at=None)
                .execution_options(synchronize_session=False)
            )

    # --- a pass ---------------------------------------------------------------------------

    def bearer(self, account_id: int, now: datetime | None = None) -> str:
        """A fresh OAuth access token for the account, a rotated refresh token kept.

        Its own transaction, committed before any CalDAV request: a refresh token the
        provider rotated is stored even when the pass then fails.
        """
        with self._sessions.begin() as session:
            return access_token(
                session, session.get_one(CalendarAccount, account_id), self._box,
                self._settings.oauth, now or utcnow(),
                sign_in_again=f"sign in again: `mailledger calendar reconnect {account_id}`",
            )  # fmt: skip

    def connect(self, account: CalendarAccount | _Account) -> CalendarConnection:
        """Log in to the account's calendar: its password, or a fresh OAuth access token."""
        timeout = self._settings.calendar.timeout_seconds
        if account.kind is CalendarKind.CALDAV:
            client = open_client(
                account.calendar_url,
                account.login,
                password=self._box.open(account.secret),
                timeout=timeout,
            )
        else:
            client = open_client(
                account.calendar_url, account.login, bearer=self.bearer(account.id),
                timeout=timeout,
            )  # fmt: skip
        connection = CalendarConnection(client, account.calendar_url)
        if self._on_connect is not None:
            self._on_connect(connection)
        return connection

    def run(self, account_id: int, now: datetime | None = None) -> PassResult:
        """One pass of the account: statuses, the error log and the lease taken care of."""
        now = now or utcnow()
        if not self.claim(account_id, now):
            with self._sessions() as session:
                status = session.get_one(CalendarAccount, account_id).status
            return PassResult(account_id, status, mode="busy")
        try:
            with self._sessions.begin() as session:
                account = session.get_one(CalendarAccount, account_id)
                statuses.pass_started(session, account, now)
                snapshot = _Account(
                    account.id,
                    account.tenant_id,
                    account.kind,
                    account.calendar_url,
                    account.login,
                    account.secret,
                    account.sync_token,
                    account.ctag,
                    account.compared_at,
                )
            result = PassResult(account_id, AccountStatus.SYNCING)
            run = _Run(snapshot, *window(self._settings, now), now, result)
            try:
                connection = self.connect(snapshot)
                self._push(connection, run)
                self._pull(connection, run)
            except Exception as exc:  # noqa: BLE001 - every failure is a status and words
                with self._sessions.begin() as session:
                    account = session.get_one(CalendarAccount, account_id)
                    problem = describe(exc, account)
                    result.status = statuses.pass_failed(session, account, problem, utcnow())
                    result.problem = problem
                log.info(
                    "calendar pass failed",
                    account_id=account_id,
                    status=result.status.value,
                    what=problem.what,
                )
                return result
            interval = timedelta(minutes=self._settings.calendar.interval_minutes)
            with self._sessions.begin() as session:
                account = session.get_one(CalendarAccount, account_id)
                statuses.pass_succeeded(session, account, now, next_pass_at=now + interval)
                if result.changed:
                    account.events_synced += result.changed
                result.status = account.status
            return result
        finally:
            self.release([account_id])

    # --- out: the CRM's changes -------------------------------------------------------------

    def _push(self, connection: CalendarConnection, run: _Run) -> None:
        account = run.account
        with self._sessions() as session:
            pending = list(
                session.scalars(
                    select(CalendarEvent.id)
                    .where(CalendarEvent.account_id == account.id, CalendarEvent.pending != "")
                    .order_by(CalendarEvent.id)
                )
            )
        for event_id in pending:
            self._push_one(connection, run, event_id)
            self.renew([account.id])

    def _push_one(self, connection: CalendarConnection, run: _Run, event_id: int) -> None:
        account, now, result = run.account, run.now, run.result
        with self._sessions() as session:
            event = session.get_one(CalendarEvent, event_id)
            what, href, etag, uid = event.pending, event.href, event.etag, event.uid
            text = ics.event_ics(_draft(event), now) if what in ("create", "update") else ""
        new_etag: str | None = None
        refetched: tuple[str, str] | None = None
        conflict = ""
        try:
            if what == "create":
                new_etag = connection.put(href, text, etag=None)
            elif what == "update":
                new_etag = connection.put(href, text, etag=etag or None)
            elif what == "delete":
                connection.delete(href, etag)
        except PreconditionFailed:
            refetched = connection.get(href)
            if what == "create" and refetched is not None and ics.uid_of(refetched[1]) == uid:
                new_etag, refetched = refetched[0], None  # our own write of a pass that died
            else:
                conflict = (
                    "the event was changed in the calendar before this change reached it; the "
                    "calendar's version is kept and this change was not written"
                    if what != "delete"
                    else "the event was changed in the calendar before the delete reached it; "
                    "it was not deleted there"
                )
        with self._sessions.begin() as session:
            event = session.get_one(CalendarEvent, event_id)
            if event.pending != what:
                return  # changed again meanwhile: the next pass writes the newer change
            event.pending = ""
            if not conflict:
                if new_etag is not None:
                    event.etag = new_etag
                result.written += 1
                return
            result.conflicts += 1
            event.conflict = f"{now.astimezone(UTC):%Y-%m-%d %H:%M} UTC: {conflict}"
            session.add(
                CalendarError(
                    account_id=account.id,
                    at=now,
                    status="conflict",
                    what=f"event {event.id} ({event.summary!r}): {conflict}",
                    fix="make the change again in the CRM, or in the calendar app",
                )
            )
            if refetched is None:
                # Gone from the calendar meanwhile: gone here too.
                self._remove_hrefs(session, run, {href}, force=True)
            else:
                event.deleted_at = None
                self._apply(session, run, href, *refetched)

    # --- in: the calendar's changes ---------------------------------------------------------

    def _pull(self, connection: CalendarConnection, run: _Run) -> None:
        plan = self._plan(connection, run)
        if plan is None:
            return
        removed = set(plan.removed)
        hrefs = sorted(plan.wanted)
        for first in range(0, len(hrefs), BATCH):
            batch = hrefs[first : first + BATCH]
            objects = connection.multiget(batch)
            run.result.fetched += len(objects)
            with self._sessions.begin() as session:
                for href in batch:
                    found = objects.get(href) or objects.get(connection.href_url(href))
                    if found is None:
                        removed.add(href)
                        continue
                    self._apply(session, run, href, *found)
            self.renew([run.account.id])
        with self._sessions.begin() as session:
            if removed:
                self._remove_hrefs(session, run, removed)
            owner = session.get_one(CalendarAccount, run.account.id)
            if owner.sync_token != plan.token:
                owner.sync_token = plan.token
            if owner.ctag != plan.ctag:
                owner.ctag = plan.ctag
            if plan.full:
                owner.compared_at = run.now

    def _plan(self, connection: CalendarConnection, run: _Run) -> _Plan | None:
        """What to read and what is gone: from the sync token, or by comparing in full."""
        account, result = run.account, run.result
        changes = None
        token, ctag = account.sync_token, account.ctag
        full = account.compared_at is None or run.now - account.compared_at >= FULL_COMPARISON_EVERY
        if token:
            try:
                changes = connection.sync_collection(token)
                result.mode = "sync-token"
            except InvalidSyncToken:
                result.notes.append("the stored sync token had expired: compared in full")
                full, token = True, ""
            except NoSyncTokens:
                token = ""
        if changes is None:
            server_ctag, server_token = connection.collection_state()
            if server_token:
                token = server_token
            if server_ctag and server_ctag == ctag and not full and not server_token:
                result.mode = "unchanged"
                return None
            ctag, full = server_ctag, True
        else:
            token = changes.token
        plan = _Plan(token=token, ctag=ctag, full=full)
        known = self._known(account.id)
        if changes is not None:
            plan.wanted.update(
                {h: e for h, e in changes.changed.items() if known.get(h, (None,))[0] != e}
            )
            plan.removed |= {h for h in changes.removed if h in known}
        if full:
            result.mode = "full" if changes is None else "sync-token + full"
            server = connection.window_etags(run.start, run.end)
            plan.wanted.update({h: e for h, e in server.items() if known.get(h, (None,))[0] != e})
            in_window = self._hrefs_in_window(account.id, run.start, run.end)
            plan.removed |= {h for h in in_window if h not in server}
        return plan

    def _known(self, account_id: int) -> dict[str, tuple[str, bool]]:
        """href → (ETag, whether the CRM deleted it) of every object we hold a row of."""
        known: dict[str, tuple[str, bool]] = {}
        with self._sessions() as session:
            for href, etag, origin, deleted_at, pending in session.execute(
                select(
                    CalendarEvent.href,
                    CalendarEvent.etag,
                    CalendarEvent.origin,
                    CalendarEvent.deleted_at,
                    CalendarEvent.pending,
                ).where(CalendarEvent.account_id == account_id)
            ):
                if pending == "create":
                    continue  # not on the calendar yet
                crm_deleted = origin is EventOrigin.CRM and deleted_at is not None
                known[href] = (etag, crm_deleted or known.get(href, ("", False))[1])
        return known

    def _hrefs_in_window(self, account_id: int, start: datetime, end: datetime) -> set[str]:
        with self._sessions() as session:
            return set(
                session.scalars(
                    select(CalendarEvent.href).where(
                        CalendarEvent.account_id == account_id,
                        CalendarEvent.deleted_at.is_(None),
                        CalendarEvent.pending == "",
                        CalendarEvent.start_at < end,
                        CalendarEvent.end_at > start,
                    )
                )
            )

    def _apply(self, session: Session, run: _Run, href: str, etag: str, text: str) -> None:
        """Bring the rows of the object at ``href`` in line with ``text``; meetings too."""
        account = session.get_one(CalendarAccount, run.account.id)
        tenant = session.get_one(Tenant, run.account.tenant_id)
        start, now, result = run.start, run.now, run.result
        rows = list(
            session.scalars(
                select(CalendarEvent).where(
                    CalendarEvent.account_id == account.id, CalendarEvent.href == href
                )
            )
        )
        if any(r.origin is EventOrigin.CRM and r.deleted_at is not None for r in rows):
            return  # deleted in the CRM: it never comes back (its DELETE is on its way)
        try:
            found = ics.occurrences(text, start, run.end)
        except ics.CalendarDataError as exc:
            result.notes.append(f"{href}: {exc}")
            return
        crm = any(r.origin is EventOrigin.CRM for r in rows) or any(
            o.uid.endswith(OUR_UID_SUFFIX) for o in found
        )
        by_id = {r.recurrence_id: r for r in rows}
        touched: list[CalendarEvent] = []
        for occurrence in found:
            values = _values(occurrence)
            row = by_id.pop(occurrence.recurrence_id, None)
            if row is None:
                row = CalendarEvent(
                    account_id=account.id,
                    tenant_id=account.tenant_id,
                    href=href,
                    etag=etag,
                    recurrence_id=occurrence.recurrence_id,
                    origin=EventOrigin.CRM if crm else EventOrigin.CALENDAR,
                    pending="",
                    conflict="",
                    created_at=now,
                    updated_at=now,
                    **values,
                )
                session.add(row)
                touched.append(row)
                continue
            if row.etag != etag:
                row.etag = etag
            if row.deleted_at is not None or any(
                _differs(getattr(row, k), v) for k, v in values.items()
            ):
                for name, value in values.items():
                    setattr(row, name, value)
                row.deleted_at = None
                row.updated_at = now
                touched.append(row)
        session.flush()
        for row in touched:
            place_on_timeline(
                session, row, account, tenant, now, base_url=self._settings.http.public_url
            )
        result.changed += len(touched)
        for row in by_id.values():
            if row.deleted_at is None and row.end_at > start:
                row.deleted_at = now
                row.updated_at = now
                session.flush()
                place_on_timeline(session, row, account, tenant, now)
                result.removed += 1
            elif row.etag != etag:
                row.etag = etag

    def _remove_hrefs(
        self, session: Session, run: _Run, hrefs: set[str], *, force: bool = False
    ) -> None:
        """The objects at ``hrefs`` are gone from the calendar: their occurrences go too."""
        account = session.get_one(CalendarAccount, run.account.id)
        tenant = session.get_one(Tenant, run.account.tenant_id)
        now, result = run.now, run.result
        rows = session.scalars(
            select(CalendarEvent).where(
                CalendarEvent.account_id == account.id,
                CalendarEvent.href.in_(sorted(hrefs)),
                CalendarEvent.deleted_at.is_(None),
            )
        )
        for row in rows:
            if row.pending == "create" and not force:
                continue
            row.deleted_at = now
            row.updated_at = now
            row.pending = ""
            session.flush()
            place_on_timeline(session, row, account, tenant, now)
            result.removed += 1


def _values(occurrence: ics.Occurrence) -> dict[str, Any]:
    return {
        "uid": occurrence.uid[:500],
        "recurring": occurrence.recurring,
        "summary": occurrence.summary,
        "description": occurrence.description,
        "location": occurrence.location,
        "start_at": occurrence.start,
        "end_at": occurrence.end,
        "tzid": occurrence.tzid,
        "all_day": occurrence.all_day,
        "organizer": occurrence.organizer,
        "attendees": occurrence.attendees,
        "status": occurrence.status,
    }


def _differs(stored: Any, new: Any) -> bool:
    if isinstance(stored, datetime) and isinstance(new, datetime):
        return stored.astimezone(UTC) != new.astimezone(UTC)
    return bool(stored != new)


def _draft(event: CalendarEvent) -> ics.EventDraft:
    start: Any = event.start_at
    end: Any = event.end_at
    if event.all_day:
        start, end = start.date(), end.date()
    return ics.EventDraft(
        uid=event.uid,
        summary=event.summary,
        start=start,
        end=end,
        organizer=event.organizer,
        attendees=[a.get("address", "") for a in event.attendees if a.get("address")],
        description=event.description,
        location=event.location,
        tzid=event.tzid,
    )


__all__ = ["BATCH", "CalendarSyncer", "PassResult", "window"]
