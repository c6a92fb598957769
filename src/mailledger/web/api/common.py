"""What the API's resource routes share: the tenant of the token, JSON bodies, limits, errors.

Directory lookups (``find_contact``…) raise ``DirectoryError`` both for "no such row" and for
a bad change; routes look the row up first, so a failed lookup is a 404 and a refused change
a 422 naming the field.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mailledger.store.apitokens import TokenIdentity
from mailledger.store.models import Tenant
from mailledger.web.auth import identify, require_writer
from mailledger.web.problems import ProblemError

JSON_TYPES = ("application/json", "application/merge-patch+json")
DEFAULT_PAGE = 100
MAX_PAGE = 500


# The largest id a database column holds (BIGINT); a larger one names nothing.
MAX_ID = 2**63 - 1


def path_id(request: Request, name: str) -> int:
    """An integer path parameter; past what any row can have it is a 404, not a database error."""
    value: int = request.path_params[name]
    if value > MAX_ID:
        raise ProblemError(404, f"no {name.removesuffix('_id')} {value}")
    return value


def tenant_row(session: Session, tenant_id: int) -> Tenant:
    """The token's tenant, in this session (every query starts from it)."""
    return session.get_one(Tenant, tenant_id)


def not_found(exc: Exception) -> ProblemError:
    """A lookup that failed in the token's tenant: 404, whether or not it exists elsewhere."""
    return ProblemError(404, str(exc.args[0]) if exc.args else "not found")


def invalid(exc: Exception, field: str) -> ProblemError:
    """A refused change, naming the field it came from."""
    return ProblemError(422, f"{field}: {exc.args[0] if exc.args else exc}", field=field)


def only_params(request: Request, allowed: set[str]) -> dict[str, str]:
    """The query parameters, refusing any this operation does not take."""
    params = dict(request.query_params)
    unknown = sorted(set(params) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise ProblemError(
            422,
            f"{unknown[0]}: not a parameter of this operation (it takes {known})",
            field=unknown[0],
        )
    return params


def page_limit(value: str | None, *, default: int = DEFAULT_PAGE) -> int:
    """``limit``: 1 to MAX_PAGE."""
    if value is None:
        return default
    if not value.isdigit() or not 1 <= int(value) <= MAX_PAGE:
        raise ProblemError(422, f"limit: must be a number from 1 to {MAX_PAGE}", field="limit")
    return int(value)


def id_param(value: str | None, name: str) -> int | None:
    """A numeric cursor parameter such as ``after``."""
    if value is None or value == "":
        return None
    if not value.isdigit() or len(value) > 18:
        raise ProblemError(422, f"{name}: must be an id (a whole number)", field=name)
    return int(value)


def flag_param(value: str | None, name: str) -> bool:
    """``true``/``false`` in a query string; absent is false."""
    if value is None:
        return False
    text = value.strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise ProblemError(422, f"{name}: must be true or false", field=name)


async def json_object(request: Request, allowed: set[str]) -> dict[str, Any]:
    """The body as a JSON object with only ``allowed`` keys; else 400/415/422."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in JSON_TYPES:
        raise ProblemError(415, "send the body as application/json")
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProblemError(400, f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ProblemError(422, "the body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ProblemError(
            422,
            f"{unknown[0]}: not a field here (use {', '.join(sorted(allowed))})",
            field=unknown[0],
        )
    return body


def text_field(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    """A string member of the body; None when absent (and allowed to be)."""
    if name not in body or body[name] is None:
        if required:
            raise ProblemError(422, f"{name}: required, a string", field=name)
        return None
    value = body[name]
    if not isinstance(value, str):
        raise ProblemError(422, f"{name}: must be a string", field=name)
    if required and not value.strip():
        raise ProblemError(422, f"{name}: must not be empty", field=name)
    return value


def list_field(body: dict[str, Any], name: str, *, required: bool = False) -> list[str]:
    """A list-of-strings member of the body; empty when absent (and allowed to be)."""
    if name not in body or body[name] is None:
        if required:
            raise ProblemError(422, f"{name}: required, a list of strings", field=name)
        return []
    value = body[name]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProblemError(422, f"{name}: must be a list of strings", field=name)
    if required and not value:
        raise ProblemError(422, f"{name}: must name at least one", field=name)
    return value


def bool_field(body: dict[str, Any], name: str) -> bool | None:
    """A boolean member of the body; None when absent."""
    if name not in body or body[name] is None:
        return None
    value = body[name]
    if not isinstance(value, bool):
        raise ProblemError(422, f"{name}: must be true or false", field=name)
    return value


def history_param(request: Request) -> str:
    """``?history=keep|remove``: removal says what happens to the correspondence, always."""
    value = request.query_params.get("history")
    if value not in ("keep", "remove"):
        raise ProblemError(
            422,
            "history: required, keep (the activities stay) or remove (delete those no one "
            "else took part in, and their raw mail)",
            field="history",
        )
    return value


async def writer(request: Request) -> TokenIdentity:
    """The token behind a request that changes something; a read-only one is refused (403)."""
    identity = await identify(request)
    require_writer(identity)
    return identity


@contextlib.contextmanager
def problem_from(
    errors: type[Exception] | tuple[type[Exception], ...],
    status: int = 422,
    *,
    field: str | None = None,
) -> Iterator[None]:
    """A store's refusal answered as a problem in its own words: ``status``, the field to fix."""
    try:
        yield
    except errors as exc:
        raise ProblemError(status, str(exc), field=field) from exc


def created(record: dict[str, Any], collection: str) -> Response:
    """201 with the new row and where it lives (``Location: {collection}/{id}``)."""
    return JSONResponse(
        record, status_code=201, headers={"Location": f"{collection}/{record['id']}"}
    )


Handler = Callable[[Request], Awaitable[Response]]


def by_method(get: Handler, **others: Handler) -> Handler:
    """One route's handler per HTTP method (``post=``, ``patch=``, ``delete=``), so its 405 names
    them all; ``get`` answers GET and HEAD."""

    async def handle(request: Request) -> Response:
        return await others.get(request.method.lower(), get)(request)

    return handle
