"""The sign-in mail: a one-time link to a staff member's primary address, through our relay.

It is queued on the relay's own outbound queue (``OutboundKind.SYSTEM``), from
``[service] system_address``, DKIM-signed when that address's domain has the tenant's
verified key and sent unsigned otherwise: a sign-in link held for want of a key would lock
the staff member out.
"""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from sqlalchemy.orm import Session

from mailledger.domains.signing import sign_outgoing
from mailledger.logs import get_logger
from mailledger.mail.addresses import capture_address
from mailledger.store import websessions
from mailledger.store.models import OutboundKind, Staff, Tenant, utcnow
from mailledger.store.outbox import enqueue
from mailledger.web.pages.site import PagesContext

log = get_logger(__name__)


def signin_url(base_url: str, token: str) -> str:
    """The link a token signs in with."""
    return f"{base_url}/signin/{token}"


def signin_message(sender: str, staff: Staff, tenant: Tenant, url: str) -> EmailMessage:
    """The mail holding the link, in plain text (nothing for a mail client to rewrite)."""
    minutes = int(websessions.LINK_LIFETIME.total_seconds() // 60)
    msg = EmailMessage()
    msg["From"] = f"mailledger <{sender}>"
    msg["To"] = staff.primary_address
    msg["Subject"] = "Your mailledger sign-in link"
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834 §5: no vacation replies to this
    msg.set_content(
        f"Someone (we hope you) asked to sign in to mailledger as\n"
        f"{capture_address(staff.username, tenant.capture_domain)}.\n\n"
        f"Open this link within {minutes} minutes to sign in; it works once:\n\n"
        f"{url}\n\n"
        f"If you did not ask for it, ignore this mail: nobody can sign in without the link.\n"
    )
    return msg


async def mail_signin_links(pages: PagesContext, address: str) -> int:
    """Queue a sign-in link to every active staff member whose primary address this is.

    Returns how many were queued (the page never says: that would tell who has an account).
    """
    sender = pages.settings.service.system_sender

    def prepare(session: Session) -> list[tuple[int, int, str, bytes]]:
        ready = []
        for staff in websessions.staff_for_signin(session, address):
            tenant = session.get_one(Tenant, staff.tenant_id)
            token = websessions.create_link(session, staff)
            message = signin_message(sender, staff, tenant, signin_url(pages.base_url, token))
            raw = message.as_bytes(policy=policy.SMTP)
            ready.append((staff.tenant_id, staff.id, staff.primary_address, raw))
        return ready

    ready = await pages.write(prepare)
    relay = pages.settings.relay.model_copy(update={"unsigned_policy": "send"})
    for tenant_id, staff_id, rcpt, raw in ready:
        outcome = await sign_outgoing(
            pages.sessions,
            pages.resolver,
            relay,
            raw=raw,
            tenant_id=tenant_id,
            from_domain=sender.rpartition("@")[2],
        )

        def queue(
            session: Session, item: tuple[int, int, str] = (tenant_id, staff_id, rcpt)
        ) -> None:
            enqueue(
                session,
                pages.blobs,
                raw=outcome.raw,  # noqa: B023 - awaited below, before the loop moves on
                mail_from=sender,
                rcpt_to=[item[2]],
                kind=OutboundKind.SYSTEM,
                tenant_id=item[0],
                staff_id=item[1],
                signing=outcome.signing,  # noqa: B023 - as above
            )

        await pages.write(queue)
        log.info("sign-in link queued", staff=staff_id, signing=outcome.signing)
    return len(ready)
