"""Read-side queries for the operator: rows turned into plain dicts for JSON and for tables.

The CLI prints these as they are (``--json``) or as aligned columns, so the shape lives here
once: DESIGN §10 names the keys scripts rely on, and tests hold us to them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, and_, bindparam, func, or_, select
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.sql import Executable
from sqlalchemy.sql.elements import BindParameter

from mailledger.mail.addresses import capture_address
from mailledger.store.models import (
    Activity,
    ActivitySource,
    Attachment,
    Company,
    CompanyDomain,
    Contact,
    ContactAddress,
    ForwardingConfirmation,
    MessageRoute,
    MessageState,
    NeverLog,
    Participant,
    PartyKind,
    ReceivedMessage,
    Staff,
    Tenant,
    TraceEntry,
)

DEFAULT_LIMIT = 50


# Rows read per query when a list is streamed (``--all``, ``--json``): memory stays flat
# however many rows there are.
PAGE_ROWS = 200


class NotFoundError(LookupError):
    """The row the operator named does not exist, or a name matches several rows."""


def _staff_state(staff: Staff) -> str:
    if staff.removed_at is not None:
        return "removed"
    return "disabled" if staff.disabled_at is not None else "active"


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _tenant_names(session: Session, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = session.execute(select(Tenant.id, Tenant.name).where(Tenant.id.in_(ids)))
    return dict(rows.all())


def _staff_names(session: Session, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = session.execute(select(Staff.id, Staff.username).where(Staff.id.in_(ids)))
    return dict(rows.all())


# --- the directory ----------------------------------------------------------------------------


def tenants(session: Session) -> list[dict[str, Any]]:
    """Every tenant with its domains and how many staff it has."""
    counted = session.execute(select(Staff.tenant_id, func.count()).group_by(Staff.tenant_id))
    staff_counts = dict(counted.all())
    rows = session.scalars(
        select(Tenant).options(selectinload(Tenant.customer_domains)).order_by(Tenant.name)
    )
    return [
        {
            "id": tenant.id,
            "name": tenant.name,
            "capture_domain": tenant.capture_domain,
            "customer_domains": sorted(d.domain for d in tenant.customer_domains),
            "staff": staff_counts.get(tenant.id, 0),
            "gateway_networks": list(tenant.gateway_networks),
            "gateway_authserv_id": tenant.gateway_authserv_id,
            "state": "disabled" if tenant.disabled_at is not None else "active",
            "created_at": _time(tenant.created_at),
        }
        for tenant in rows
    ]


def _count(session: Session, model: Any, *where: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def tenant(session: Session, row: Tenant) -> dict[str, Any]:
    """One tenant in full: domains, policies, gateway, state and how much it holds."""
    return {
        "id": row.id,
        "name": row.name,
        "capture_domain": row.capture_domain,
        "customer_domains": sorted(d.domain for d in row.customer_domains),
        "state": "disabled" if row.disabled_at is not None else "active",
        "disabled_at": _time(row.disabled_at),
        "create_unknown_contacts": row.create_unknown_contacts,
        "record_internal": row.record_internal,
        "strip_plus_tags": row.strip_plus_tags,
        "gateway_networks": list(row.gateway_networks),
        "gateway_authserv_id": row.gateway_authserv_id,
        # The tenant's chosen sender of system mail; "" means [service] system_address.
        "system_sender": row.system_sender,
        "staff": _count(session, Staff, Staff.tenant_id == row.id, Staff.removed_at.is_(None)),
        "contacts": _count(session, Contact, Contact.tenant_id == row.id),
        "companies": _count(session, Company, Company.tenant_id == row.id),
        "activities": _count(session, Activity, Activity.tenant_id == row.id),
        "created_at": _time(row.created_at),
    }


def staff_members(session: Session, tenant: Tenant) -> list[dict[str, Any]]:
    """A tenant's staff: capture address, primary address and own addresses."""
    rows = session.scalars(
        select(Staff)
        .where(Staff.tenant_id == tenant.id)
        .options(selectinload(Staff.addresses))
        .order_by(Staff.username)
    )
    return [
        {
            "id": staff.id,
            "username": staff.username,
            "name": staff.name,
            "capture_address": capture_address(staff.username, tenant.capture_domain),
            "primary_address": staff.primary_address,
            "addresses": sorted(a.address for a in staff.addresses),
            "state": _staff_state(staff),
        }
        for staff in rows
    ]


