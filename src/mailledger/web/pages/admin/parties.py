"""``/admin/contacts``: the tenant's contacts and companies; search, add, edit, remove.

The same store functions as ``mailledger contact|company …`` and ``/v1/contacts``,
``/v1/companies`` (store/directory.py, store/queries.py, store/removal.py). Each row links to
its timeline (``/contacts/{id}``, ``/companies/{id}``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailledger.store import directory, queries
from mailledger.store.directory import DirectoryError
from mailledger.store.models import Company, Contact, Tenant
from mailledger.store.removal import remove_contact
from mailledger.store.websessions import WebIdentity
from mailledger.web.pages.admin import forms
from mailledger.web.pages.admin.guard import admin_only
from mailledger.web.pages.site import pages_of

SHOWN = 200  # rows per list; the search box narrows a longer one
MAX_SEARCH = 200

DONE = {
    "contact-added": "Contact added.",
    "company-added": "Company added.",
    "saved": "Saved.",
    "contact-removed": "Contact removed.",
    "company-removed": "Company removed; its contacts stay, without a company.",
}


def _tenant(session: Session, identity: WebIdentity) -> Tenant:
    return session.get_one(Tenant, identity.tenant_id)


def _contact(session: Session, tenant: Tenant, contact_id: int) -> Contact:
    try:
        return directory.find_contact(session, tenant, str(contact_id))
    except DirectoryError as exc:
        raise forms.Missing from exc


def _company(session: Session, tenant: Tenant, company_id: int) -> Company:
    try:
        return directory.find_company(session, tenant, str(company_id))
    except DirectoryError as exc:
        raise forms.Missing from exc


# --- the list ---------------------------------------------------------------------------------


async def _list_page(
    request: Request,
    identity: WebIdentity,
    *,
    status: int = 200,
    error: str = "",
    contact_form: dict[str, str] | None = None,
    company_form: dict[str, str] | None = None,
) -> Response:
    search = request.query_params.get("q", "").strip()[:MAX_SEARCH]

    def read(session: Session) -> dict[str, Any]:
        tenant = _tenant(session, identity)
        contacts = queries.contacts(session, tenant, limit=SHOWN + 1, search=search)
        companies = queries.companies(session, tenant, search=search)
        return {
            "contacts": contacts[:SHOWN],
            "more_contacts": len(contacts) > SHOWN,
            "companies": companies[:SHOWN],
            "more_companies": len(companies) > SHOWN,
        }

    values = await pages_of(request).read(read)
    return forms.page(
        request, identity, "admin/parties.html", status=status, error=error,
        done=forms.done_text(request, DONE), search=search, contact_form=contact_form or {},
        company_form=company_form or {}, shown=SHOWN, **values,
    )  # fmt: skip


@admin_only
async def list_parties(request: Request, identity: WebIdentity) -> Response:
    """Contacts and companies, searchable, with the forms that add them."""
    return await _list_page(request, identity)


@admin_only
async def companies_home(request: Request, identity: WebIdentity) -> Response:
    """Companies are listed beside the contacts."""
    return pages_of(request).redirect("/admin/contacts#companies")


@admin_only
async def add_contact(request: Request, identity: WebIdentity) -> Response:
    """Add a contact (``contact add``); a refusal shows the form again with the reason."""
    form = await forms.posted(request, identity)
    if form is None:
        return forms.refused(request)
    fields = {k: form.get(k) for k in ("addresses", "name", "company")}
    if not forms.split_list(fields["addresses"]):
        return await _list_page(
            request, identity, status=400, contact_form=fields,
            error="Enter at least one address for the contact.",
        )  # fmt: skip

    def add(session: Session) -> None:
        with forms.refusing(DirectoryError):
            directory.add_contact(
                session, _tenant(session, identity), forms.split_list(fields["addresses"]),
                name=fields["name"], company=fields["company"] or None,
            )  # fmt: skip

    def again(error: str) -> Awaitable[Response]:
        return _list_page(request, identity, status=422, error=error, contact_form=fields)

    added = await forms.write_or_refuse(request, add, again)
    if isinstance(added, Response):
        return added
    return pages_of(request).redirect("/admin/contacts?done=contact-added")


@admin_only
async def add_company(request: Request, identity: WebIdentity) -> Response:
    """Add a company with its domains (``company add``; a name in use is refused)."""
    form = await forms.posted(request, identity)
    if form is None:
        return forms.refused(request)
    fields = {k: form.get(k) for k in ("name", "domains")}
    if not fields["name"]:
        return await _list_page(
            request, identity, status=400, company_form=fields,
            error="Enter the company's name.",
        )  # fmt: skip

    def add(session: Session) -> None:
        with forms.refusing(DirectoryError):
            directory.add_new_company(
                session,
                _tenant(session, identity),
                fields["name"],
                forms.split_list(fields["domains"]),
            )

    def again(error: str) -> Awaitable[Response]:
        return _list_page(request, identity, status=422, error=error, company_form=fields)

    added = await forms.write_or_refuse(request, add, again)
    if isinstance(added, Response):
        return added
    return pages_of(request).redirect("/admin/contacts?done=company-added#companies")


# --- one contact or company -------------------------------------------------------------------


async def _one_page(
    request: Request,
    identity: WebIdentity,
    kind: str,
    *,
    status: int = 200,
    error: str = "",
) -> Response:
    pages = pages_of(request)
    row_id = forms.path_id(request, f"{kind}_id")
    if row_id is None:
        return pages.not_found()

    def read(session: Session) -> dict[str, Any]:
        tenant = _tenant(session, identity)
        if kind == "contact":
            return queries.contact(session, _contact(session, tenant, row_id))
        return queries.company(session, _company(session, tenant, row_id))

    try:
        found = await pages.read(read)
    except forms.Missing:
        return pages.not_found()
    return forms.page(
        request, identity, f"admin/{kind}.html", status=status, error=error,
        done=forms.done_text(request, DONE), row=found,
    )  # fmt: skip


@admin_only
async def show_contact(request: Request, identity: WebIdentity) -> Response:
    """One contact: the form that changes it, and the one that removes it."""
    return await _one_page(request, identity, "contact")


@admin_only
async def show_company(request: Request, identity: WebIdentity) -> Response:
    """One company: the form that changes it, and the one that removes it."""
    return await _one_page(request, identity, "company")


async def _change(
    request: Request,
    identity: WebIdentity,
    kind: str,
    work: Callable[[Session, Tenant, int, forms.Posted], str],
) -> Response:
    """Check the form, run ``work`` on the row in the path in one transaction, and redirect."""
    found = await forms.posted_row(request, identity, f"{kind}_id")
    if isinstance(found, Response):
        return found
    row_id, form = found

    def run(session: Session) -> str:
        with forms.refusing(DirectoryError):
            return work(session, _tenant(session, identity), row_id, form)

    def again(error: str) -> Awaitable[Response]:
        return _one_page(request, identity, kind, status=422, error=error)

    target = await forms.write_or_refuse(request, run, again)
    if isinstance(target, Response):
        return target
    return pages_of(request).redirect(target)


def _edit_contact(session: Session, tenant: Tenant, contact_id: int, form: forms.Posted) -> str:
    contact = _contact(session, tenant, contact_id)
    directory.set_contact(
        session, tenant, contact, name=form.get("name"), company=form.get("company"),
        add_addresses=forms.split_list(form.get("add_addresses")),
        remove_addresses=form.every("remove_address"),
    )  # fmt: skip
    return f"/admin/contacts/{contact_id}?done=saved"


def _remove_contact(blobs: Any) -> Callable[[Session, Tenant, int, forms.Posted], str]:
    def work(session: Session, tenant: Tenant, contact_id: int, form: forms.Posted) -> str:
        contact = _contact(session, tenant, contact_id)
        choice = forms.history_choice(form)
        if choice is None:
            raise forms.Refusal(
                "Say what happens to the contact's history: keep the activities, or remove "
                "those no other outside party took part in (and their raw mail)."
            )
        remove_contact(session, blobs, contact, choice)
        return "/admin/contacts?done=contact-removed"

    return work


def _edit_company(session: Session, tenant: Tenant, company_id: int, form: forms.Posted) -> str:
    company = _company(session, tenant, company_id)
    name = form.get("name")
    if not name:
        raise forms.Refusal("A company needs a name.")
    directory.set_company(
        session, tenant, company, name=name,
        add_domains=forms.split_list(form.get("add_domains")),
        remove_domains=form.every("remove_domain"),
    )  # fmt: skip
    return f"/admin/companies/{company_id}?done=saved"


def _remove_company(session: Session, tenant: Tenant, company_id: int, form: forms.Posted) -> str:
    directory.remove_company(session, _company(session, tenant, company_id))
    return "/admin/contacts?done=company-removed#companies"


@admin_only
async def edit_contact(request: Request, identity: WebIdentity) -> Response:
    """Change a contact's name, company or addresses (``contact set``)."""
    return await _change(request, identity, "contact", _edit_contact)


