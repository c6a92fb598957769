"""Who is asking: the bearer token of a request, its tenant, and its allowance.

Every API route starts here. A missing, unknown or revoked token is 401 with
``WWW-Authenticate: Bearer`` (RFC 6750 §3); a token over its rate is 429 with Retry-After.
"""

from __future__ import annotations

from sqlalchemy.orm import Session
from starlette.requests import Request

from mailledger.store import apitokens
from mailledger.store.apitokens import TokenIdentity
from mailledger.store.models import utcnow
from mailledger.web.context import context_of
from mailledger.web.problems import ProblemError

CHALLENGE = 'Bearer realm="mailledger"'


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise ProblemError(
            401,
            "no API token: send `Authorization: Bearer TOKEN` "
            "(make one with `mailledger api-token create TENANT`)",
            headers={"WWW-Authenticate": CHALLENGE},
        )
    if scheme.lower() != "bearer" or not token.strip():
        raise ProblemError(
            401,
            "the Authorization header must be `Bearer TOKEN`",
            headers={"WWW-Authenticate": CHALLENGE + ', error="invalid_request"'},
        )
    return token.strip()


async def identify(request: Request) -> TokenIdentity:
    """The identity of the request's token, after its rate check; else a Problem."""
    api = context_of(request)
    token = _bearer(request)

    def lookup(session: Session) -> TokenIdentity | None:
        return apitokens.authenticate(session, token)

    identity = await api.read(lookup)
    if identity is None:
        raise ProblemError(
            401,
            "the API token is not valid (unknown, revoked, or its tenant is disabled)",
            headers={"WWW-Authenticate": CHALLENGE + ', error="invalid_token"'},
        )
    wait = api.limiter.check(identity.token_id)
    if wait:
        raise ProblemError(
            429,
            f"more than {api.limiter.per_window} requests a minute with this token; "
            f"retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    if apitokens.needs_touch(identity.last_used_at, utcnow()):

        def touch(session: Session) -> None:
            apitokens.touch(session, identity.token_id)

        await api.write(touch)
    return identity


def require_writer(identity: TokenIdentity) -> None:
    """A read-only token may look but not change anything: 403."""
    if identity.read_only:
        raise ProblemError(
            403, "this API token is read-only; make one without --read-only to change"
        )