def staff_state(staff: Staff) -> dict[str, Any]:
    """Whether the staff member's capture address is open, and since when it is not."""
    return {
        "state": _staff_state(staff),
        "disabled_at": _time(staff.disabled_at),
        "removed_at": _time(staff.removed_at),
    }


def _containing(column: Any, text: str) -> Any:
    """``column`` contains ``text``, case-insensitively, ``%`` and ``_`` taken literally."""
    return func.lower(column).contains(text.lower(), autoescape=True)


def contacts(
    session: Session,
    tenant: Tenant,
    *,
    after: int | None = None,
    limit: int | None = None,
    search: str = "",
) -> list[dict[str, Any]]:
    """A tenant's contacts with their addresses and company, by id; the API pages them with
    ``after`` (the last id seen) and ``limit``. ``search`` keeps those whose name, one of
    whose addresses, or whose company's name contains it (the admin page's search box)."""
    query = (
        select(Contact)
        .where(Contact.tenant_id == tenant.id)
        .options(selectinload(Contact.addresses), selectinload(Contact.company))
        .order_by(Contact.id)
    )
    if search.strip():
        text = search.strip()
        by_address = select(ContactAddress.contact_id).where(
            ContactAddress.tenant_id == tenant.id, _containing(ContactAddress.address, text)
        )
        by_company = select(Company.id).where(
            Company.tenant_id == tenant.id, _containing(Company.name, text)
        )
        query = query.where(
            _containing(Contact.name, text)
            | Contact.id.in_(by_address)
            | Contact.company_id.in_(by_company)
        )
    if after is not None:
        query = query.where(Contact.id > after)
    if limit is not None:
        query = query.limit(limit)
    rows = session.scalars(query)
    return [
        {
            "id": contact.id,
            "name": contact.name,
            "company": contact.company.name if contact.company else None,
            "addresses": [a.address for a in contact.addresses],
        }
        for contact in rows
    ]


def contact(session: Session, row: Contact) -> dict[str, Any]:
    """One contact in full, with how many activities it takes part in."""
    activities = session.scalar(
        select(func.count(func.distinct(Participant.activity_id))).where(
            Participant.contact_id == row.id
        )
    )
    return {
        "id": row.id,
        "name": row.name,
        "company": row.company.name if row.company else None,
        "addresses": [a.address for a in row.addresses],
        "activities": int(activities or 0),
        "created_at": _time(row.created_at),
    }


def company(session: Session, row: Company) -> dict[str, Any]:
    """One company in full, with its contacts."""
    members = session.scalars(
        select(Contact)
        .where(Contact.company_id == row.id)
        .options(selectinload(Contact.addresses))
        .order_by(Contact.id)
    )
    return {
        "id": row.id,
        "name": row.name,
        "domains": sorted(d.domain for d in row.domains),
        "contacts": [
            {"id": c.id, "name": c.name, "addresses": [a.address for a in c.addresses]}
            for c in members
        ],
        "created_at": _time(row.created_at),
    }


def never_log(
    session: Session, tenant: Tenant, staff: Staff | None = None, *, every_scope: bool = False
) -> list[dict[str, Any]]:
    """The tenant-wide never-log list, one staff member's, or (``every_scope``) all of them."""
    query = select(NeverLog).where(NeverLog.tenant_id == tenant.id)
    if staff is not None:
        query = query.where(NeverLog.staff_id == staff.id)
    elif not every_scope:
        query = query.where(NeverLog.staff_id.is_(None))
    rows = session.scalars(query.order_by(NeverLog.staff_id, NeverLog.pattern)).all()
    names = _staff_names(session, {r.staff_id for r in rows if r.staff_id is not None})
    return [
        {
            "id": row.id,
            "pattern": row.pattern,
            "kind": "address" if "@" in row.pattern else "domain",
            "staff": names.get(row.staff_id) if row.staff_id is not None else None,
        }
        for row in rows
    ]


