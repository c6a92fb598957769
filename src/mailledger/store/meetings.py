"""Meetings on the timeline: the activity a calendar event with a client becomes (DESIGN §13).

An appointment with a contact is part of the correspondence record, so it is an activity of
kind ``meeting`` beside the mail, with the organizer as ``from`` and the attendees as ``to``
participants (matched by the caller: staff first, as for mail). One occurrence is one
meeting; the same occurrence in two colleagues' calendars (one invitation, one UID) is one
meeting, found by its dedupe key ``cal:UID|RECURRENCE-ID`` within the tenant, as one email
reaching us by several paths is one activity.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mailledger.store import webhooks
from mailledger.store.models import (
    Activity,
    CalendarEvent,
    Direction,
    Participant,
    PartyKind,
)

MEETING = "meeting"


@dataclass(frozen=True, slots=True)
class MeetingParty:
    """One person of the meeting, matched: ``from`` (organizer) or ``to`` (attendee)."""

    role: str
    address: str
    name: str
    kind: PartyKind
    staff_id: int | None = None
    contact_id: int | None = None
    company_id: int | None = None


@dataclass(frozen=True, slots=True)
class Meeting:
    """What the timeline shows of one occurrence."""

    tenant_id: int
    staff_id: int
    uid: str
    recurrence_id: str
    subject: str
    occurred_at: datetime
    text: str
    private: bool
    direction: Direction
    organizer: str
    organizer_name: str
    parties: tuple[MeetingParty, ...]


def meeting_key(uid: str, recurrence_id: str) -> str:
    """The dedupe key of one occurrence's meeting (fits ``activities.dedupe_key``)."""
    return f"cal:{uid[:150]}|{recurrence_id}"


def record_meeting(session: Session, meeting: Meeting, now: datetime, *, base_url: str = "") -> int:
    """Create the occurrence's meeting, or bring the existing one up to date; its id.

    A change is an ``activity.updated`` webhook event, a new meeting ``activity.created``,
    in the caller's transaction; an unchanged meeting writes nothing.
    """
    key = meeting_key(meeting.uid, meeting.recurrence_id)
    activity = session.scalars(
        select(Activity).where(Activity.tenant_id == meeting.tenant_id, Activity.dedupe_key == key)
    ).first()
    created = activity is None
    if activity is None:
        activity = Activity(
            tenant_id=meeting.tenant_id,
            dedupe_key=key,
            content_key="",
            kind=MEETING,
            staff_id=meeting.staff_id,
            created_at=now,
            updated_at=now,
            auth={},
        )
        session.add(activity)
    values = {
        "direction": meeting.direction,
        "subject": meeting.subject,
        "from_address": meeting.organizer,
        "from_name": meeting.organizer_name[:200],
        "occurred_at": meeting.occurred_at,
        "text_body": meeting.text,
        "private": meeting.private,
    }
    changed = created or any(getattr(activity, k) != v for k, v in values.items())
    for name, value in values.items():
        setattr(activity, name, value)
    session.flush()
    have = {
        (role, address)
        for role, address in session.execute(
            select(Participant.role, Participant.address).where(
                Participant.activity_id == activity.id
            )
        )
    }
    wanted = {(p.role, p.address) for p in meeting.parties}
    if have != wanted:
        changed = True
        session.execute(delete(Participant).where(Participant.activity_id == activity.id))
        for party in meeting.parties:
            session.add(
                Participant(
                    activity_id=activity.id,
                    role=party.role,
                    address=party.address,
                    name=party.name[:200],
                    kind=party.kind,
                    staff_id=party.staff_id,
                    contact_id=party.contact_id,
                    company_id=party.company_id,
                )
            )
        session.flush()
    if changed:
        if not created:
            activity.updated_at = now
            session.flush()
        webhooks.activity_changed(
            session,
            meeting.tenant_id,
            activity.id,
            webhooks.ACTIVITY_CREATED if created else webhooks.ACTIVITY_UPDATED,
            base_url=base_url,
        )
    return activity.id


def forget_meeting(session: Session, activity_id: int | None) -> bool:
    """Delete a meeting no live event points to any more (cancelled, deleted, moved out).

    A meeting another colleague's calendar still holds stays. Returns whether it went.
    """
    if activity_id is None:
        return False
    still = session.scalar(
        select(CalendarEvent.id)
        .where(CalendarEvent.activity_id == activity_id, CalendarEvent.deleted_at.is_(None))
        .limit(1)
    )
    if still is not None:
        return False
    gone = session.execute(
        delete(Activity).where(Activity.id == activity_id, Activity.kind == MEETING)
    )
    return bool(getattr(gone, "rowcount", 0))
