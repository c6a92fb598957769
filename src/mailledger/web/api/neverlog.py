"""``/v1/never-log``: addresses and domains whose mail is never recorded (``never-log …``).

An entry is a pattern, tenant-wide or for one staff member; to change one, remove it and add
another (the CLI has no ``set`` either). Lookups go through ``queries.never_log`` and changes
through ``directory.add_never_log``/``remove_never_log``, as the CLI's do.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailledger.store import directory, queries
from mailledger.store.directory import DirectoryError
from mailledger.store.models import Staff, Tenant
from mailledger.web.api.common import (
    invalid,
    json_object,
    not_found,
    only_params,
    path_id,
    tenant_row,
    text_field,
)
from mailledger.web.auth import identify, require_writer
from mailledger.web.context import context_of
from mailledger.web.problems import ProblemError


def _staff(session: Session, tenant: Tenant, username: str | None, field: str) -> Staff | None:
    if username is None:
        return None
    try:
        return directory.find_staff(session, tenant, username)
    except DirectoryError as exc:
        raise invalid(exc, field) from exc


def _entry(session: Session, tenant: Tenant, entry_id: int) -> dict[str, Any]:
    for row in queries.never_log(session, tenant, every_scope=True):
        if row["id"] == entry_id:
            return row
    raise ProblemError(404, f"tenant {tenant.name!r} has no never-log entry {entry_id}")


async def list_never_log(request: Request) -> Response:
    """Every entry (tenant-wide and each member's), or ``?staff=USERNAME``'s only."""
    identity = await identify(request)
    params = only_params(request, {"staff"})

    def rows(session: Session) -> list[dict[str, Any]]:
        tenant = tenant_row(session, identity.tenant_id)
        staff = _staff(session, tenant, params.get("staff"), "staff")
        return queries.never_log(session, tenant, staff, every_scope=staff is None)

    return JSONResponse({"data": await context_of(request).read(rows)})


async def create_never_log(request: Request) -> Response:
    """Never record mail with ``pattern`` (address or domain), tenant-wide or for ``staff``."""
    identity = await identify(request)
    require_writer(identity)
    body = await json_object(request, {"pattern", "staff"})
    pattern = text_field(body, "pattern", required=True) or ""
    username = text_field(body, "staff")

    def add(session: Session) -> dict[str, Any]:
        tenant = tenant_row(session, identity.tenant_id)
        staff = _staff(session, tenant, username, "staff")
        try:
            row = directory.add_never_log(session, tenant, pattern, staff=staff)
        except DirectoryError as exc:
            raise invalid(exc, "pattern") from exc
        return _entry(session, tenant, row.id)

    record = await context_of(request).write(add)
    return JSONResponse(
        record, status_code=201, headers={"Location": f"/v1/never-log/{record['id']}"}
    )


async def get_never_log(request: Request) -> Response:
    """One entry."""
    identity = await identify(request)
    entry_id = path_id(request, "entry_id")

    def show(session: Session) -> dict[str, Any]:
        return _entry(session, tenant_row(session, identity.tenant_id), entry_id)

    return JSONResponse(await context_of(request).read(show))


async def delete_never_log(request: Request) -> Response:
    """Take the entry off its list: that mail is recorded again."""
    identity = await identify(request)
    require_writer(identity)
    only_params(request, set())
    entry_id = path_id(request, "entry_id")

    def remove(session: Session) -> dict[str, Any]:
        tenant = tenant_row(session, identity.tenant_id)
        entry = _entry(session, tenant, entry_id)
        staff = None
        if entry["staff"] is not None:
            staff = directory.find_staff(session, tenant, entry["staff"], include_removed=True)
        try:
            pattern = directory.remove_never_log(session, tenant, entry["pattern"], staff=staff)
        except DirectoryError as exc:
            raise not_found(exc) from exc
        return {"id": entry_id, "pattern": pattern, "staff": entry["staff"], "removed": True}

    return JSONResponse(await context_of(request).write(remove))


async def one_entry(request: Request) -> Response:
    """GET or DELETE one entry."""
    if request.method == "DELETE":
        return await delete_never_log(request)
    return await get_never_log(request)


async def entries(request: Request) -> Response:
    """GET the list or POST a new entry."""
    if request.method == "POST":
        return await create_never_log(request)
    return await list_never_log(request)


ROUTES = [
    Route("/v1/never-log", entries, methods=["GET", "POST"]),
    Route("/v1/never-log/{entry_id:int}", one_entry, methods=["GET", "DELETE"]),
]