def contact_addresses_count(session: Session, tenant: Tenant) -> int:
    """How many contact addresses the tenant has; what an import adds to."""
    return _count(session, ContactAddress, ContactAddress.tenant_id == tenant.id)


def companies(session: Session, tenant: Tenant, *, search: str = "") -> list[dict[str, Any]]:
    """A tenant's companies with their domains and how many contacts each has; ``search``
    keeps those whose name or one of whose domains contains it."""
    counted = session.execute(
        select(Contact.company_id, func.count())
        .where(Contact.tenant_id == tenant.id)
        .group_by(Contact.company_id)
    )
    counts = dict(counted.all())
    query = select(Company).where(Company.tenant_id == tenant.id)
    if search.strip():
        text = search.strip()
        by_domain = select(CompanyDomain.company_id).where(
            CompanyDomain.tenant_id == tenant.id, _containing(CompanyDomain.domain, text)
        )
        query = query.where(_containing(Company.name, text) | Company.id.in_(by_domain))
    rows = session.scalars(query.options(selectinload(Company.domains)).order_by(Company.name))
    return [
        {
            "id": company.id,
            "name": company.name,
            "domains": sorted(d.domain for d in company.domains),
            "contacts": counts.get(company.id, 0),
        }
        for company in rows
    ]


# --- activities -------------------------------------------------------------------------------

# The columns of an activity that its representation shows, and the feed's position: never the
# bodies, which a page of a hundred activities would read only to drop.
_SHOWN = (
    Activity.id,
    Activity.tenant_id,
    Activity.direction,
    Activity.subject,
    Activity.from_address,
    Activity.from_name,
    Activity.staff_id,
    Activity.message_id,
    Activity.thread_id,
    Activity.occurred_at,
    Activity.created_at,
    Activity.updated_at,
    Activity.private,
    Activity.auth,
    Activity.regarding,
    Activity.regarding_type,
    Activity.regarding_ref,
    Activity.feed_position,
    Activity.kind,
)


def activity_rows() -> Select[Any]:
    """Activities as plain rows of the columns ``activity_dicts`` shows, for lists and feeds.

    Rows, not ORM objects: building and tracking an object per activity and per participant
    was most of a page's time. Execute with ``session.execute`` (not ``scalars``).
    """
    return select(*_SHOWN)


def activity_links(activity_id: int, base_url: str = "") -> dict[str, str]:
    """Where the API serves an activity and its raw message; relative when no base is given."""
    here = f"{base_url}/v1/activities/{activity_id}"
    return {"self": here, "raw": f"{here}/raw"}


def regarding_dict(row: Any) -> dict[str, str] | None:
    """The CRM record an activity is about, or None when nobody has said yet."""
    if not row.regarding_type:
        return None
    return {"type": row.regarding_type, "id": row.regarding_ref, "label": row.regarding}


def activity_dicts(
    session: Session, rows: Sequence[Any], *, base_url: str = ""
) -> list[dict[str, Any]]:
    """Activities as the CLI, the API and webhooks all show them (DESIGN §10 and §11).

    ``rows`` are ``Activity`` objects or rows of ``activity_rows()``: only their columns are
    read. Participants, sources and attachments come in one query each for all of ``rows``.
    ``base_url`` is ``[http] public_url``: the links in the object are absolute with it.
    """
    return _activity_dicts(session, rows, base_url)


def _grouped(connection: Connection, query: Executable, ids: list[int]) -> dict[int, list[Any]]:
    """Rows whose first column is an activity id, listed under it in the query's order."""
    grouped: dict[int, list[Any]] = {}
    for row in connection.execute(query, {"ids": ids}):
        found = grouped.get(row[0])
        if found is None:
            grouped[row[0]] = [row]
        else:
            found.append(row)
    return grouped


