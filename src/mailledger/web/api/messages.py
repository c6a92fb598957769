"""``/v1/messages/{message}``: one received message and its trace (``messages show|trace``).

``{message}`` is what the CLI takes: a row number, a queue ID or a Message-ID (``<…>``
optional, percent-encoded; one with a ``/`` is named by its row number or queue ID).
Only messages routed to the token's tenant are found, showing only its own routes.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailledger.store import queries
from mailledger.store.queries import NotFoundError
from mailledger.web.api.common import not_found, only_params
from mailledger.web.auth import identify
from mailledger.web.context import context_of


async def get_message(request: Request) -> Response:
    """The message: session facts, state and reason, the tenant's routes, and the trace."""
    identity = await identify(request)
    only_params(request, set())
    ref: str = request.path_params["message"]

    def show(session: Session) -> dict[str, Any]:
        return queries.message(session, ref, tenant_id=identity.tenant_id)

    try:
        return JSONResponse(await context_of(request).read(show))
    except NotFoundError as exc:
        raise not_found(exc) from exc


async def get_trace(request: Request) -> Response:
    """What each processing step decided about the message, and why, oldest first."""
    identity = await identify(request)
    only_params(request, set())
    ref: str = request.path_params["message"]

    def steps(session: Session) -> list[dict[str, Any]]:
        return queries.trace(session, ref, tenant_id=identity.tenant_id)

    try:
        return JSONResponse({"data": await context_of(request).read(steps)})
    except NotFoundError as exc:
        raise not_found(exc) from exc


ROUTES = [
    Route("/v1/messages/{message}", get_message, methods=["GET"]),
    Route("/v1/messages/{message}/trace", get_trace, methods=["GET"]),
]
