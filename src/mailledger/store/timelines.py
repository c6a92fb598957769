"""A contact's or a company's timeline: their activities, newest first, a page at a time.

Who may see which activity is decided here once, for the timelines and the activity page
alike: a staff member sees the activities they brought in or took part in; an admin (a
``viewer`` of None) sees the whole tenant. Everything is scoped by tenant first, so an id of
another tenant finds nothing, as a missing one does (DESIGN §11).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.sql.elements import ColumnElement

from mailledger.store.models import (
    Activity,
    Company,
    Contact,
    ContactAddress,
    Direction,
    Participant,
    PartyKind,
    Staff,
)
from mailledger.store.queries import activity_dicts, activity_rows

PAGE_SIZE = 25
MAX_SEARCH = 200


@dataclass(frozen=True, slots=True)
class TimelineFilters:
    """What the reader narrowed the timeline to; empty strings narrow nothing."""

    q: str = ""  # words in the subject
    direction: str = ""  # "inbound" or "outbound"
    staff: str = ""  # the staff member's username
    before: int | None = None  # the last activity of the previous page

    @classmethod
    def from_params(cls, params: dict[str, str]) -> TimelineFilters:
        """From query parameters; values that mean nothing (a bad direction…) narrow nothing."""
        direction = params.get("direction", "")
        before = params.get("before", "")
        return cls(
            q=params.get("q", "").strip()[:MAX_SEARCH],
            direction=direction if direction in {d.value for d in Direction} else "",
            staff=params.get("staff", "").strip().lower()[:64],
            before=int(before) if before.isdigit() and len(before) < 19 else None,
        )


def involving(staff_id: int) -> ColumnElement[bool]:
    """Activities this staff member brought in or took part in."""
    took_part = select(Participant.activity_id).where(Participant.staff_id == staff_id)
    return or_(Activity.staff_id == staff_id, Activity.id.in_(took_part))


def visible(tenant_id: int, viewer: int | None) -> list[ColumnElement[bool]]:
    """The tenant's activities a viewer may see: a staff member's own, or (None) all."""
    where = [Activity.tenant_id == tenant_id]
    if viewer is not None:
        where.append(involving(viewer))
    return where


def _contact_addresses(contact_ids: Any) -> Any:
    return select(ContactAddress.address).where(ContactAddress.contact_id.in_(contact_ids))


def of_contact(tenant_id: int, contact_id: int) -> ColumnElement[bool]:
    """Activities the contact took part in: matched to them, or by one of their addresses.

    The address catches mail recorded before the contact existed; a staff member's address
    never counts, even if someone entered it as a contact too.
    """
    ids = select(Contact.id).where(Contact.tenant_id == tenant_id, Contact.id == contact_id)
    return exists().where(
        Participant.activity_id == Activity.id,
        or_(
            Participant.contact_id.in_(ids),
            and_(
                Participant.kind != PartyKind.STAFF,
                Participant.address.in_(_contact_addresses(ids)),
            ),
        ),
    )


def of_company(tenant_id: int, company_id: int) -> ColumnElement[bool]:
    """Activities of any of the company's contacts, or from a domain only the company owns."""
    company = select(Company.id).where(Company.tenant_id == tenant_id, Company.id == company_id)
    members = select(Contact.id).where(
        Contact.tenant_id == tenant_id, Contact.company_id.in_(company)
    )
    return exists().where(
        Participant.activity_id == Activity.id,
        or_(
            Participant.company_id.in_(company),
            Participant.contact_id.in_(members),
            and_(
                Participant.kind != PartyKind.STAFF,
                Participant.address.in_(_contact_addresses(members)),
            ),
        ),
    )


def contact_summary(session: Session, tenant_id: int, contact_id: int) -> dict[str, Any] | None:
    """The timeline's heading: the contact's name, addresses and company; None if not ours."""
    row = session.scalars(
        select(Contact)
        .where(Contact.tenant_id == tenant_id, Contact.id == contact_id)
        .options(selectinload(Contact.addresses), selectinload(Contact.company))
    ).one_or_none()
    if row is None:
        return None
    addresses = [a.address for a in row.addresses]
    return {
        "id": row.id,
        "name": row.name or (addresses[0] if addresses else f"contact {row.id}"),
        "addresses": addresses,
        "company": {"id": row.company.id, "name": row.company.name} if row.company else None,
    }


def company_summary(session: Session, tenant_id: int, company_id: int) -> dict[str, Any] | None:
    """The timeline's heading: the company's name, domains and contacts; None if not ours."""
    row = session.scalars(
        select(Company)
        .where(Company.tenant_id == tenant_id, Company.id == company_id)
        .options(selectinload(Company.domains))
    ).one_or_none()
    if row is None:
        return None
    members = session.scalars(
        select(Contact)
        .where(Contact.tenant_id == tenant_id, Contact.company_id == row.id)
        .options(selectinload(Contact.addresses))
        .order_by(Contact.name, Contact.id)
    )
    return {
        "id": row.id,
        "name": row.name,
        "domains": sorted(d.domain for d in row.domains),
        "contacts": [
            {
                "id": c.id,
                "name": c.name or (c.addresses[0].address if c.addresses else f"contact {c.id}"),
            }
            for c in members
        ],
    }


def staff_choices(session: Session, tenant_id: int) -> list[dict[str, str]]:
    """The tenant's staff, for the timeline's staff filter."""
    rows = session.execute(
        select(Staff.username, Staff.name)
        .where(Staff.tenant_id == tenant_id, Staff.removed_at.is_(None))
        .order_by(Staff.username)
    )
    return [{"username": username, "name": name or username} for username, name in rows]


def timeline(
    session: Session,
    tenant_id: int,
    whose: ColumnElement[bool],
    *,
    viewer: int | None,
    filters: TimelineFilters,
    limit: int = PAGE_SIZE,
) -> tuple[list[dict[str, Any]], int | None]:
    """A page of ``whose`` activities the viewer may see, newest first, and where the next
    page starts (the ``before`` of the next request; None on the last page).

    Keyset paging on (occurred_at, id): a page costs the same deep in the history as at its
    start. ``before`` names an activity, whose time is read inside the same tenant.
    """
    query = activity_rows().where(*visible(tenant_id, viewer), whose)
    if filters.q:
        query = query.where(Activity.subject.icontains(filters.q, autoescape=True))
    if filters.direction:
        query = query.where(Activity.direction == Direction(filters.direction))
    if filters.staff:
        staff_ids = select(Staff.id).where(
            Staff.tenant_id == tenant_id, Staff.username == filters.staff
        )
        query = query.where(Activity.staff_id.in_(staff_ids))
    if filters.before is not None:
        anchor = (
            select(Activity.occurred_at)
            .where(Activity.tenant_id == tenant_id, Activity.id == filters.before)
            .scalar_subquery()
        )
        query = query.where(
            or_(
                Activity.occurred_at < anchor,
                and_(Activity.occurred_at == anchor, Activity.id < filters.before),
            )
        )
    query = query.order_by(Activity.occurred_at.desc(), Activity.id.desc()).limit(limit + 1)
    rows = session.execute(query).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return activity_dicts(session, rows), (rows[-1].id if more else None)
