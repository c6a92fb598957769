"""``/admin/never-log``: addresses and domains never recorded, tenant-wide or per staff member.

The same store functions as ``mailledger never-log …`` and ``/v1/never-log``
(``queries.never_log``, ``directory.add_never_log``/``remove_never_log``).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailledger.store import directory, queries
from mailledger.store.directory import DirectoryError
from mailledger.store.models import Tenant
from mailledger.store.websessions import WebIdentity
from mailledger.web.pages.admin import forms
from mailledger.web.pages.admin.guard import admin_only
from mailledger.web.pages.site import pages_of

DONE = {"added": "Added to the never-log list.", "removed": "Removed: that mail is recorded again."}


async def _list_page(
    request: Request,
    identity: WebIdentity,
    *,
    status: int = 200,
    error: str = "",
    form: dict[str, str] | None = None,
) -> Response:
    def read(session: Session) -> dict[str, Any]:
        tenant = session.get_one(Tenant, identity.tenant_id)
        staff = [s for s in queries.staff_members(session, tenant) if s["state"] != "removed"]
        return {
            "entries": queries.never_log(session, tenant, every_scope=True),
            "usernames": [s["username"] for s in staff],
        }

    values = await pages_of(request).read(read)
    return forms.page(
        request, identity, "admin/neverlog.html", status=status, error=error,
        done=forms.done_text(request, DONE), form=form or {}, **values,
    )  # fmt: skip


@admin_only
async def list_never_log(request: Request, identity: WebIdentity) -> Response:
    """Every entry, tenant-wide and each staff member's, and the form that adds one."""
    return await _list_page(request, identity)


@admin_only
async def add_never_log(request: Request, identity: WebIdentity) -> Response:
    """Never record mail with an address or domain (``never-log add``)."""
    form = await forms.posted(request, identity)
    if form is None:
        return forms.refused(request)
    fields = {"pattern": form.get("pattern"), "staff": form.get("staff")}
    if not fields["pattern"]:
        return await _list_page(
            request, identity, status=400, form=fields,
            error="Enter an address (name@example.com) or a domain (example.com).",
        )  # fmt: skip

    def add(session: Session) -> None:
        tenant = session.get_one(Tenant, identity.tenant_id)
        with forms.refusing(DirectoryError):
            staff = (
                directory.find_staff(session, tenant, fields["staff"]) if fields["staff"] else None
            )
            directory.add_never_log(session, tenant, fields["pattern"], staff=staff)

    def again(error: str) -> Awaitable[Response]:
        return _list_page(request, identity, status=422, error=error, form=fields)

    added = await forms.write_or_refuse(request, add, again)
    if isinstance(added, Response):
        return added
    return pages_of(request).redirect("/admin/never-log?done=added")


@admin_only
async def remove_never_log(request: Request, identity: WebIdentity) -> Response:
    """Take one entry off its list (``never-log remove``); another tenant's is a 404."""
    pages = pages_of(request)
    found = await forms.posted_row(request, identity, "entry_id")
    if isinstance(found, Response):
        return found
    entry_id = found[0]

    def remove(session: Session) -> None:
        tenant = session.get_one(Tenant, identity.tenant_id)
        entries = queries.never_log(session, tenant, every_scope=True)
        entry = next((e for e in entries if e["id"] == entry_id), None)
        if entry is None:
            raise forms.Missing
        staff = None
        if entry["staff"] is not None:
            staff = directory.find_staff(session, tenant, entry["staff"], include_removed=True)
        directory.remove_never_log(session, tenant, entry["pattern"], staff=staff)

    try:
        await pages.write(remove)
    except forms.Missing:
        return pages.not_found()
    return pages.redirect("/admin/never-log?done=removed")


ROUTES = [
    Route("/admin/never-log", list_never_log, methods=["GET"]),
    Route("/admin/never-log", add_never_log, methods=["POST"]),
    Route("/admin/never-log/{entry_id:int}/remove", remove_never_log, methods=["POST"]),
]
