"""Errors as RFC 9457 problem documents: every error the API gives has this one shape.

``type`` is a URI naming the kind of problem (relative to the API, so it stays stable
whatever host serves it), ``title`` the kind in words, ``detail`` this occurrence; a bad
parameter adds ``field`` (and ``errors`` for several), so a client can point at it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mailledger.logs import get_logger

log = get_logger("mailledger.web")

PROBLEM_TYPE = "application/problem+json"
TYPE_BASE = "/v1/problems/"

TITLES = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Not allowed",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Invalid parameter",
    429: "Too many requests",
    500: "Internal error",
    503: "Unavailable",
}
SLUGS = {
    400: "bad-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "content-too-large",
    415: "unsupported-media-type",
    422: "invalid-parameter",
    429: "rate-limited",
    500: "internal-error",
    503: "unavailable",
}


class ProblemError(Exception):
    """Raised by a route to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.field = field
        self.headers = dict(headers or {})


def problem_response(
    status: int,
    detail: str,
    *,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The problem document for ``status``, with ``detail`` saying what happened."""
    body: dict[str, Any] = {
        "type": TYPE_BASE + SLUGS.get(status, str(status)),
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_TYPE)


async def on_problem(request: Request, exc: Exception) -> Response:
    """Starlette's handler for Problem."""
    assert isinstance(exc, ProblemError)
    return problem_response(exc.status, exc.detail, field=exc.field, headers=exc.headers)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (wrong method) as problem documents."""
    assert isinstance(exc, HTTPException)
    detail = {
        404: f"nothing at {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    return problem_response(exc.status_code, detail, headers=exc.headers)


async def on_error(request: Request, exc: Exception) -> Response:
    """Anything unforeseen: logged with its traceback, answered without internals."""
    log.error("request failed", path=request.url.path, method=request.method, exc_info=exc)
    return problem_response(500, "the server failed to answer; the error is logged")
