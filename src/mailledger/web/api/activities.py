"""``/v1/activities``: the feed, one activity, its raw message and attachments, and PATCH.

Routes only translate HTTP to the store's functions (store/feed.py, store/regarding.py) and
back; every rule lives there, shared with the CLI.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from typing import Any
from urllib.parse import quote

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailledger.store.feed import (
    DEFAULT_PAGE,
    MAX_PAGE,
    Cursor,
    FeedError,
    activity_detail,
    activity_page,
    attachment,
    parse_filters,
    raw_blob,
)
from mailledger.store.queries import NotFoundError
from mailledger.store.regarding import Regarding, set_regarding
from mailledger.web.api.common import path_id
from mailledger.web.auth import identify, require_writer
from mailledger.web.context import context_of
from mailledger.web.jsonresponse import FastJSONResponse
from mailledger.web.problems import ProblemError

FILTERS = ("contact", "staff", "company", "direction", "since", "thread")
LIST_PARAMS = frozenset({"after", "limit", *FILTERS})
JSON_TYPES = ("application/json", "application/merge-patch+json")

# How many feed pages are built at once; the others wait their turn without holding a thread.
# Building a page is Python work under the GIL plus SQLite calls that release it for every
# row: twenty threads at it at once spent ~70 % more CPU a page trading the GIL back and forth
# than two did, and the event loop serving SMTP beside them waited for it as well (`make bench`,
# api_* figures).
FEED_READERS = 2
_FEED_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _feed_slots() -> asyncio.Semaphore:
    """The running loop's semaphore (a semaphore serves the one loop it first waited in)."""
    loop = asyncio.get_running_loop()
    slots = _FEED_SLOTS.get(loop)
    if slots is None:
        slots = _FEED_SLOTS[loop] = asyncio.Semaphore(FEED_READERS)
    return slots


def _invalid(exc: FeedError) -> ProblemError:
    return ProblemError(422, f"{exc.field}: {exc}", field=exc.field)


def _not_found(exc: NotFoundError) -> ProblemError:
    return ProblemError(404, str(exc.args[0]))


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_PAGE
    if not value.isdigit() or not 1 <= int(value) <= MAX_PAGE:
        raise ProblemError(422, f"limit: must be a number from 1 to {MAX_PAGE}", field="limit")
    return int(value)


async def list_activities(request: Request) -> Response:
    """A page of the tenant's activities, oldest first, and the cursor for the next."""
    identity = await identify(request)
    api = context_of(request)
    params = dict(request.query_params)
    unknown = sorted(set(params) - LIST_PARAMS)
    if unknown:
        raise ProblemError(
            422,
            f"{unknown[0]}: not a parameter of this list (use after, limit, {', '.join(FILTERS)})",
            field=unknown[0],
        )
    try:
        after = Cursor.decode(params["after"]) if params.get("after") else None
        filters = parse_filters(params)
    except FeedError as exc:
        raise _invalid(exc) from exc
    limit = _limit(params.get("limit"))

    def page(session: Session) -> tuple[list[dict[str, Any]], Cursor]:
        return activity_page(
            session,
            identity.tenant_id,
            after=after,
            limit=limit,
            filters=filters,
            base_url=api.base_url,
        )

    async with _feed_slots():
        data, cursor = await api.read(page)
    return FastJSONResponse({"data": data, "next": cursor.encode()})


async def get_activity(request: Request) -> Response:
    """One activity with its bodies."""
    identity = await identify(request)
    api = context_of(request)
    activity_id = path_id(request, "activity_id")

    def detail(session: Session) -> dict[str, Any]:
        return activity_detail(session, identity.tenant_id, activity_id, base_url=api.base_url)

    try:
        return JSONResponse(await api.read(detail))
    except NotFoundError as exc:
        raise _not_found(exc) from exc


async def get_raw(request: Request) -> Response:
    """The message exactly as it was received (``message/rfc822``)."""
    identity = await identify(request)
    api = context_of(request)
    activity_id = path_id(request, "activity_id")

    def digest(session: Session) -> str:
        return raw_blob(session, identity.tenant_id, activity_id)

    try:
        blob = await api.read(digest)
    except NotFoundError as exc:
        raise _not_found(exc) from exc
    data = await run_in_threadpool(api.blobs.get, blob)
    return Response(
        data,
        media_type="message/rfc822",
        headers={"Content-Disposition": f'attachment; filename="activity-{activity_id}.eml"'},
    )


