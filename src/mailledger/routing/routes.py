"""Recipient → route, decided at RCPT time from the database (DESIGN §3).

A wrong address is refused in the SMTP dialogue, so the sending server tells its user; we are
never a relay for a domain we do not serve.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, bindparam, func, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.mail import replies
from mailledger.mail.addresses import (
    LOG_LOCAL_PART,
    OPERATOR_LOCAL_PARTS,
    AddressError,
    capture_address,
    fold_local,
    parse_address,
)
from mailledger.mail.replies import Reply
from mailledger.store.inbox import Route
from mailledger.store.models import RouteKind, Staff, Tenant
from mailledger.store.precompiled import Cursor, Statement

# The capture domain's tenant and the staff member a local part names, in one statement run
# on the driver's cursor (``store.precompiled``): one snapshot, no session. A disabled or
# removed staff member's capture address is refused like one that never existed (550
# 5.1.1): the forwarding rule left behind in his mailbox then bounces, which tells whoever
# still forwards to it, instead of filling the record with mail nobody owns.
_ROUTE = Statement(
    select(
        Tenant.id,
        Tenant.capture_domain,
        Tenant.disabled_at,
        select(Staff.id)
        .where(
            Staff.tenant_id == Tenant.id,
            func.lower(Staff.username) == bindparam("username"),
            Staff.disabled_at.is_(None),
            Staff.removed_at.is_(None),
        )
        .scalar_subquery(),
    ).where(Tenant.capture_domain == bindparam("domain"))
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A recipient refused at RCPT, with the reply that says why."""

    reply: Reply


class RecipientRouter:
    """Decides each RCPT TO against the tenants, their capture domains and their staff."""

    def __init__(self, sessions: sessionmaker[Session], *, max_local_part_bytes: int = 64) -> None:
        bind = sessions.kw.get("bind")
        if not isinstance(bind, Engine):
            raise TypeError("RecipientRouter needs sessions bound to an engine")
        self._engine = bind
        self._max_local = max_local_part_bytes

    def route(self, rcpt: str) -> Route | Refusal:
        """The route for one recipient, or the refusal to answer. Blocking: call off the loop."""
        try:
            mailbox = parse_address(rcpt)
        except AddressError:
            return Refusal(replies.BAD_RECIPIENT_SYNTAX)
        if len(mailbox.local.encode("utf-8")) > self._max_local:
            return Refusal(replies.LOCAL_PART_TOO_LONG)
        local = fold_local(mailbox.local)
        # A +tag on a capture address (richard+crm@…) still reaches Richard.
        username = local.split("+", 1)[0] if "+" in local[1:] else local
        with Cursor.reading(self._engine) as sql:
            found = sql.rows(_ROUTE, {"domain": mailbox.domain, "username": username})
        if not found:
            return Refusal(replies.RELAY_DENIED)
        tenant_id, capture_domain, disabled_at, staff_id = found[0]
        address = capture_address(local, capture_domain)
        # postmaster@ and abuse@ stay open on a disabled tenant's domain: they are the
        # operator's (RFC 5321 §4.5.1), not the tenant's capture addresses.
        if local in OPERATOR_LOCAL_PARTS:
            return Route(tenant_id, RouteKind.OPERATOR, None, address)
        if disabled_at is not None:
            return Refusal(replies.UNKNOWN_USER)
        if local == LOG_LOCAL_PART:
            return Route(tenant_id, RouteKind.LOG, None, address)
        if staff_id is None:
            return Refusal(replies.UNKNOWN_USER)
        return Route(tenant_id, RouteKind.USER, staff_id, address)
