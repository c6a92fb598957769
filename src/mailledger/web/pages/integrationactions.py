"""The integrations page's buttons: check my forwarding, make a new relay password.

Both are POSTs with the session's CSRF token and call what the CLI calls: the round-trip
check is ``forwarding.handback.send_challenge`` (``staff verify-forwarding``), the password
is ``relay.credentials.issue_password`` (``staff password``). The new password is in the
answer to the POST and nowhere else: not in a URL, not in a cookie, not in a log, and the
page is ``no-store``, so going back to it later shows it no more.
"""

from __future__ import annotations

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailledger.forwarding.handback import send_challenge
from mailledger.logs import get_logger
from mailledger.relay.credentials import PasswordRefusedError, issue_password
from mailledger.store.models import Staff
from mailledger.store.websessions import WebIdentity
from mailledger.web.pages import csrf
from mailledger.web.pages.identity import current
from mailledger.web.pages.integrations import render_integrations
from mailledger.web.pages.limits import CHECKS_PER_STAFF
from mailledger.web.pages.site import pages_of

log = get_logger(__name__)


async def _signed_in_post(request: Request) -> WebIdentity | Response:
    """The session behind a button's POST, or the answer to give instead (sign in, 403)."""
    pages = pages_of(request)
    identity = await current(request)
    if identity is None:
        return pages.redirect("/signin")
    form = await csrf.read_form(request)
    if not csrf.matches(form, identity.csrf_token):
        return pages.page("refused.html", status=403, why="csrf", signed_in=True)
    return identity


async def check_forwarding(request: Request) -> Response:
    """Send the round-trip check to the staff member's mailbox; the page then says waiting."""
    pages = pages_of(request)
    identity = await _signed_in_post(request)
    if isinstance(identity, Response):
        return identity
    if pages.limits.forwarding_check.check(identity.staff_id):
        notice = (
            f"You started {CHECKS_PER_STAFF} checks in the last 15 minutes. Wait for them to "
            f"come back, or look at your forwarding rule, before you start another."
        )
        return await render_integrations(request, identity, status=429, check_notice=notice)
    await send_challenge(
        pages.sessions, pages.blobs, pages.settings, pages.resolver, staff_id=identity.staff_id
    )
    log.info("forwarding check started from the web", staff=identity.staff_id)
    return pages.redirect("/integrations#forwarding-check")


async def new_password(request: Request) -> Response:
    """Make a new relay password and show it, this once."""
    pages = pages_of(request)
    identity = await _signed_in_post(request)
    if isinstance(identity, Response):
        return identity

    def issue(session: Session) -> str:
        return issue_password(session, session.get_one(Staff, identity.staff_id))

    try:
        password = await pages.write(issue)
    except PasswordRefusedError as exc:
        return await render_integrations(request, identity, status=409, password_notice=str(exc))
    log.info("relay password replaced from the web", staff=identity.staff_id)
    return await render_integrations(request, identity, new_password=password)


ROUTES = [
    Route("/integrations/forwarding-check", check_forwarding, methods=["POST"]),
    Route("/integrations/password", new_password, methods=["POST"]),
]
