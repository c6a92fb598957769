"""Our own mail to a tenant's staff (sign-in links, alerts, account notices), queued on our relay.

Every system mail takes this one path: from the tenant's system sender
(``domains.systemsender``: its chosen address once that domain's DKIM key is verified, else
``[service] system_address``), composed by ``mail.compose`` (7-bit bodies, so no relay on the
way needs 8BITMIME), DKIM-signed with the tenant's key for the sender's domain when it has a
verified one and sent unsigned otherwise (a sign-in link or a warning held for want of a key
would never be read), onto the relay's outbound queue as ``OutboundKind.SYSTEM``. It lives
below the packages that send such mail (forwarding, sync, web), so each calls it rather than
keeping a copy.

A mail that must go once (a webhook's failing spell, a broken forward, an account's
"re-connect me") passes ``claim``: a function run in the queueing transaction that marks the
mail sent and says whether it was still owed, so a crash or a second node never mails twice
and a mail not queued is owed still.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Final

from sqlalchemy.orm import Session, sessionmaker

from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.domains.signing import SigningOutcome, sign_outgoing
from mailledger.domains.systemsender import SystemSender, system_sender
from mailledger.logs import get_logger
from mailledger.mail.addresses import Mailbox, parse_address
from mailledger.mail.compose import Draft, compose, new_message_id
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.engine import reading
from mailledger.store.models import OutboundKind, utcnow
from mailledger.store.outbox import enqueue

log = get_logger(__name__)

SENDER_NAME: Final = "mailledger"
# RFC 3834 §5: automatic mail, so vacation responders and auto-forwarders leave it alone.
AUTO_SUBMITTED: Final = b"Auto-Submitted: auto-generated\r\n"


def system_message(sender: str, to: str, subject: str, body: str) -> bytes:
    """A plain-text mail from us (nothing for a mail client to rewrite), as relay-ready bytes."""
    origin = parse_address(sender)
    rcpt = parse_address(to)
    # A non-ASCII local part cannot be written in a header without SMTPUTF8; the envelope
    # still carries it, and To is optional (RFC 5322 §3.6).
    shown = [rcpt] if rcpt.local.isascii() else []
    draft = Draft(
        sender=Mailbox(SENDER_NAME, origin.local, origin.domain),
        to=shown,
        cc=(),
        subject=subject,
        text=body,
        html=None,
        date=utcnow(),
        message_id=new_message_id(origin.domain),
    )
    return AUTO_SUBMITTED + compose(draft)


async def queue_system_mail(
    sessions: sessionmaker[Session],
    resolver: Resolver,
    blobs: BlobBackend,
    settings: Settings,
    *,
    tenant_id: int,
    recipients: Sequence[tuple[int, str]],
    subject: str,
    body: str,
    claim: Callable[[Session], bool] | None = None,
    on_queued: Sequence[Callable[[], object]] = (),
) -> int:
    """Queue one mail per ``(staff_id, address)``; how many were queued (0: not owed).

    ``on_queued`` (the delivery worker's ``wake``) run once the mail is committed, so it
    leaves now rather than at the next poll.
    """
    if not recipients:
        return 0

    def sender_of() -> SystemSender:
        with reading(sessions) as session:
            return system_sender(session, tenant_id, settings.service)

    chosen = await asyncio.to_thread(sender_of)
    sender = chosen.address
    relay = settings.relay.model_copy(update={"unsigned_policy": "send"})
    ready: list[tuple[int, str, SigningOutcome]] = []
    for staff_id, address in recipients:
        outcome = await sign_outgoing(
            sessions,
            resolver,
            relay,
            raw=system_message(sender, address, subject, body),
            tenant_id=tenant_id,
            from_domain=chosen.domain,
            key_file=settings.secrets.key_file,
        )
        ready.append((staff_id, address, outcome))

    def queue() -> int:
        with sessions.begin() as session:
            if claim is not None and not claim(session):
                return 0
            for staff_id, address, outcome in ready:
                enqueue(
                    session,
                    blobs,
                    raw=outcome.raw,
                    mail_from=sender,
                    rcpt_to=[address],
                    kind=OutboundKind.SYSTEM,
                    tenant_id=tenant_id,
                    staff_id=staff_id,
                    signing=outcome.signing,
                )
            return len(ready)

    queued = await asyncio.to_thread(queue)
    if queued:
        signing = sorted({outcome.signing for _, _, outcome in ready})
        log.info("system mail queued", tenant_id=tenant_id, mails=queued, signing=signing)
        for wake in on_queued:
            wake()
    return queued
