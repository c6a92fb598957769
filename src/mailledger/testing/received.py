"""Received messages in tests: a quarantined one, as the processing worker leaves it."""

from __future__ import annotations

import secrets

from sqlalchemy.orm import Session

from mailledger.mail.addresses import capture_address
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.models import (
    MessageRoute,
    MessageState,
    ReceivedMessage,
    RouteKind,
    Staff,
    Tenant,
    TraceEntry,
)


def insert_quarantined(
    session: Session,
    tenant: Tenant,
    staff: Staff,
    *,
    raw: bytes | None = None,
    blobs: BlobBackend | None = None,
    reason: str = "unknown-sender: stranger@elsewhere.example",
) -> int:
    """A message routed to ``staff``'s capture address and quarantined; returns its row id.

    With ``blobs`` the raw bytes are stored, so a release can process it for real.
    """
    queue_id = secrets.token_hex(10).upper()
    data = raw or f"Subject: held {queue_id}\r\n\r\nbody\r\n".encode()
    digest = blobs.put(data) if blobs is not None else "0" * 64
    rcpt = capture_address(staff.username, tenant.capture_domain)
    message = ReceivedMessage(
        queue_id=queue_id,
        trace_id=f"T{queue_id}",
        blob=digest,
        size=len(data),
        peer="127.0.0.1:5000",
        mail_from="stranger@elsewhere.example",
        rcpt_to=[rcpt],
        state=MessageState.QUARANTINED,
        reason=reason,
        message_id=f"<{queue_id.lower()}@elsewhere.example>",
    )
    message.routes.append(
        MessageRoute(tenant_id=tenant.id, kind=RouteKind.USER, staff_id=staff.id, rcpt=rcpt)
    )
    message.trace.append(TraceEntry(step="policy", decision="quarantine", detail=reason))
    session.add(message)
    session.flush()
    return message.id
