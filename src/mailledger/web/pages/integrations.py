"""The integrations page: everything the capture needs from one staff member, and their record.

Every query is scoped by the session's tenant first, then by the staff member (an admin's
session widens the activity page to the tenant). What belongs to someone else is a 404, the
same as what does not exist (DESIGN §11).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, selectinload
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailledger.config import Settings, split_listen
from mailledger.forwarding.handback import forwarding_status
from mailledger.mail.addresses import capture_address
from mailledger.store import queries
from mailledger.store.models import (
    Activity,
    Direction,
    MessageRoute,
    MessageState,
    Participant,
    ReceivedMessage,
    Staff,
    Tenant,
)
from mailledger.store.websessions import WebIdentity
from mailledger.web.pages.identity import current
from mailledger.web.pages.site import pages_of

RECENT = 20


def smtp_settings(settings: Settings) -> list[dict[str, str]]:
    """The relay's listeners as a mail client's settings name them."""
    found = []
    for security, addresses in (
        ("STARTTLS", settings.submission.listen),
        ("SSL/TLS", settings.submission.listen_tls),
    ):
        for address in addresses:
            _, port = split_listen(address)
            found.append({"port": str(port), "security": security})
    return found


def _other_party(activity: Activity) -> str:
    if activity.direction == Direction.INBOUND:
        return activity.from_address
    to = [p.address for p in activity.participants if p.role in ("to", "cc")]
    return ", ".join(to[:2]) + (" …" if len(to) > 2 else "")


def _involves(identity: WebIdentity) -> Any:
    """Activities this staff member brought in or took part in."""
    took_part = select(Participant.activity_id).where(Participant.staff_id == identity.staff_id)
    return or_(Activity.staff_id == identity.staff_id, Activity.id.in_(took_part))


def recent_activities(session: Session, identity: WebIdentity) -> list[dict[str, Any]]:
    """The staff member's latest activities: subject, other party, when."""
    rows = session.scalars(
        select(Activity)
        .where(Activity.tenant_id == identity.tenant_id, _involves(identity))
        .options(selectinload(Activity.participants))
        .order_by(Activity.occurred_at.desc(), Activity.id.desc())
        .limit(RECENT)
    )
    return [
        {
            "id": row.id,
            "subject": row.subject or "(no subject)",
            "direction": str(row.direction),
            "other": _other_party(row),
            "when": row.occurred_at,
        }
        for row in rows
    ]


def quarantined_mail(session: Session, identity: WebIdentity) -> list[dict[str, Any]]:
    """Quarantined mail addressed to this staff member's capture address or sent by them."""
    routed = select(MessageRoute.message_id).where(
        MessageRoute.tenant_id == identity.tenant_id, MessageRoute.staff_id == identity.staff_id
    )
    rows = session.scalars(
        select(ReceivedMessage)
        .where(
            ReceivedMessage.state == MessageState.QUARANTINED,
            or_(
                ReceivedMessage.id.in_(routed),
                ReceivedMessage.submitted_by_staff_id == identity.staff_id,
            ),
        )
        .order_by(ReceivedMessage.received_at.desc(), ReceivedMessage.id.desc())
        .limit(RECENT)
    )
    return [
        {"sender": row.mail_from or "(null sender)", "when": row.received_at, "reason": row.reason}
        for row in rows
    ]


def integrations_view(
    session: Session, identity: WebIdentity, settings: Settings
) -> dict[str, Any]:
    """Everything the integrations page shows, read in one session."""
    staff = session.get_one(Staff, identity.staff_id)
    tenant = session.get_one(Tenant, identity.tenant_id)
    confirmations = [
        c for c in queries.forwarding_confirmations(session, staff) if c["code"] or c["link"]
    ]
    return {
        "staff": {"username": staff.username, "name": staff.name,
                  "primary_address": staff.primary_address, "admin": staff.admin},
        "tenant": tenant.name,
        "capture_address": capture_address(staff.username, tenant.capture_domain),
        "log_address": capture_address("log", tenant.capture_domain),
        "forwarding": forwarding_status(session, staff),
        "confirmation": confirmations[0] if confirmations else None,
        "smtp_host": settings.service.hostname,
        "smtp_ports": smtp_settings(settings),
        "smtp_password_set": staff.password_hash is not None,
        "activities": recent_activities(session, identity),
        "quarantined": quarantined_mail(session, identity),
    }  # fmt: skip


def activity_view(
    session: Session, identity: WebIdentity, activity_id: int
) -> dict[str, Any] | None:
    """One activity the session may see (its tenant, and its staff member unless admin)."""
    query = select(Activity).where(
        Activity.tenant_id == identity.tenant_id, Activity.id == activity_id
    )
    if not identity.admin:
        query = query.where(_involves(identity))
    row = session.scalars(query.options(selectinload(Activity.participants))).one_or_none()
    if row is None:
        return None
    return {
        "subject": row.subject or "(no subject)",
        "direction": str(row.direction),
        "when": row.occurred_at,
        "participants": [
            {"role": p.role, "address": p.address, "name": p.name, "kind": str(p.kind)}
            for p in row.participants
        ],
        "text": row.text_body,
        "private": row.private,
    }


async def home(request: Request) -> Response:
    """``/``: the integrations page, or the sign-in form."""
    pages = pages_of(request)
    if await current(request) is None:
        return pages.redirect("/signin")
    return pages.redirect("/integrations")


async def integrations(request: Request) -> Response:
    """The integrations page of the signed-in staff member."""
    pages = pages_of(request)
    identity = await current(request)
    if identity is None:
        return pages.redirect("/signin")

    def view(session: Session) -> dict[str, Any]:
        return integrations_view(session, identity, pages.settings)

    values = await pages.read(view)
    return pages.page("integrations.html", signed_in=True, csrf_token=identity.csrf_token, **values)


async def activity(request: Request) -> Response:
    """One of the staff member's activities; anyone else's is a 404."""
    pages = pages_of(request)
    identity = await current(request)
    if identity is None:
        return pages.redirect("/signin")
    try:
        activity_id = int(request.path_params["activity_id"])
    except ValueError:
        return pages.not_found()

    def view(session: Session) -> dict[str, Any] | None:
        return activity_view(session, identity, activity_id)

    found = await pages.read(view)
    if found is None:
        return pages.not_found()
    return pages.page(
        "activity.html", signed_in=True, csrf_token=identity.csrf_token, activity=found
    )


ROUTES = [
    Route("/", home, methods=["GET"]),
    Route("/integrations", integrations, methods=["GET"]),
    Route("/activities/{activity_id}", activity, methods=["GET"]),
]