def core_connection(session: Session) -> Connection:
    """The session's connection, for reads that need rows of columns and nothing else.

    Executed on the connection, a select returns plain rows without the ORM's per-statement
    and per-row machinery, which was a third of a feed page's time. The session's pending
    changes are flushed first, as ``session.execute`` would (a webhook event is built inside
    the transaction that recorded its activity).
    """
    session.flush()
    return session.connection()


# The children of a page of activities, built once: only the list of ids changes between
# calls (an expanding parameter), so no statement is rebuilt or re-keyed per page.
_IDS: BindParameter[Any] = bindparam("ids", expanding=True)
PARTICIPANTS_OF_IDS = (
    select(
        Participant.activity_id,
        Participant.role,
        Participant.address,
        Participant.name,
        Participant.kind,
    )
    .where(Participant.activity_id.in_(_IDS))
    .order_by(Participant.activity_id, Participant.id)
)
SOURCES_OF_IDS = (
    select(
        ActivitySource.activity_id,
        ActivitySource.message_id,
        ActivitySource.kind,
        ActivitySource.staff_id,
        ReceivedMessage.queue_id,
        ReceivedMessage.mail_from,
        ReceivedMessage.received_at,
        MessageRoute.rcpt,
    )
    .outerjoin(ReceivedMessage, ReceivedMessage.id == ActivitySource.message_id)
    .outerjoin(MessageRoute, MessageRoute.id == ActivitySource.route_id)
    .where(ActivitySource.activity_id.in_(_IDS))
    .order_by(ActivitySource.activity_id, ActivitySource.id)
)
ATTACHMENTS_OF_IDS = (
    select(
        Attachment.activity_id,
        Attachment.filename,
        Attachment.content_type,
        Attachment.size,
        Attachment.inline,
        Attachment.content_id,
        Attachment.blob,
    )
    .where(Attachment.activity_id.in_(_IDS))
    .order_by(Attachment.activity_id, Attachment.id)
)
_TENANT_NAMES_OF_IDS = select(Tenant.id, Tenant.name).where(Tenant.id.in_(_IDS))
_STAFF_NAMES_OF_IDS = select(Staff.id, Staff.username).where(Staff.id.in_(_IDS))


