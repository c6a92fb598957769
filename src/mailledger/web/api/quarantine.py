"""``/v1/quarantine``: mail a rule held back, with the reason; release it or delete it.

The same functions as ``quarantine list|release|delete`` (store/queries.py,
store/quarantine.py), limited to messages routed to the token's tenant.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailledger.store import quarantine, queries
from mailledger.store.models import MessageState
from mailledger.store.queries import NotFoundError
from mailledger.web.api.common import flag_param, not_found, only_params, page_limit
from mailledger.web.auth import identify, require_writer
from mailledger.web.context import context_of
from mailledger.web.problems import ProblemError

QUARANTINED = MessageState.QUARANTINED


async def list_quarantine(request: Request) -> Response:
    """Quarantined messages, newest first, each with its reason."""
    identity = await identify(request)
    limit = page_limit(only_params(request, {"limit"}).get("limit"), default=50)

    def rows(session: Session) -> dict[str, Any]:
        data = list(
            queries.iter_messages(session, QUARANTINED, limit=limit, tenant_id=identity.tenant_id)
        )
        total = queries.count_messages(session, QUARANTINED, tenant_id=identity.tenant_id)
        return {"data": data, "total": total}

    return JSONResponse(await context_of(request).read(rows))


async def get_quarantined(request: Request) -> Response:
    """One quarantined message with its trace (a message in another state is not here)."""
    identity = await identify(request)
    only_params(request, set())
    ref: str = request.path_params["message"]

    def show(session: Session) -> dict[str, Any]:
        return queries.message(session, ref, tenant_id=identity.tenant_id)

    try:
        record = await context_of(request).read(show)
    except NotFoundError as exc:
        raise not_found(exc) from exc
    if record["state"] != QUARANTINED.value:
        raise ProblemError(404, f"message {ref} is {record['state']}, not quarantined")
    return JSONResponse(record)


async def release(request: Request) -> Response:
    """Process the message again; ``?force=true`` records it despite the policy."""
    identity = await identify(request)
    require_writer(identity)
    force = flag_param(only_params(request, {"force"}).get("force"), "force")
    ref: str = request.path_params["message"]

    def put_back(session: Session) -> dict[str, Any]:
        message = quarantine.release(session, ref, force=force, tenant_id=identity.tenant_id)
        return queries.message(session, message.id, tenant_id=identity.tenant_id)

    try:
        record = await context_of(request).write(put_back)
    except NotFoundError as exc:
        raise not_found(exc) from exc
    except quarantine.QuarantineError as exc:
        raise ProblemError(409, str(exc)) from exc
    return JSONResponse(record, status_code=202)


async def delete_quarantined(request: Request) -> Response:
    """Delete the message for good, and its raw bytes unless something shares them."""
    identity = await identify(request)
    require_writer(identity)
    only_params(request, set())
    ref: str = request.path_params["message"]
    api = context_of(request)

    def drop(session: Session) -> dict[str, Any]:
        message = queries.get_message(session, ref, tenant_id=identity.tenant_id)
        ident = {"id": message.id, "queue_id": message.queue_id}
        removed = quarantine.delete(session, api.blobs, message.id, tenant_id=identity.tenant_id)
        return ident | {"deleted": True, "raw_deleted": removed}

    try:
        return JSONResponse(await api.write(drop))
    except NotFoundError as exc:
        raise not_found(exc) from exc
    except quarantine.QuarantineError as exc:
        raise ProblemError(409, str(exc)) from exc


async def one_quarantined(request: Request) -> Response:
    """GET or DELETE one quarantined message."""
    if request.method == "DELETE":
        return await delete_quarantined(request)
    return await get_quarantined(request)


ROUTES = [
    Route("/v1/quarantine", list_quarantine, methods=["GET"]),
    Route("/v1/quarantine/{message}", one_quarantined, methods=["GET", "DELETE"]),
    Route("/v1/quarantine/{message}/release", release, methods=["POST"]),
]
