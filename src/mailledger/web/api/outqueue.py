"""``/v1/queue``: the tenant's outbound queue (``queue list``), newest first, and one queued
message's rows (``queue show``): where ``POST /v1/messages`` points its ``Location``."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailledger.store import outbox
from mailledger.store.models import OutboundState
from mailledger.web.api.common import MAX_ID, not_found, only_params, page_limit
from mailledger.web.auth import identify
from mailledger.web.context import context_of
from mailledger.web.problems import ProblemError

STATES = [state.value for state in OutboundState]
_QUEUE_REF = re.compile(r"^[0-9A-Za-z]{1,40}$")


async def list_queue(request: Request) -> Response:
    """Outbound rows (one per recipient domain), optionally in one ``state``."""
    identity = await identify(request)
    params = only_params(request, {"state", "limit"})
    limit = page_limit(params.get("limit"))
    state = None
    if params.get("state"):
        if params["state"] not in STATES:
            raise ProblemError(422, f"state: one of {', '.join(STATES)}", field="state")
        state = OutboundState(params["state"])

    def rows(session: Session) -> list[dict[str, Any]]:
        found = outbox.list_rows(session, state, limit=limit, tenant_id=identity.tenant_id)
        return [outbox.row_dict(row) for row in found]

    return JSONResponse({"data": await context_of(request).read(rows)})


async def get_queued(request: Request) -> Response:
    """One queued message: its rows (one per recipient domain) with their state and results.

    Another tenant's queue id is not found, as a missing one.
    """
    identity = await identify(request)
    only_params(request, set())
    ident: str = request.path_params["queue_id"]
    # A queue id or a row id (as `queue show` takes), and never more than a row can be.
    if not _QUEUE_REF.match(ident) or (ident.isdigit() and int(ident) > MAX_ID):
        raise ProblemError(404, f"no queued message {ident[:60]}")

    def rows(session: Session) -> dict[str, Any]:
        try:
            found = [
                row
                for row in outbox.find_rows(session, ident)
                if row.tenant_id == identity.tenant_id
            ]
        except outbox.OutboxError as exc:
            raise not_found(exc) from exc
        if not found:
            raise not_found(outbox.OutboxError(f"no queued message {ident}"))
        return {"queue_id": found[0].queue_id, "data": [outbox.row_dict(row) for row in found]}

    return JSONResponse(await context_of(request).read(rows))


ROUTES = [
    Route("/v1/queue", list_queue, methods=["GET"]),
    Route("/v1/queue/{queue_id}", get_queued, methods=["GET"]),
]
