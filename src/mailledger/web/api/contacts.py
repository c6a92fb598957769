"""``/v1/contacts``: the tenant's contacts, through the directory functions the CLI calls.

``contact add|list|show|set|remove`` and these routes share store/directory.py,
store/queries.py and store/removal.py, so a rule (an address is one contact's; removal says
what happens to the history) is written once (DESIGN §11).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailledger.store import directory, queries
from mailledger.store.directory import DirectoryError
from mailledger.store.models import Contact
from mailledger.store.removal import History, remove_contact
from mailledger.web.api.common import (
    by_method,
    created,
    history_param,
    id_param,
    invalid,
    json_object,
    list_field,
    not_found,
    only_params,
    page_limit,
    path_id,
    tenant_row,
    text_field,
    writer,
)
from mailledger.web.auth import identify
from mailledger.web.context import context_of
from mailledger.web.problems import ProblemError

FIELDS = {"name", "company", "addresses"}
CHANGES = {"name", "company", "add_addresses", "remove_addresses"}


def _find(session: Session, tenant_id: int, contact_id: int) -> Contact:
    tenant = tenant_row(session, tenant_id)
    try:
        return directory.find_contact(session, tenant, str(contact_id))
    except DirectoryError as exc:
        raise not_found(exc) from exc


async def list_contacts(request: Request) -> Response:
    """A page of contacts by id; ``next`` is the ``after`` of the following page."""
    identity = await identify(request)
    params = only_params(request, {"after", "limit"})
    after = id_param(params.get("after"), "after")
    limit = page_limit(params.get("limit"))

    def page(session: Session) -> list[dict[str, Any]]:
        tenant = tenant_row(session, identity.tenant_id)
        return queries.contacts(session, tenant, after=after, limit=limit)

    data = await context_of(request).read(page)
    last = data[-1]["id"] if data else after
    return JSONResponse({"data": data, "next": str(last) if last is not None else ""})


async def create_contact(request: Request) -> Response:
    """Add a contact (``contact add``); 201 with the contact."""
    identity = await writer(request)
    body = await json_object(request, FIELDS)
    addresses = list_field(body, "addresses", required=True)
    name = text_field(body, "name") or ""
    company = text_field(body, "company")

    def add(session: Session) -> dict[str, Any]:
        tenant = tenant_row(session, identity.tenant_id)
        try:
            contact = directory.add_contact(
                session, tenant, addresses, name=name, company=company or None
            )
        except DirectoryError as exc:
            raise invalid(exc, "addresses") from exc
        return queries.contact(session, contact)

    return created(await context_of(request).write(add), "/v1/contacts")


async def get_contact(request: Request) -> Response:
    """One contact (``contact show``)."""
    identity = await identify(request)
    contact_id = path_id(request, "contact_id")

    def show(session: Session) -> dict[str, Any]:
        return queries.contact(session, _find(session, identity.tenant_id, contact_id))

    return JSONResponse(await context_of(request).read(show))


async def update_contact(request: Request) -> Response:
    """Change name, company (``""`` for none) or addresses (``contact set``)."""
    identity = await writer(request)
    contact_id = path_id(request, "contact_id")
    body = await json_object(request, CHANGES)
    name = text_field(body, "name")
    company = text_field(body, "company")
    add = list_field(body, "add_addresses")
    remove = list_field(body, "remove_addresses")
    if name is None and company is None and not add and not remove:
        raise ProblemError(
            422, "say what to change: name, company, add_addresses or remove_addresses"
        )

    def change(session: Session) -> dict[str, Any]:
        tenant = tenant_row(session, identity.tenant_id)
        contact = _find(session, identity.tenant_id, contact_id)
        # One call per field, in one transaction, so a refusal names the field it came from.
        steps: list[tuple[str, dict[str, Any]]] = [
            ("name", {"name": name}),
            ("company", {"company": company}),
            ("add_addresses", {"add_addresses": add}),
            ("remove_addresses", {"remove_addresses": remove}),
        ]
        for field, values in steps:
            if not any(v not in (None, []) for v in values.values()):
                continue
            try:
                directory.set_contact(session, tenant, contact, **values)
            except DirectoryError as exc:
                raise invalid(exc, field) from exc
        return queries.contact(session, contact)

    return JSONResponse(await context_of(request).write(change))


async def delete_contact(request: Request) -> Response:
    """Remove a contact, keeping or removing its history (``contact remove``)."""
    identity = await writer(request)
    contact_id = path_id(request, "contact_id")
    choice = History(history_param(request))
    api = context_of(request)

    def remove(session: Session) -> dict[str, Any]:
        contact = _find(session, identity.tenant_id, contact_id)
        return asdict(remove_contact(session, api.blobs, contact, choice))

    return JSONResponse(await api.write(remove))


ROUTES = [
    Route("/v1/contacts", by_method(list_contacts, post=create_contact), methods=["GET", "POST"]),
    Route(
        "/v1/contacts/{contact_id:int}",
        by_method(get_contact, patch=update_contact, delete=delete_contact),
        methods=["GET", "PATCH", "DELETE"],
    ),
]