async def get_attachment(request: Request) -> Response:
    """One attachment's bytes, with its type and file name."""
    identity = await identify(request)
    api = context_of(request)
    activity_id = path_id(request, "activity_id")
    n: int = request.path_params["n"]

    def find(session: Session) -> tuple[str, str, str]:
        found = attachment(session, identity.tenant_id, activity_id, n)
        return found.blob, found.content_type, found.filename

    try:
        blob, content_type, filename = await api.read(find)
    except NotFoundError as exc:
        raise _not_found(exc) from exc
    data = await run_in_threadpool(api.blobs.get, blob)
    return attachment_response(data, content_type, filename, n)


def attachment_response(data: bytes, content_type: str, filename: str, n: int) -> Response:
    """An attachment as a download: never shown inline, never sniffed into something else.

    The API and the activity page serve attachments through this one answer.
    """
    name = filename or f"attachment-{n}"
    # RFC 6266 §4.3: an ASCII fallback and the exact name in RFC 8187 encoding.
    fallback = name.encode("ascii", "replace").decode("ascii").replace('"', "_")
    disposition = f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name)}"
    return Response(
        data,
        media_type=content_type or "application/octet-stream",
        headers={"Content-Disposition": disposition, "X-Content-Type-Options": "nosniff"},
    )


def _regarding_from(body: Any) -> Regarding | None:
    if not isinstance(body, dict):
        raise ProblemError(422, 'the body must be a JSON object such as {"regarding": …}')
    unknown = sorted(set(body) - {"regarding"})
    if unknown:
        raise ProblemError(
            422, f"{unknown[0]}: cannot be changed (only regarding)", field=unknown[0]
        )
    if "regarding" not in body:
        raise ProblemError(
            422, "regarding: missing (an object, or null to clear)", field="regarding"
        )
    value = body["regarding"]
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProblemError(422, "regarding: must be an object or null", field="regarding")
    extra = sorted(set(value) - {"type", "id", "label"})
    if extra:
        field = f"regarding.{extra[0]}"
        raise ProblemError(422, f"{field}: not a key of regarding (type, id, label)", field=field)
    for key in ("type", "id"):
        if not isinstance(value.get(key), str | int) or isinstance(value.get(key), bool):
            field = f"regarding.{key}"
            raise ProblemError(422, f"{field}: required, a string", field=field)
    label = value.get("label", "")
    if label is None:
        label = ""
    if not isinstance(label, str):
        raise ProblemError(422, "regarding.label: must be a string", field="regarding.label")
    return Regarding(str(value["type"]), str(value["id"]), label)


async def patch_activity(request: Request) -> Response:
    """Set or clear what the activity is about (``regarding``); the activity comes back."""
    identity = await identify(request)
    require_writer(identity)
    api = context_of(request)
    activity_id = path_id(request, "activity_id")
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in JSON_TYPES:
        raise ProblemError(415, "send the body as application/json")
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProblemError(400, f"the body is not JSON: {exc}") from exc
    value = _regarding_from(body)

    def change(session: Session) -> None:
        set_regarding(session, identity.tenant_id, activity_id, value, base_url=api.base_url)

    def detail(session: Session) -> dict[str, Any]:
        return activity_detail(session, identity.tenant_id, activity_id, base_url=api.base_url)

    try:
        await api.write(change)
        return JSONResponse(await api.read(detail))
    except NotFoundError as exc:
        raise _not_found(exc) from exc
    except FeedError as exc:
        raise _invalid(exc) from exc


async def one_activity(request: Request) -> Response:
    """GET or PATCH one activity (one route, so a 405 names both methods in Allow)."""
    if request.method == "PATCH":
        return await patch_activity(request)
    return await get_activity(request)


ROUTES = [
    Route("/v1/activities", list_activities, methods=["GET"]),
    Route("/v1/activities/{activity_id:int}", one_activity, methods=["GET", "PATCH"]),
    Route("/v1/activities/{activity_id:int}/raw", get_raw, methods=["GET"]),
    Route("/v1/activities/{activity_id:int}/attachments/{n:int}", get_attachment, methods=["GET"]),
]
