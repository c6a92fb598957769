"""Who is looking at a page: the web session behind the browser's cookie, if any."""

from __future__ import annotations

from sqlalchemy.orm import Session
from starlette.requests import Request

from mailledger.store import websessions
from mailledger.store.websessions import WebIdentity
from mailledger.web.pages.cookies import session_value
from mailledger.web.pages.site import pages_of


async def current(request: Request) -> WebIdentity | None:
    """The signed-in staff member, or None (no cookie, unknown, ended or expired)."""
    cookie = session_value(request)
    if not cookie:
        return None

    def lookup(session: Session) -> WebIdentity | None:
        return websessions.identify(session, cookie)

    return await pages_of(request).read(lookup)
