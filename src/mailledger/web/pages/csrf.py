"""CSRF checks for every POST: the form's hidden token must match what the server expects.

Signed in, that is the session's own token (kept server-side with the session); before
sign-in, the form cookie (double submit). Either way a page on another site cannot read the
token, so it cannot forge the form.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from urllib.parse import parse_qsl

from starlette.requests import Request

from mailledger.web.pages.cookies import FORM_COOKIE

FIELD = "csrf"
MAX_FORM_BYTES = 16 * 1024  # a few fields and a token, or a page of ticked row ids


async def _read_pairs(request: Request) -> list[tuple[str, str]]:
    """The name=value pairs of a posted urlencoded form, in order; [] for anything else."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return []
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return []
    return parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)


async def read_form(request: Request) -> dict[str, str]:
    """A posted ``application/x-www-form-urlencoded`` form (what our pages send), bounded.

    Anything else (another type, an oversized body) reads as an empty form, which fails the
    CSRF check.
    """
    return dict(await _read_pairs(request))


async def read_multi_form(request: Request) -> dict[str, list[str]]:
    """:func:`read_form` for forms that repeat a name (a list of checkboxes): every value.

    Bounded the same way; check the token with ``matches(first_values(form), ...)``.
    """
    found: dict[str, list[str]] = {}
    for name, value in await _read_pairs(request):
        found.setdefault(name, []).append(value)
    return found


def first_values(form: Mapping[str, list[str]]) -> dict[str, str]:
    """Each name's first value: a multi-value form read as a plain one."""
    return {name: values[0] for name, values in form.items() if values}


def matches(form: Mapping[str, str], expected: str) -> bool:
    """Whether the form's token equals ``expected`` (compared in constant time)."""
    sent = form.get(FIELD, "")
    if not sent or not expected:
        return False
    return secrets.compare_digest(sent.encode(), expected.encode())


def anonymous_form_ok(request: Request, form: Mapping[str, str]) -> bool:
    """The double-submit check of a form posted before sign-in."""
    return matches(form, request.cookies.get(FORM_COOKIE, ""))
