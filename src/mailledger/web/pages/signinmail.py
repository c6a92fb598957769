"""The sign-in mail: a one-time link to a staff member's primary address, through our relay.

It is system mail (``domains.systemmail``): from the tenant's system sender, DKIM-signed when
that domain has the tenant's verified key and sent unsigned otherwise (a sign-in link held for
want of a key would lock the staff member out), and the delivery worker is woken so the link
leaves at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy.orm import Session

from mailledger.domains.systemmail import queue_system_mail
from mailledger.logs import get_logger
from mailledger.mail.addresses import capture_address
from mailledger.store import websessions
from mailledger.store.models import Staff, Tenant
from mailledger.web.pages.site import PagesContext

log = get_logger(__name__)

SUBJECT = "Your mailledger sign-in link"


def signin_url(base_url: str, token: str) -> str:
    """The link a token signs in with."""
    return f"{base_url}/signin/{token}"


def signin_text(staff: Staff, tenant: Tenant, url: str) -> str:
    """The mail's plain text: whose link it is, how long it works, what to do if unasked."""
    minutes = int(websessions.LINK_LIFETIME.total_seconds() // 60)
    return (
        f"Someone (we hope you) asked to sign in to mailledger as\n"
        f"{capture_address(staff.username, tenant.capture_domain)}.\n\n"
        f"Open this link within {minutes} minutes to sign in; it works once:\n\n"
        f"{url}\n\n"
        f"If you did not ask for it, ignore this mail: nobody can sign in without the link.\n"
    )


async def mail_signin_links(
    pages: PagesContext, address: str, on_queued: Sequence[Callable[[], object]] = ()
) -> int:
    """Queue a sign-in link to every active staff member whose primary address this is.

    Returns how many were queued (the page never says: that would tell who has an account).
    """

    def prepare(session: Session) -> list[tuple[int, int, str, str]]:
        ready = []
        for staff in websessions.staff_for_signin(session, address):
            tenant = session.get_one(Tenant, staff.tenant_id)
            token = websessions.create_link(session, staff)
            text = signin_text(staff, tenant, signin_url(pages.base_url, token))
            ready.append((tenant.id, staff.id, staff.primary_address, text))
        return ready

    queued = 0
    for tenant_id, staff_id, rcpt, text in await pages.write(prepare):
        queued += await queue_system_mail(
            pages.sessions,
            pages.resolver,
            pages.blobs,
            pages.settings,
            tenant_id=tenant_id,
            recipients=[(staff_id, rcpt)],
            subject=SUBJECT,
            body=text,
            on_queued=on_queued,
        )
        log.info("sign-in link queued", staff=staff_id)
    return queued
