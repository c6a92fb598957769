"""The integrations page: everything the capture needs from one staff member, and their record.

Every query is scoped by the session's tenant first, then by the staff member. The activity
page and the timelines are web/pages/activity.py and web/pages/timeline.py.
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
    ReceivedMessage,
    Staff,
    Tenant,
)
from mailledger.store.timelines import involving
from mailledger.store.websessions import WebIdentity
from mailledger.web.pages.accountsignin import allow_sign_in
from mailledger.web.pages.accountviews import DONE as ACCOUNT_DONE
from mailledger.web.pages.accountviews import mailbox_card
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
    """Activities this staff member brought in or took part in (the activity page's rule)."""
    return involving(identity.staff_id)


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
        "mailbox_accounts": mailbox_card(session, identity),
    }  # fmt: skip


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
    done = ACCOUNT_DONE.get(request.query_params.get("done", ""), "")
    return await render_integrations(request, identity, account_done=done)


async def render_integrations(
    request: Request, identity: WebIdentity, status: int = 200, **extra: Any
) -> Response:
    """The page, with ``extra`` values from a button's answer (a notice, a new password)."""
    pages = pages_of(request)

    def view(session: Session) -> dict[str, Any]:
        return integrations_view(session, identity, pages.settings)

    values = await pages.read(view)
    response = pages.page(
        "integrations.html", status=status, signed_in=True, admin=identity.admin,
        csrf_token=identity.csrf_token, **values, **extra,
    )  # fmt: skip
    # The mailbox card's sign-in buttons lead to Google's and Microsoft's pages.
    return allow_sign_in(response, pages.settings)


ROUTES = [
    Route("/", home, methods=["GET"]),
    Route("/integrations", integrations, methods=["GET"]),
]