def _names(connection: Connection, query: Executable, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    return dict(connection.execute(query, {"ids": list(ids)}).all())


def _attachment_dicts(here: str, rows: list[Any]) -> list[dict[str, Any]]:
    # Numbered from 1 in the order they were stored, as /attachments/{n} serves them.
    return [
        {
            "n": n,
            "name": filename,
            "type": content_type,
            "size": size,
            "inline": inline,
            "content_id": content_id,
            "url": f"{here}/attachments/{n}",
            # The names `--json` has always printed, kept for scripts written against them.
            "filename": filename,
            "content_type": content_type,
            "blob": blob,
        }
        for n, (_, filename, content_type, size, inline, content_id, blob) in enumerate(
            rows, start=1
        )
    ]


# Participants of these kinds are not the activity's contacts.
_NOT_CONTACTS = (PartyKind.STAFF, PartyKind.UNMATCHED)
_SHOWN_KEYS = tuple(column.key for column in _SHOWN)


def _shown_values(rows: Sequence[Any]) -> Sequence[Sequence[Any]]:
    """``rows`` as tuples of the ``_SHOWN`` columns, in that order, objects or rows alike."""
    if isinstance(rows[0], Activity):
        return [tuple(getattr(row, key) for key in _SHOWN_KEYS) for row in rows]
    return rows  # rows of activity_rows() are tuples of those columns already


def _activity_dicts(
    session: Session, rows: Sequence[Any], base_url: str = ""
) -> list[dict[str, Any]]:
    if not rows:
        return []
    shown = _shown_values(rows)
    ids = [values[0] for values in shown]
    connection = core_connection(session)
    participants = _grouped(connection, PARTICIPANTS_OF_IDS, ids)
    sources = _grouped(connection, SOURCES_OF_IDS, ids)
    attachments = _grouped(connection, ATTACHMENTS_OF_IDS, ids)
    tenant_names = _names(connection, _TENANT_NAMES_OF_IDS, {values[1] for values in shown})
    staff_ids = {values[6] for values in shown if values[6] is not None}
    staff_ids.update(s[3] for found in sources.values() for s in found if s[3])
    staff_names = _names(connection, _STAFF_NAMES_OF_IDS, staff_ids)
    base = f"{base_url}/v1/activities/"
    result = []
    for (
        id_,
        tenant_id,
        direction,
        subject,
        from_address,
        from_name,
        staff_id,
        message_id,
        thread_id,
        occurred_at,
        created_at,
        updated_at,
        private,
        auth,
        regarding,
        regarding_type,
        regarding_ref,
        _feed_position,
        kind,
        *_,
    ) in shown:
        parties = participants.get(id_, ())
        here = f"{base}{id_}"
        result.append(
            {
                "id": id_,
                "tenant": tenant_names.get(tenant_id),
                "kind": kind,
                "direction": direction.value,
                "subject": subject,
                "from": from_address,
                "from_name": from_name,
                "staff": staff_names.get(staff_id) if staff_id else None,
                "contacts": list(dict.fromkeys(p[2] for p in parties if p[4] not in _NOT_CONTACTS)),
                "message_id": message_id,
                "thread": thread_id,
                "thread_id": thread_id,
                "occurred_at": _time(occurred_at),
                "created_at": _time(created_at),
                "updated_at": _time(updated_at),
                "private": private,
                "auth": auth,
                "participants": [
                    {"role": role, "address": address, "name": name, "kind": kind.value}
                    for _, role, address, name, kind in parties
                ],
                "sources": [_source_dict(source, staff_names) for source in sources.get(id_, ())],
                "attachments": _attachment_dicts(here, attachments.get(id_, [])),
                "regarding": {"type": regarding_type, "id": regarding_ref, "label": regarding}
                if regarding_type
                else None,
                "links": {"self": here, "raw": f"{here}/raw"},
            }
        )
    return result


def _source_dict(source: Any, staff_names: dict[int, str]) -> dict[str, Any]:
    # queue_id, mail_from and received_at are None when the outer join found no message.
    _, message, kind, staff_id, queue_id, mail_from, received_at, rcpt = source
    return {
        "message": message,
        "queue_id": queue_id,
        "kind": kind.value,
        "rcpt": rcpt,
        "staff": staff_names.get(staff_id) if staff_id else None,
        "mail_from": mail_from,
        "received_at": _time(received_at),
    }


def activities(
    session: Session, tenant: Tenant | None = None, limit: int = DEFAULT_LIMIT
) -> list[dict[str, Any]]:
    """The newest activities first, of one tenant or of all."""
    return list(iter_activities(session, tenant, limit=limit))


def count_activities(session: Session, tenant: Tenant | None = None) -> int:
    """How many activities there are, of one tenant or of all; what a list is out of."""
    where = [Activity.tenant_id == tenant.id] if tenant is not None else []
    return _count(session, Activity, *where)


def iter_activities(
    session: Session,
    tenant: Tenant | None = None,
    *,
    limit: int | None = DEFAULT_LIMIT,
    base_url: str = "",
) -> Iterator[dict[str, Any]]:
    """The newest activities first, read a page at a time; every one when ``limit`` is None."""
    query = activity_rows()
    if tenant is not None:
        query = query.where(Activity.tenant_id == tenant.id)
    for rows in _pages(session, query, Activity.occurred_at, Activity.id, limit, objects=False):
        yield from _activity_dicts(session, rows, base_url)


def _pages(
    session: Session,
    query: Select[Any],
    at: Any,
    key: Any,
    limit: int | None,
    *,
    objects: bool = True,
) -> Iterator[Sequence[Any]]:
    """Rows newest first in pages, each after the last one seen (keyset: no OFFSET rescans).

    ``objects``: the query selects one ORM entity; otherwise it selects columns, as rows.
    """
    left = limit
    last: tuple[Any, Any] | None = None
    while left is None or left > 0:
        size = PAGE_ROWS if left is None else min(PAGE_ROWS, left)
        page = query.order_by(at.desc(), key.desc()).limit(size)
        if last is not None:
            page = page.where(or_(at < last[0], and_(at == last[0], key < last[1])))
        result = session.execute(page)
        rows: Sequence[Any] = result.scalars().all() if objects else result.all()
        if not rows:
            return
        yield rows
        if left is not None:
            left -= len(rows)
        if len(rows) < size:
            return
        tail = rows[-1]
        last = (getattr(tail, at.key), getattr(tail, key.key))


def activity_query() -> Select[Any]:
    """Activities as ORM objects, for one activity that is read in full or changed.

    ``activity_dicts`` loads what else the representation needs; lists use ``activity_rows``.
    """
    return select(Activity)


def activity(session: Session, activity_id: int, *, base_url: str = "") -> dict[str, Any]:
    """One activity in full, with the trace of every message it was recorded from."""
    row = session.scalars(activity_query().where(Activity.id == activity_id)).one_or_none()
    if row is None:
        raise NotFoundError(f"no activity {activity_id}")
    data = _activity_dicts(session, [row], base_url)[0]
    message_ids = sorted({s["message"] for s in data["sources"]})
    entries = session.scalars(
        select(TraceEntry).where(TraceEntry.message_id.in_(message_ids)).order_by(TraceEntry.id)
    )
    data["text_body"] = row.text_body
    data["trace"] = [{"message": e.message_id, **_trace_dict(e)} for e in entries]
    return data


# --- received messages ------------------------------------------------------------------------


def _trace_dict(entry: TraceEntry) -> dict[str, Any]:
    return {
        "time": _time(entry.at),
        "step": entry.step,
        "decision": entry.decision,
        "detail": entry.detail,
    }


def _of_tenant(tenant_id: int) -> Any:
    """Messages routed (at least in part) to the tenant: what its API token may see."""
    return ReceivedMessage.routes.any(MessageRoute.tenant_id == tenant_id)


def _message_dicts(
    session: Session, rows: Sequence[ReceivedMessage], tenant_id: int | None = None
) -> list[dict[str, Any]]:
    tenant_ids = {r.tenant_id for m in rows for r in m.routes}
    tenant_names = _tenant_names(session, tenant_ids)
    staff_names = _staff_names(session, {r.staff_id for m in rows for r in m.routes if r.staff_id})
    return [
        {
            "id": message.id,
            "queue_id": message.queue_id,
            "trace_id": message.trace_id,
            "state": message.state.value,
            "reason": message.reason,
            "mail_from": message.mail_from,
            "rcpt_to": list(message.rcpt_to),
            "message_id": message.message_id,
            "received_at": _time(message.received_at),
            "peer": message.peer,
            "size": message.size,
            "routes": [
                {
                    "rcpt": route.rcpt,
                    "kind": route.kind.value,
                    "tenant": tenant_names.get(route.tenant_id),
                    "staff": staff_names.get(route.staff_id) if route.staff_id else None,
                    "outcome": route.outcome,
                    "activity": route.activity_id,
                }
                for route in message.routes
                if tenant_id is None or route.tenant_id == tenant_id
            ],
        }
        for message in rows
    ]


def messages(
    session: Session, state: MessageState | None = None, limit: int = DEFAULT_LIMIT
) -> list[dict[str, Any]]:
    """Received messages, newest first, optionally in one state."""
    return list(iter_messages(session, state, limit=limit))


def count_messages(
    session: Session, state: MessageState | None = None, *, tenant_id: int | None = None
) -> int:
    """How many received messages there are, optionally in one state or of one tenant."""
    where = [ReceivedMessage.state == state] if state is not None else []
    if tenant_id is not None:
        where.append(_of_tenant(tenant_id))
    return _count(session, ReceivedMessage, *where)


def iter_messages(
    session: Session,
    state: MessageState | None = None,
    *,
    limit: int | None = DEFAULT_LIMIT,
    tenant_id: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Received messages newest first, a page at a time; every one when ``limit`` is None.

    With ``tenant_id`` only the tenant's messages, showing only its own routes (the API).
    """
    query = select(ReceivedMessage).options(selectinload(ReceivedMessage.routes))
    if state is not None:
        query = query.where(ReceivedMessage.state == state)
    if tenant_id is not None:
        query = query.where(_of_tenant(tenant_id))
    for rows in _pages(session, query, ReceivedMessage.received_at, ReceivedMessage.id, limit):
        yield from _message_dicts(session, rows, tenant_id)


# Row numbers are small; queue ids are 20 hex digits (store/queueids.py) and may happen to be
# all digits, so a number this long is never taken for a row number.
_ROW_NUMBER_DIGITS = 18


def get_message(
    session: Session, ref: int | str, *, tenant_id: int | None = None
) -> ReceivedMessage:
    """A received message by row number, queue ID or Message-ID (``<…>`` optional).

    The names people have: the row number the CLI lists, the queue ID of the ``250`` reply
    and every log line, the Message-ID the sender knows. A Message-ID several messages carry
    (the same email received twice) is refused with their row numbers, so the operator picks.
    With ``tenant_id`` (the API) a message of other tenants only is not found at all.
    """
    text = str(ref).strip()
    mine = [_of_tenant(tenant_id)] if tenant_id is not None else []
    if text.isdigit() and len(text) <= _ROW_NUMBER_DIGITS:
        found = session.scalars(
            select(ReceivedMessage).where(ReceivedMessage.id == int(text), *mine)
        ).one_or_none()
        if found is not None:
            return found
    by_queue = session.scalars(
        select(ReceivedMessage).where(ReceivedMessage.queue_id == text.upper(), *mine)
    ).one_or_none()
    if by_queue is not None:
        return by_queue
    bare = text.removeprefix("<").removesuffix(">").strip()
    if bare:
        matches = session.scalars(
            select(ReceivedMessage)
            .where(ReceivedMessage.message_id.in_((f"<{bare}>", bare)), *mine)
            .order_by(ReceivedMessage.id)
        ).all()
        if len(matches) == 1:
            return matches[0]
        if matches:
            listed = ", ".join(
                f"{m.id} (queue ID {m.queue_id}, {m.state.value}, {_time(m.received_at)})"
                for m in matches
            )
            raise NotFoundError(
                f"Message-ID <{bare}> names {len(matches)} received messages: {listed}; "
                "name one by its row number or queue ID"
            )
    raise NotFoundError(
        f"no received message {text} (looked for it as row number, queue ID and Message-ID)"
    )


def message(session: Session, ref: int | str, *, tenant_id: int | None = None) -> dict[str, Any]:
    """One received message in full: session facts, routes, processing state and trace."""
    row = get_message(session, ref, tenant_id=tenant_id)
    data = _message_dicts(session, [row], tenant_id)[0]
    data.update(
        {
            "helo": row.helo,
            "tls": row.tls,
            "blob": row.blob,
            "attempts": row.attempts,
            "claimed_by": row.claimed_by,
            "claim_expires_at": _time(row.claim_expires_at),
            "finished_at": _time(row.finished_at),
            "force_record": row.force_record,
            "auth": row.auth,
            "trace": [_trace_dict(entry) for entry in row.trace],
        }
    )
    return data


def trace(
    session: Session, ref: int | str, *, tenant_id: int | None = None
) -> list[dict[str, Any]]:
    """What each processing step decided about a message, oldest first."""
    return [_trace_dict(entry) for entry in get_message(session, ref, tenant_id=tenant_id).trace]


def forwarding_confirmations(session: Session, staff: Staff) -> list[dict[str, Any]]:
    """A staff member's forwarding confirmations, newest first, with code and link."""
    rows = session.scalars(
        select(ForwardingConfirmation)
        .where(ForwardingConfirmation.staff_id == staff.id)
        .order_by(ForwardingConfirmation.received_at.desc(), ForwardingConfirmation.id.desc())
    )
    return [
        {
            "id": row.id,
            "provider": row.provider,
            "code": row.code,
            "link": row.link,
            "requested_by": row.requested_by,
            "received_at": _time(row.received_at),
            "message": row.message_id,
            "handback": row.handback_state,
            "primary_address": staff.primary_address,
        }
        for row in rows
    ]
