"""The mail that tells a tenant's admins that one of their webhook endpoints is failing.

Sent once per failing spell (``store.webhooks.failing_notice``), to every active admin of the
tenant, as system mail (``domains.systemmail``: the tenant's system sender, DKIM-signed when
it can be). The queueing and the "mailed" mark are one transaction, so a crash or a second
node never mails twice, and a mail not queued is owed still.
"""

from __future__ import annotations

import asyncio

from sqlalchemy.orm import Session, sessionmaker

from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.domains.systemmail import queue_system_mail
from mailledger.logs import get_logger
from mailledger.store import webhooks
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.engine import reading
from mailledger.store.webhooks import FailingNotice

log = get_logger(__name__)


def failing_subject(notice: FailingNotice) -> str:
    """The subject: which URL is failing."""
    return f"Webhook endpoint failing: {notice.url}"


def failing_text(notice: FailingNotice) -> str:
    """The plain text to the admins: which URL, since when, why, and how to fix it."""
    since = notice.since.isoformat(timespec="seconds").replace("+00:00", "Z")
    ident = notice.endpoint_id
    return (
        f"mailledger cannot deliver webhook events to an endpoint of {notice.tenant}:\n\n"
        f"  endpoint:       {ident}\n"
        f"  URL:            {notice.url}\n"
        f"  failing since:  {since}\n"
        f"  last failure:   {notice.reason}\n\n"
        f"Every attempt of an event failed, so that event was not delivered. New events are\n"
        f"still sent to this URL; nothing is lost on our side.\n\n"
        f"To put it right:\n"
        f"1. Make the receiver at the URL answer 2xx to our signed POST requests (check its\n"
        f"   logs, TLS certificate, firewall, and that it verifies with the current secret).\n"
        f"2. `mailledger webhook list {notice.tenant}` shows the endpoint's state and why;\n"
        f"   `mailledger webhook deliveries {ident}` shows every attempt and the answer.\n"
        f"3. The next delivery that succeeds clears the failing state by itself;\n"
        f"   `mailledger webhook replay DELIVERY` sends a failed delivery again, and\n"
        f"   `mailledger webhook enable {ident}` marks the endpoint active at once.\n\n"
        f"You get this mail once each time the endpoint starts failing.\n"
    )


async def mail_failing_notice(
    sessions: sessionmaker[Session],
    blobs: BlobBackend,
    resolver: Resolver,
    settings: Settings,
    endpoint_id: int,
) -> bool:
    """Queue the admins' mail owed for the endpoint's failing spell; whether this call did.

    Nothing is queued when no mail is owed (not failing, already mailed, no active admin).
    """

    def owed() -> FailingNotice | None:
        with reading(sessions) as session:
            return webhooks.failing_notice(session, endpoint_id)

    notice = await asyncio.to_thread(owed)
    if notice is None:
        return False
    queued = await queue_system_mail(
        sessions,
        resolver,
        blobs,
        settings,
        tenant_id=notice.tenant_id,
        recipients=notice.admins,
        subject=failing_subject(notice),
        body=failing_text(notice),
        claim=lambda session: webhooks.claim_failing_notice(session, notice),
    )
    if not queued:
        return False
    log.info(
        "webhook endpoint failing: admins mailed",
        endpoint=endpoint_id,
        tenant_id=notice.tenant_id,
        admins=queued,
    )
    return True
