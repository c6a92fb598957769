"""API tokens: made, listed, revoked and checked here, for the CLI and the HTTP API alike.

A token is 32 random bytes behind a readable prefix (``mlt_``), shown once when it is made.
Only its SHA-256 is stored: the token is random and long, so a fast hash cannot be searched
back (a slow password hash is for secrets people choose), and checking a request costs one
indexed lookup.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mailledger.store.models import ApiToken, Tenant, utcnow

TOKEN_PREFIX = "mlt_"  # noqa: S105 - the readable prefix of every token, not a secret
# Characters of the token kept in clear, so `api-token list` can tell tokens apart.
SHOWN_CHARS = 12
# last_used_at is written at most this often per token: a busy client costs no write per call.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class TokenError(LookupError):
    """The token named does not exist (or no longer does)."""


@dataclass(frozen=True)
class TokenIdentity:
    """Who a request's token speaks for: one tenant, and whether it may change anything."""

    token_id: int
    tenant_id: int
    tenant_name: str
    read_only: bool
    last_used_at: datetime | None = None


def token_hash(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(
    session: Session, tenant: Tenant, *, name: str = "", read_only: bool = False
) -> tuple[ApiToken, str]:
    """A new token for ``tenant``; returns the row and the token, which is never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        tenant_id=tenant.id,
        name=name[:200],
        prefix=token[:SHOWN_CHARS],
        token_hash=token_hash(token),
        read_only=read_only,
    )
    session.add(row)
    session.flush()
    return row, token


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def token_dict(row: ApiToken) -> dict[str, Any]:
    """A token as the CLI lists it: never the token, only its first characters."""
    return {
        "id": row.id,
        "name": row.name,
        "prefix": row.prefix,
        "read_only": row.read_only,
        "state": "revoked" if row.revoked_at is not None else "active",
        "created_at": _time(row.created_at),
        "last_used_at": _time(row.last_used_at),
        "revoked_at": _time(row.revoked_at),
    }


def list_tokens(session: Session, tenant: Tenant) -> list[dict[str, Any]]:
    """A tenant's tokens, oldest first, revoked ones included."""
    rows = session.scalars(
        select(ApiToken).where(ApiToken.tenant_id == tenant.id).order_by(ApiToken.id)
    )
    return [token_dict(row) for row in rows]


def revoke_token(session: Session, token_id: int, tenant: Tenant | None = None) -> ApiToken:
    """Stop a token working from the next request on; revoking twice changes nothing.

    With ``tenant``, another tenant's token is not found, like one that does not exist.
    """
    row = session.get(ApiToken, token_id)
    if row is None or (tenant is not None and row.tenant_id != tenant.id):
        raise TokenError(f"no API token {token_id} (see `mailledger api-token list TENANT`)")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def authenticate(session: Session, token: str) -> TokenIdentity | None:
    """The identity a presented token stands for, or None when it is unknown or revoked.

    A disabled tenant's tokens stop working too: its data is not to be handed out.
    """
    if not token.startswith(TOKEN_PREFIX):
        return None
    found = session.execute(
        select(ApiToken, Tenant.name, Tenant.disabled_at)
        .join(Tenant, Tenant.id == ApiToken.tenant_id)
        .where(ApiToken.token_hash == token_hash(token))
    ).one_or_none()
    if found is None:
        return None
    row, tenant_name, disabled_at = found
    if row.revoked_at is not None or disabled_at is not None:
        return None
    return TokenIdentity(row.id, row.tenant_id, tenant_name, row.read_only, row.last_used_at)


def needs_touch(last_used_at: datetime | None, now: datetime) -> bool:
    """Whether a token's last use is stale enough to be written again."""
    return last_used_at is None or now - last_used_at >= LAST_USED_RESOLUTION


def touch(session: Session, token_id: int) -> None:
    """Record that a token was used now (at most once per LAST_USED_RESOLUTION)."""
    now = utcnow()
    session.execute(
        update(ApiToken)
        .where(
            ApiToken.id == token_id,
            (ApiToken.last_used_at.is_(None))
            | (ApiToken.last_used_at <= now - LAST_USED_RESOLUTION),
        )
        .values(last_used_at=now)
    )
