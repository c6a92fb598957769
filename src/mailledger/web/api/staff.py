"""``/v1/staff``: the tenant's users, by username (``staff …`` in the CLI).

Adding, changing, disabling and removing go through store/directory.py and
store/removal.py as the CLI's do; removal answers what it did, counted.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailledger.forwarding.handback import forwarding_brief
from mailledger.store import directory, queries
from mailledger.store.directory import DirectoryError
from mailledger.store.models import Staff, Tenant
from mailledger.store.removal import History, remove_staff
from mailledger.web.api.common import (
    bool_field,
    history_param,
    invalid,
    json_object,
    list_field,
    not_found,
    only_params,
    tenant_row,
    text_field,
)
from mailledger.web.auth import identify, require_writer
from mailledger.web.context import context_of
from mailledger.web.problems import ProblemError

CHANGES = {
    "name",
    "primary_address",
    "add_addresses",
    "remove_addresses",
    "admin",
    "disabled",
    # Added below mail sent with POST /v1/messages ("" removes it).
    "signature_text",
    "signature_html",
}


def _find(
    session: Session, tenant: Tenant, username: str, *, include_removed: bool = False
) -> Staff:
    try:
        return directory.find_staff(session, tenant, username, include_removed=include_removed)
    except DirectoryError as exc:
        raise not_found(exc) from exc


def _record(session: Session, tenant: Tenant, staff: Staff) -> dict[str, Any]:
    (listed,) = [
        r for r in queries.staff_members(session, tenant) if r["username"] == staff.username
    ]
    return (
        listed
        | queries.staff_state(staff)
        | {"admin": bool(staff.admin), "forwarding": forwarding_brief(session, staff)}
        | {"signature_text": staff.signature_text, "signature_html": staff.signature_html}
    )


async def list_staff(request: Request) -> Response:
    """Every staff member of the tenant, by username, with their state."""
    identity = await identify(request)
    only_params(request, set())

    def rows(session: Session) -> list[dict[str, Any]]:
        found = queries.staff_members(session, tenant_row(session, identity.tenant_id))
        for row in found:
            row["forwarding"] = forwarding_brief(session, session.get_one(Staff, row["id"]))
        return found

    return JSONResponse({"data": await context_of(request).read(rows)})


async def create_staff(request: Request) -> Response:
    """Add a staff member (``staff add``); the answer has their capture address."""
    identity = await identify(request)
    require_writer(identity)
    body = await json_object(request, {"username", "addresses", "name", "primary_address"})
    username = text_field(body, "username", required=True) or ""
    addresses = list_field(body, "addresses", required=True)
    name = text_field(body, "name") or ""
    primary = text_field(body, "primary_address")

    def add(session: Session) -> dict[str, Any]:
        tenant = tenant_row(session, identity.tenant_id)
        try:
            directory.find_staff(session, tenant, username, include_removed=True)
        except DirectoryError:
            pass
        else:
            raise ProblemError(
                409, f"username: {username!r} is taken in this tenant", field="username"
            )
        try:
            staff = directory.add_staff(
                session, tenant, username, addresses, name=name, primary=primary
            )
        except DirectoryError as exc:
            field = "username" if repr(username.strip().lower()) in str(exc) else "addresses"
            raise invalid(exc, field) from exc
        return _record(session, tenant, staff)

    record = await context_of(request).write(add)
    return JSONResponse(
        record, status_code=201, headers={"Location": f"/v1/staff/{record['username']}"}
    )


async def get_staff(request: Request) -> Response:
    """One staff member (a removed one too: his name stays on the kept history)."""
    identity = await identify(request)
    username: str = request.path_params["username"]

    def show(session: Session) -> dict[str, Any]:
        tenant = tenant_row(session, identity.tenant_id)
        return _record(session, tenant, _find(session, tenant, username, include_removed=True))

    return JSONResponse(await context_of(request).read(show))


async def update_staff(request: Request) -> Response:
    """Change name, primary address, own addresses, admin, or disable/enable the capture."""
    identity = await identify(request)
    require_writer(identity)
    username: str = request.path_params["username"]
    body = await json_object(request, CHANGES)
    name = text_field(body, "name")
    primary = text_field(body, "primary_address")
    add = list_field(body, "add_addresses")
    remove = list_field(body, "remove_addresses")
    admin = bool_field(body, "admin")
    disabled = bool_field(body, "disabled")
    signature_text = text_field(body, "signature_text")
    signature_html = text_field(body, "signature_html")
    if not body or all(body.get(k) in (None, []) for k in CHANGES):
        raise ProblemError(422, f"say what to change: {', '.join(sorted(CHANGES))}")

    def change(session: Session) -> dict[str, Any]:
        tenant = tenant_row(session, identity.tenant_id)
        staff = _find(session, tenant, username)
        steps: list[tuple[str, dict[str, Any]]] = [
            ("name", {"name": name}),
            ("add_addresses", {"add_addresses": add}),
            ("remove_addresses", {"remove_addresses": remove}),
            ("primary_address", {"primary": primary}),
        ]
        for field, values in steps:
            if not any(v not in (None, []) for v in values.values()):
                continue
            try:
                directory.set_staff(session, staff, **values)
            except DirectoryError as exc:
                raise invalid(exc, field) from exc
        if admin is not None:
            directory.set_admin(session, staff, admin)
        if signature_text is not None or signature_html is not None:
            try:
                directory.set_signature(session, staff, text=signature_text, html=signature_html)
            except DirectoryError as exc:
                field = str(exc).split(":", 1)[0]
                raise ProblemError(422, str(exc), field=field) from exc
        if disabled is True:
            directory.disable_staff(session, staff)
        elif disabled is False:
            directory.enable_staff(session, staff)
        return _record(session, tenant, staff)

    return JSONResponse(await context_of(request).write(change))


async def delete_staff(request: Request) -> Response:
    """Remove one who left, keeping or removing the history (``staff remove``)."""
    identity = await identify(request)
    require_writer(identity)
    username: str = request.path_params["username"]
    choice = History(history_param(request))
    api = context_of(request)

    def remove(session: Session) -> dict[str, Any]:
        staff = _find(session, tenant_row(session, identity.tenant_id), username)
        return asdict(remove_staff(session, api.blobs, staff, choice))

    return JSONResponse(await api.write(remove))


async def one_staff(request: Request) -> Response:
    """GET, PATCH or DELETE one staff member."""
    if request.method == "PATCH":
        return await update_staff(request)
    if request.method == "DELETE":
        return await delete_staff(request)
    return await get_staff(request)


async def staff(request: Request) -> Response:
    """GET the list or POST a new staff member."""
    if request.method == "POST":
        return await create_staff(request)
    return await list_staff(request)


ROUTES = [
    Route("/v1/staff", staff, methods=["GET", "POST"]),
    Route("/v1/staff/{username}", one_staff, methods=["GET", "PATCH", "DELETE"]),
]
