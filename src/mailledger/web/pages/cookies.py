"""The session cookie and the sign-in form's CSRF cookie: strict flags, one place.

The session cookie is ``HttpOnly`` (no script reads it), ``SameSite=Lax`` (not sent on
cross-site POSTs) and ``Secure`` when the public URL is https. Its value is random; the
server keeps only its hash (store/websessions.py).
"""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import Response

from mailledger.store.websessions import SESSION_LIFETIME

SESSION_COOKIE = "mailledger_session"
# Before sign-in there is no session to hold a CSRF token: the form's token is also set in
# this cookie and the two must match on submit ("double submit").
FORM_COOKIE = "mailledger_form"


def set_session(response: Response, value: str, *, secure: bool) -> None:
    """Give the browser its session cookie."""
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=int(SESSION_LIFETIME.total_seconds()),
        path="/",
        secure=secure,
        httponly=True,
        samesite="lax",
    )


def clear_session(response: Response, *, secure: bool) -> None:
    """Make the browser forget its session cookie."""
    response.delete_cookie(SESSION_COOKIE, path="/", secure=secure, httponly=True, samesite="lax")


def session_value(request: Request) -> str:
    """The session cookie the browser sent ("" when none)."""
    return request.cookies.get(SESSION_COOKIE, "")


def form_token(request: Request) -> str:
    """The browser's form token, or a new one (set it with :func:`set_form_token`)."""
    return request.cookies.get(FORM_COOKIE) or secrets.token_urlsafe(32)


def set_form_token(response: Response, token: str, *, secure: bool) -> None:
    """Keep the form token in a cookie for the double-submit check."""
    response.set_cookie(
        FORM_COOKIE, token, path="/", secure=secure, httponly=True, samesite="strict"
    )
