"""Which events are meetings with clients, and who they were with (DESIGN §13, §5).

An occurrence whose organizer or attendees include a contact becomes (or stays) a
``meeting`` activity on that contact's timeline, and so on their company's. Its people are
matched as mail's are (``routing.matcher``): staff first, then contacts, then companies by
domain; a party on a never-log list of the tenant or of a staff member present keeps the
whole meeting off the record, as it keeps an email off. Cancelled occurrences and those of
a private calendar are handled here too: cancelled ones are no meeting, private ones are
recorded as private activities.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from mailledger.mail.addresses import AddressError, normalize
from mailledger.routing.matcher import match_parties, never_log_hits
from mailledger.store.meetings import Meeting, MeetingParty, forget_meeting, record_meeting
from mailledger.store.models import (
    CalendarAccount,
    CalendarEvent,
    CalendarPrivacy,
    Direction,
    PartyKind,
    Tenant,
)


def _people(event: CalendarEvent, tenant: Tenant) -> list[tuple[str, str, str]]:
    """(role, normalized address, name): the organizer as ``from``, attendees as ``to``."""
    people: list[tuple[str, str, str]] = []
    seen: set[tuple[str, str]] = set()
    entries = [("from", event.organizer, "")] + [
        ("to", a.get("address", ""), a.get("name", "")) for a in event.attendees
    ]
    for role, address, name in entries:
        if not address:
            continue
        try:
            key = normalize(address, strip_plus=tenant.strip_plus_tags)
        except AddressError:
            continue
        if (role, key) in seen:
            continue
        seen.add((role, key))
        people.append((role, key, name))
    return people


def meeting_of(
    session: Session, event: CalendarEvent, account: CalendarAccount, tenant: Tenant
) -> Meeting | None:
    """The meeting ``event`` is, or None (no contact, cancelled, or on a never-log list)."""
    if event.deleted_at is not None or event.status == "cancelled":
        return None
    people = _people(event, tenant)
    matches = match_parties(session, tenant, [key for _, key, _ in people])
    if not any(matches[key].kind is PartyKind.CONTACT for _, key, _ in people):
        return None
    staff_ids = {m.staff_id for m in matches.values() if m.staff_id is not None}
    staff_ids.add(account.staff_id)
    external = [key for _, key, _ in people if matches[key].kind is not PartyKind.STAFF]
    if never_log_hits(session, tenant, staff_ids, external):
        return None
    organizer = next((key for role, key, _ in people if role == "from"), "")
    organizer_is_staff = organizer != "" and matches[organizer].kind is PartyKind.STAFF
    text = "\n\n".join(part for part in (event.location, event.description) if part)
    return Meeting(
        tenant_id=tenant.id,
        staff_id=account.staff_id,
        uid=event.uid,
        recurrence_id=event.recurrence_id,
        subject=event.summary,
        occurred_at=event.start_at,
        text=text,
        private=account.privacy is CalendarPrivacy.PRIVATE,
        direction=Direction.OUTBOUND if organizer_is_staff or not organizer else Direction.INBOUND,
        organizer=organizer,
        organizer_name=next((name for role, _, name in people if role == "from"), ""),
        parties=tuple(
            MeetingParty(
                role=role,
                address=key,
                name=name,
                kind=matches[key].kind,
                staff_id=matches[key].staff_id,
                contact_id=matches[key].contact_id,
                company_id=matches[key].company_id,
            )
            for role, key, name in people
        ),
    )


def place_on_timeline(
    session: Session,
    event: CalendarEvent,
    account: CalendarAccount,
    tenant: Tenant,
    now: datetime,
    *,
    base_url: str = "",
) -> None:
    """Make ``event``'s meeting match the event: recorded, updated, or taken off."""
    meeting = meeting_of(session, event, account, tenant)
    if meeting is None:
        previous, event.activity_id = event.activity_id, None
        session.flush()
        forget_meeting(session, previous)
        return
    activity = record_meeting(session, meeting, now, base_url=base_url)
    if event.activity_id != activity:
        previous, event.activity_id = event.activity_id, activity
        session.flush()
        forget_meeting(session, previous)
