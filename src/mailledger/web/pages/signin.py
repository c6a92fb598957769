"""Signing in and out: ask for a link, open it, end the session.

``POST /signin`` always answers the same page, whether or not the address is known (no
account enumeration), and mails the links after the answer is sent, so the time it takes
tells nothing either. Past the limits (5 links an address, 20 requests a client, per 15
minutes) it still answers that page, and mails nothing. ``GET /signin/TOKEN`` does not use
the link: mail scanners open links to look at them. The page it shows has a button that
POSTs, and that uses the link once.
"""

from __future__ import annotations

from sqlalchemy.orm import Session
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailledger.logs import get_logger
from mailledger.store import websessions
from mailledger.web.pages import cookies, csrf
from mailledger.web.pages.identity import current
from mailledger.web.pages.signinmail import mail_signin_links
from mailledger.web.pages.site import pages_of

MAX_ADDRESS = 320  # RFC 5321 §4.5.3.1: 64 + 1 + 255

log = get_logger(__name__)


def _anonymous_page(request: Request, name: str, status: int = 200, **values: object) -> Response:
    pages = pages_of(request)
    token = cookies.form_token(request)
    response = pages.page(name, status=status, csrf_token=token, signed_in=False, **values)
    cookies.set_form_token(response, token, secure=pages.secure_cookies)
    return response


async def signin_form(request: Request) -> Response:
    """The form asking for a staff member's address."""
    if await current(request) is not None:
        return pages_of(request).redirect("/integrations")
    return _anonymous_page(request, "signin.html")


async def signin_request(request: Request) -> Response:
    """Mail a link to the address if it is a staff member's; answer the same either way."""
    pages = pages_of(request)
    form = await csrf.read_form(request)
    if not csrf.anonymous_form_ok(request, form):
        return _anonymous_page(request, "refused.html", status=403, why="csrf")
    address = form.get("address", "")
    if not address.strip() or len(address) > MAX_ADDRESS:
        return _anonymous_page(request, "signin.html", status=400, error="Enter your address.")
    response = _anonymous_page(request, "signin_sent.html", address=address.strip())
    if _may_mail(request, address.strip()):
        wake = getattr(request.app.state, "on_queued", ())  # the delivery worker's
        response.background = BackgroundTask(mail_signin_links, pages, address.strip(), wake)
    else:
        log.info("sign-in link not mailed: rate limited", client=_client(request))
    return response


def _client(request: Request) -> str:
    # uvicorn puts the proxy's X-Forwarded-For here when the proxy is trusted (serving.py).
    return request.client.host if request.client is not None else ""


def _may_mail(request: Request, address: str) -> bool:
    """Whether this request may mail a link: within both the client's and the address's limit.

    Over either, the page is the same and no mail goes (web/pages/limits.py). A client over
    its limit spends nothing of the address's allowance.
    """
    limits = pages_of(request).limits
    if limits.signin_client.check(_client(request)):
        return False
    return limits.signin_address.check(address.lower()) == 0


async def signin_link(request: Request) -> Response:
    """The page a mailed link opens: a button that signs in, or why the link is refused."""
    pages = pages_of(request)
    token = request.path_params["token"]

    def usable(session: Session) -> bool:
        return websessions.link_is_usable(session, token)

    if not await pages.read(usable):
        return _anonymous_page(request, "refused.html", status=400, why="link")
    return _anonymous_page(request, "signin_link.html", token=token)


async def signin_redeem(request: Request) -> Response:
    """Use the link once: open a session and go to the integrations page."""
    pages = pages_of(request)
    token = request.path_params["token"]
    form = await csrf.read_form(request)
    if not csrf.anonymous_form_ok(request, form):
        return _anonymous_page(request, "refused.html", status=403, why="csrf")

    def redeem(session: Session) -> str | None:
        found = websessions.redeem_link(session, token)
        return found[1] if found else None

    cookie = await pages.write(redeem)
    if cookie is None:
        return _anonymous_page(request, "refused.html", status=400, why="link")
    response = pages.redirect("/integrations")
    cookies.set_session(response, cookie, secure=pages.secure_cookies)
    return response


async def signout(request: Request) -> Response:
    """End the session (a POST with the session's CSRF token)."""
    pages = pages_of(request)
    identity = await current(request)
    if identity is None:
        return pages.redirect("/signin")
    form = await csrf.read_form(request)
    if not csrf.matches(form, identity.csrf_token):
        return pages.page("refused.html", status=403, why="csrf", signed_in=True)

    def end(session: Session) -> None:
        websessions.end_session(session, identity.session_id)

    await pages.write(end)
    response = pages.redirect("/signin")
    cookies.clear_session(response, secure=pages.secure_cookies)
    return response


ROUTES = [
    Route("/signin", signin_form, methods=["GET"]),
    Route("/signin", signin_request, methods=["POST"]),
    Route("/signin/{token}", signin_link, methods=["GET"]),
    Route("/signin/{token}", signin_redeem, methods=["POST"]),
    Route("/signout", signout, methods=["POST"]),
]
