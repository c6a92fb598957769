"""``/admin/staff``: the tenant's staff; add, disable or enable, remove, make or unmake admin.

The same store functions as ``mailledger staff …`` and ``/v1/staff`` (store/directory.py,
store/removal.py). One rule is the pages' own, and lives in the store too
(``directory.refuse_last_admin``): an admin cannot leave the tenant without an admin.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailledger.forwarding.handback import forwarding_status
from mailledger.mail.addresses import capture_address
from mailledger.store import directory, queries
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.directory import DirectoryError
from mailledger.store.models import Staff, Tenant
from mailledger.store.removal import remove_staff
from mailledger.store.websessions import WebIdentity
from mailledger.web.pages.admin import forms
from mailledger.web.pages.admin.guard import admin_only
from mailledger.web.pages.admin.times import when
from mailledger.web.pages.site import pages_of

DONE = {
    "added": "Staff member added.",
    "disabled": "Disabled: mail to their capture address is refused from now on.",
    "enabled": "Enabled: mail to their capture address is accepted again.",
    "admin-made": "They are an admin now.",
    "admin-unmade": "They are no longer an admin.",
    "removed": "Staff member removed.",
}


def staff_list(session: Session, tenant: Tenant) -> list[dict[str, Any]]:
    """Every staff member with admin flag and forwarding status (``staff list`` and more)."""
    rows = {s.id: s for s in session.scalars(select(Staff).where(Staff.tenant_id == tenant.id))}
    listed = []
    for record in queries.staff_members(session, tenant):
        staff = rows[record["id"]]
        forwarding = forwarding_status(session, staff)
        listed.append(record | {"admin": staff.admin, "forwarding": forwarding["state"]})
    return listed


def _one(session: Session, identity: WebIdentity, staff_id: int) -> Staff | None:
    """The staff member with this id in the session's tenant; another tenant's is None."""
    return session.scalars(
        select(Staff).where(Staff.tenant_id == identity.tenant_id, Staff.id == staff_id)
    ).one_or_none()


def staff_view(session: Session, tenant: Tenant, staff: Staff) -> dict[str, Any]:
    """One staff member as the detail page shows them."""
    forwarding = forwarding_status(session, staff)
    return {
        "id": staff.id,
        "username": staff.username,
        "name": staff.name,
        "capture_address": capture_address(staff.username, tenant.capture_domain),
        "primary_address": staff.primary_address,
        "addresses": sorted(a.address for a in staff.addresses),
        "admin": staff.admin,
        "state": queries.staff_state(staff)["state"],
        "disabled_at": when(staff.disabled_at),
        "forwarding": forwarding["state"],
        "forwarding_proven_at": when(forwarding.get("proven_at")),
        "relay_password": staff.password_hash is not None,
    }


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
        return {"staff": staff_list(session, tenant), "tenant": tenant.name}

    values = await pages_of(request).read(read)
    return forms.page(
        request, identity, "admin/staff.html", status=status, error=error,
        done=forms.done_text(request, DONE), form=form or {}, **values,
    )  # fmt: skip


@admin_only
async def list_staff(request: Request, identity: WebIdentity) -> Response:
    """The staff table and the form that adds one."""
    return await _list_page(request, identity)


@admin_only
async def add_staff(request: Request, identity: WebIdentity) -> Response:
    """Add a staff member (``staff add``); a refusal shows the form again with the reason."""
    form = await forms.posted(request, identity)
    if form is None:
        return forms.refused(request)
    fields = {k: form.get(k) for k in ("username", "name", "addresses", "primary")}
    if not fields["username"] or not fields["addresses"]:
        return await _list_page(
            request, identity, status=400, form=fields,
            error="Enter a username and at least one of their own addresses.",
        )  # fmt: skip

    def add(session: Session) -> None:
        tenant = session.get_one(Tenant, identity.tenant_id)
        with forms.refusing(DirectoryError):
            directory.add_staff(
                session, tenant, fields["username"], forms.split_list(fields["addresses"]),
                name=fields["name"], primary=fields["primary"] or None,
            )  # fmt: skip

    def again(error: str) -> Awaitable[Response]:
        return _list_page(request, identity, status=422, error=error, form=fields)

    added = await forms.write_or_refuse(request, add, again)
    if isinstance(added, Response):
        return added
    return pages_of(request).redirect("/admin/staff?done=added")


async def _detail(
    request: Request, identity: WebIdentity, staff_id: int, *, status: int = 200, error: str = ""
) -> Response:
    def read(session: Session) -> dict[str, Any] | None:
        staff = _one(session, identity, staff_id)
        if staff is None:
            return None
        tenant = session.get_one(Tenant, identity.tenant_id)
        return staff_view(session, tenant, staff)

    found = await pages_of(request).read(read)
    if found is None:
        return pages_of(request).not_found()
    return forms.page(
        request, identity, "admin/staff_one.html", status=status, member=found, error=error,
        done=forms.done_text(request, DONE), myself=found["id"] == identity.staff_id,
    )  # fmt: skip


@admin_only
async def show_staff(request: Request, identity: WebIdentity) -> Response:
    """One staff member, with the buttons that act on them."""
    staff_id = forms.path_id(request, "staff_id")
    if staff_id is None:
        return pages_of(request).not_found()
    return await _detail(request, identity, staff_id)


async def _act(request: Request, identity: WebIdentity, action: str) -> Response:
    """Check the form and run ``action`` on the staff member in the path, in one transaction."""
    pages = pages_of(request)
    found = await forms.posted_row(request, identity, "staff_id")
    if isinstance(found, Response):
        return found
    staff_id, form = found

    def run(session: Session) -> str:
        staff = _one(session, identity, staff_id)
        if staff is None:
            raise forms.Missing
        if staff.removed_at is not None:
            raise forms.Refusal(f"{staff.username} was removed; nothing more can be done to them")
        with forms.refusing(DirectoryError):
            return _ACTIONS[action](session, staff, form, pages.blobs)

    def again(error: str) -> Awaitable[Response]:
        return _detail(request, identity, staff_id, status=422, error=error)

    done = await forms.write_or_refuse(request, run, again)
    if isinstance(done, Response):
        return done
    if done == "removed":
        return pages.redirect("/admin/staff?done=removed")
    return pages.redirect(f"/admin/staff/{staff_id}?done={done}")


def _disable(session: Session, staff: Staff, form: forms.Posted, blobs: BlobBackend) -> str:
    directory.refuse_last_admin(session, staff, "disable")
    directory.disable_staff(session, staff)
    return "disabled"


def _enable(session: Session, staff: Staff, form: forms.Posted, blobs: BlobBackend) -> str:
    directory.enable_staff(session, staff)
    return "enabled"


def _admin(session: Session, staff: Staff, form: forms.Posted, blobs: BlobBackend) -> str:
    wanted = form.get("admin")
    if wanted not in ("yes", "no"):
        raise forms.Refusal("Choose whether they are an admin (yes or no).")
    if wanted == "no":
        directory.refuse_last_admin(session, staff, "unmake as admin")
    directory.set_admin(session, staff, wanted == "yes")
    return "admin-made" if wanted == "yes" else "admin-unmade"


def _remove(session: Session, staff: Staff, form: forms.Posted, blobs: BlobBackend) -> str:
    choice = forms.history_choice(form)
    if choice is None:
        raise forms.Refusal(
            f"Say what happens to {staff.username}'s history: keep the activities they "
            "brought in, or remove those only they brought in (and their raw mail)."
        )
    directory.refuse_last_admin(session, staff, "remove")
    remove_staff(session, blobs, staff, choice)
    return "removed"


_ACTIONS = {"disable": _disable, "enable": _enable, "admin": _admin, "remove": _remove}


@admin_only
async def disable(request: Request, identity: WebIdentity) -> Response:
    """Refuse the staff member's capture address at RCPT (``staff disable``)."""
    return await _act(request, identity, "disable")


@admin_only
async def enable(request: Request, identity: WebIdentity) -> Response:
    """Accept the staff member's capture address again (``staff enable``)."""
    return await _act(request, identity, "enable")


@admin_only
async def set_admin(request: Request, identity: WebIdentity) -> Response:
    """Make or unmake a tenant admin (``staff set --admin/--no-admin``)."""
    return await _act(request, identity, "admin")


@admin_only
async def remove(request: Request, identity: WebIdentity) -> Response:
    """Remove one who left, keeping or removing the history (``staff remove``)."""
    return await _act(request, identity, "remove")


ROUTES = [
    Route("/admin/staff", list_staff, methods=["GET"]),
    Route("/admin/staff", add_staff, methods=["POST"]),
    Route("/admin/staff/{staff_id:int}", show_staff, methods=["GET"]),
    Route("/admin/staff/{staff_id:int}/disable", disable, methods=["POST"]),
    Route("/admin/staff/{staff_id:int}/enable", enable, methods=["POST"]),
    Route("/admin/staff/{staff_id:int}/admin", set_admin, methods=["POST"]),
    Route("/admin/staff/{staff_id:int}/remove", remove, methods=["POST"]),
]
