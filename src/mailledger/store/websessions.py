"""Web sign-in: one-time links and browser sessions, for the pages and ``web link`` alike.

A sign-in link holds 32 random bytes; a session cookie too. Only their SHA-256 is stored
(as with API tokens: the values are long and random, so a fast hash cannot be searched back),
so a copy of the database signs nobody in. A link works once and for ``LINK_LIFETIME``; a
session lasts ``SESSION_LIFETIME`` or until its owner signs out, and stops working as soon as
the staff member or the tenant is disabled or removed.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from mailledger.store.models import SigninToken, Staff, Tenant, WebSession, utcnow

LINK_LIFETIME = timedelta(minutes=15)
SESSION_LIFETIME = timedelta(hours=12)


@dataclass(frozen=True)
class WebIdentity:
    """Who a browser session speaks for: one staff member of one tenant (admin: the tenant)."""

    session_id: int
    tenant_id: int
    staff_id: int
    admin: bool
    csrf_token: str


def secret_hash(value: str) -> str:
    """The stored form of a link token or session cookie."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _active(staff: Staff, tenant: Tenant) -> bool:
    return staff.disabled_at is None and staff.removed_at is None and tenant.disabled_at is None


def create_link(session: Session, staff: Staff) -> str:
    """A new one-time sign-in token for ``staff``; returned once, never stored."""
    token = secrets.token_urlsafe(32)
    session.add(
        SigninToken(
            tenant_id=staff.tenant_id,
            staff_id=staff.id,
            token_hash=secret_hash(token),
            expires_at=utcnow() + LINK_LIFETIME,
        )
    )
    session.flush()
    return token


def link_is_usable(session: Session, token: str) -> bool:
    """Whether a link would sign in now (unused, unexpired, its owner active); uses nothing."""
    return _usable_link(session, token) is not None


def _usable_link(session: Session, token: str) -> SigninToken | None:
    found = session.execute(
        select(SigninToken, Staff, Tenant)
        .join(Staff, Staff.id == SigninToken.staff_id)
        .join(Tenant, Tenant.id == SigninToken.tenant_id)
        .where(SigninToken.token_hash == secret_hash(token))
    ).one_or_none()
    if found is None:
        return None
    row, staff, tenant = found
    if row.used_at is not None or row.expires_at <= utcnow() or not _active(staff, tenant):
        return None
    return row


def redeem_link(session: Session, token: str) -> tuple[WebIdentity, str] | None:
    """Use a link once and open a session: the identity and the cookie value, or None.

    The link is marked used by a conditional UPDATE, so two browsers racing with the same
    link get one session between them, on SQLite and PostgreSQL alike.
    """
    row = _usable_link(session, token)
    if row is None:
        return None
    now = utcnow()
    claimed = session.execute(
        update(SigninToken)
        .where(SigninToken.id == row.id, SigninToken.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(claimed, "rowcount", 0) != 1:
        return None
    cookie = secrets.token_urlsafe(32)
    web = WebSession(
        tenant_id=row.tenant_id,
        staff_id=row.staff_id,
        token_hash=secret_hash(cookie),
        csrf_token=secrets.token_urlsafe(32),
        expires_at=now + SESSION_LIFETIME,
    )
    session.add(web)
    session.flush()
    staff = session.get_one(Staff, row.staff_id)
    return WebIdentity(web.id, web.tenant_id, web.staff_id, staff.admin, web.csrf_token), cookie


def identify(session: Session, cookie: str) -> WebIdentity | None:
    """The identity of a session cookie, or None when it is unknown, ended or expired."""
    found = session.execute(
        select(WebSession, Staff, Tenant)
        .join(Staff, Staff.id == WebSession.staff_id)
        .join(Tenant, Tenant.id == WebSession.tenant_id)
        .where(WebSession.token_hash == secret_hash(cookie))
    ).one_or_none()
    if found is None:
        return None
    web, staff, tenant = found
    if web.ended_at is not None or web.expires_at <= utcnow() or not _active(staff, tenant):
        return None
    return WebIdentity(web.id, web.tenant_id, web.staff_id, staff.admin, web.csrf_token)


def end_session(session: Session, session_id: int) -> None:
    """Sign out: the cookie stops working from the next request on."""
    session.execute(
        update(WebSession)
        .where(WebSession.id == session_id, WebSession.ended_at.is_(None))
        .values(ended_at=utcnow())
    )


def staff_for_signin(session: Session, address: str) -> list[Staff]:
    """The active staff members whose primary address is ``address`` (case-insensitive)."""
    wanted = address.strip().lower()
    if not wanted:
        return []
    rows = session.execute(
        select(Staff, Tenant)
        .join(Tenant, Tenant.id == Staff.tenant_id)
        .where(func.lower(Staff.primary_address) == wanted)
        .order_by(Staff.id)
    ).all()
    return [staff for staff, tenant in rows if _active(staff, tenant)]
