"""``/v1/queue``: the tenant's outbound queue (``queue list``), newest first."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailledger.store import outbox
from mailledger.store.models import OutboundState
from mailledger.web.api.common import only_params, page_limit
from mailledger.web.auth import identify
from mailledger.web.context import context_of
from mailledger.web.problems import ProblemError

STATES = [state.value for state in OutboundState]


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


ROUTES = [Route("/v1/queue", list_queue, methods=["GET"])]
