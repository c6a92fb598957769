"""Google and Microsoft 365 sign-in for mailbox and calendar accounts (RFC 6749 §4.1).

The flow is ``accounts.oauth``'s, the one ``account add --oauth`` and ``calendar add
--oauth`` use: a button's POST stores a one-time state and the PKCE verifier on the account
and sends the browser to the provider; the provider sends it back to ``GET
/accounts/oauth/callback?state=&code=``, which exchanges the code and stores the refresh
token sealed. The state, not the browser's session, names the account, mailbox or calendar
(it is unique and random in each table), so a sign-in started on a headless server by
``account add --oauth`` or ``calendar add --oauth`` may end here too.

A form's target is the page's own site under our Content-Security-Policy (``form-action
'self'``), and browsers apply that to the redirect that follows a POST as well: the pages
with a sign-in button allow the configured providers' sign-in origins besides.
"""

from __future__ import annotations

import urllib.parse
from datetime import datetime

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailledger.accounts import oauth
from mailledger.config import Settings
from mailledger.logs import get_logger
from mailledger.store import calendars
from mailledger.store.mailaccounts import remove_account
from mailledger.store.models import CalendarAccount, MailboxAccount, utcnow
from mailledger.store.removal import History
from mailledger.store.secretbox import SecretBox, SecretError
from mailledger.web.pages.identity import current
from mailledger.web.pages.site import CONTENT_SECURITY_POLICY, pages_of

log = get_logger(__name__)

MAX_PARAM = 4096  # longer than any state or code a provider sends


def sign_in_origins(settings: Settings) -> list[str]:
    """The origins of the configured sign-in pages (``[oauth.*] auth_url``)."""
    found = []
    for provider in (settings.oauth.google, settings.oauth.microsoft):
        parts = urllib.parse.urlsplit(provider.auth_url)
        if parts.scheme in ("http", "https") and parts.netloc:
            origin = f"{parts.scheme}://{parts.netloc}"
            if origin not in found:
                found.append(origin)
    return found


def allow_sign_in(response: Response, settings: Settings) -> Response:
    """Let this page's forms lead to the providers' sign-in pages (and nowhere else)."""
    origins = " ".join(sign_in_origins(settings))
    if origins:
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY.replace(
            "form-action 'self'", f"form-action 'self' {origins}"
        )
    return response


def secret_box(settings: Settings) -> SecretBox:
    """The key that seals passwords and tokens (``[secrets] key_file``); SecretError if unusable."""
    return SecretBox.from_file(settings.secrets.key_file)


def start_sign_in(
    session: Session, account: MailboxAccount, box: SecretBox, settings: Settings, now: datetime
) -> str:
    """Begin ``account``'s sign-in; the provider's address to send the browser to.

    Raises ``oauth.AuthorizationError`` (say it to the user) when sign-in is not configured.
    """
    return oauth.begin_authorization(
        session, account, box, settings.oauth, public_url=settings.http.public_url, now=now
    )


def _refused(request: Request, why: str, status: int = 400) -> Response:
    return pages_of(request).page(
        "account_signin.html", status=status, signed_in=False, ok=False, why=why
    )


def _param(request: Request, name: str) -> str:
    return request.query_params.get(name, "")[:MAX_PARAM]


async def _provider_refused(request: Request, state: str, error: str) -> Response:
    """The provider sent ``error=``: say so, and drop an account that never signed in."""
    pages = pages_of(request)
    detail = _param(request, "error_description")
    words = {
        "access_denied": "you (or your organisation's policy) did not allow mailledger to "
        "read the mailbox",
    }.get(error, "the provider refused the sign-in")

    def forget(session: Session) -> None:
        try:
            account = oauth.pending_account(session, state, utcnow())
        except oauth.AuthorizationError:
            return
        if account.secret:
            # A re-connect that was refused: the account stays, still waiting for sign-in.
            oauth.forget_sign_in(account)
            return
        # Added for this sign-in and never connected: nothing to keep.
        if isinstance(account, CalendarAccount):
            calendars.remove_account(session, account, keep_history=True)
        else:
            remove_account(session, pages.blobs, account, History.KEEP)

    if state:
        await pages.write(forget)
    log.info("sign-in refused by the provider", error=error[:64])
    why = f"The sign-in did not finish: {words} ({error[:64]}{': ' + detail if detail else ''})."
    return _refused(request, why)


async def callback(request: Request) -> Response:
    """``GET /accounts/oauth/callback``: finish a sign-in, then back to the integrations page."""
    pages = pages_of(request)
    state, code, error = _param(request, "state"), _param(request, "code"), _param(request, "error")
    if error:
        return await _provider_refused(request, state, error)
    if not state or not code:
        return _refused(
            request,
            "This address is missing its state or code: open it only from the provider's "
            "sign-in page. Start the sign-in again from your integrations page.",
        )
    settings = pages.settings
    try:
        box = secret_box(settings)
    except SecretError as exc:
        return _refused(request, f"Accounts cannot be connected on this server: {exc}", 503)

    def finish(session: Session) -> tuple[str, int]:
        account = oauth.complete_authorization(
            session, state, code, box=box, oauth=settings.oauth,
            public_url=settings.http.public_url, now=utcnow(),
        )  # fmt: skip
        return oauth.noun(account), account.id

    try:
        kind, account_id = await pages.write(finish)
    except oauth.AuthorizationError as exc:
        return _refused(request, f"The sign-in did not finish: {exc}.")
    log.info("account signed in from the web", kind=kind, account_id=account_id)
    if kind == "calendar" or await current(request) is None:
        # Started by `account add --oauth` or `calendar add --oauth` (or signed out
        # meanwhile): the command goes on from here; nothing else to show.
        return pages.page("account_signin.html", signed_in=False, ok=True, why="", kind=kind)
    return pages.redirect(f"/integrations?done=connected#account-{account_id}")


ROUTES = [Route("/accounts/oauth/callback", callback, methods=["GET"])]