@admin_only
async def delete_contact(request: Request, identity: WebIdentity) -> Response:
    """Remove a contact, keeping or removing its history (``contact remove``)."""
    blobs = pages_of(request).blobs
    return await _change(request, identity, "contact", _remove_contact(blobs))


@admin_only
async def edit_company(request: Request, identity: WebIdentity) -> Response:
    """Rename a company or change its domains (``company set``)."""
    return await _change(request, identity, "company", _edit_company)


@admin_only
async def delete_company(request: Request, identity: WebIdentity) -> Response:
    """Remove a company; its contacts stay, without a company (``company remove``)."""
    return await _change(request, identity, "company", _remove_company)


ROUTES = [
    Route("/admin/contacts", list_parties, methods=["GET"]),
    Route("/admin/contacts", add_contact, methods=["POST"]),
    Route("/admin/contacts/{contact_id:int}", show_contact, methods=["GET"]),
    Route("/admin/contacts/{contact_id:int}", edit_contact, methods=["POST"]),
    Route("/admin/contacts/{contact_id:int}/remove", delete_contact, methods=["POST"]),
    Route("/admin/companies", companies_home, methods=["GET"]),
    Route("/admin/companies", add_company, methods=["POST"]),
    Route("/admin/companies/{company_id:int}", show_company, methods=["GET"]),
    Route("/admin/companies/{company_id:int}", edit_company, methods=["POST"]),
    Route("/admin/companies/{company_id:int}/remove", delete_company, methods=["POST"]),
]
