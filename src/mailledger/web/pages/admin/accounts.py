"""``/admin/accounts``: every mailbox account of the tenant, its status and errors in words.

The same functions as ``mailledger account …`` (``store.mailaccounts``), scoped by the session's
tenant: another tenant's account id is a 404. The admin adds shared mailboxes (``--shared
--visible-to``), names who sees them, makes any account due now, and removes one keeping or
removing what it brought in. A password is taken from the POST body into the sealed column
and never shown again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailledger.logs import get_logger
from mailledger.store import mailaccounts
from mailledger.store.directory import DirectoryError
from mailledger.store.mailaccounts import MailAccountError
from mailledger.store.models import MailboxAccount, Staff, Tenant, utcnow
from mailledger.store.queries import NotFoundError
from mailledger.store.removal import RemovalReport
from mailledger.store.websessions import WebIdentity
from mailledger.web.pages.accounts import (
    NO_HISTORY_CHOICE,
    add_imap_account,
    form_values,
    imap_request,
    removal_words,
)
from mailledger.web.pages.accountviews import PAGE_ERRORS, errors_in_words, in_words
from mailledger.web.pages.admin import forms
from mailledger.web.pages.admin.guard import admin_only
from mailledger.web.pages.site import pages_of

log = get_logger(__name__)

DONE = {
    "added": "Shared mailbox added: its first pass starts within a few seconds.",
    "sync": "Sync requested: the pass starts within a few seconds; reload to see how it ended.",
    "viewers": "Saved who sees this mailbox.",
}


def _tenant_account(session: Session, identity: WebIdentity, account_id: int) -> MailboxAccount:
    try:
        return mailaccounts.find_account(session, account_id, identity.tenant_id)
    except NotFoundError as exc:
        raise forms.Missing from exc


def _staff_names(session: Session, tenant_id: int) -> list[str]:
    return list(
        session.scalars(
            select(Staff.username)
            .where(Staff.tenant_id == tenant_id, Staff.removed_at.is_(None))
            .order_by(Staff.username)
        )
    )


async def _list_page(
    request: Request, identity: WebIdentity, *, status: int = 200, **values: Any
) -> Response:
    def read(session: Session) -> dict[str, Any]:
        tenant = session.get_one(Tenant, identity.tenant_id)
        rows = mailaccounts.list_accounts(session, tenant)
        return {"accounts": [in_words(row) for row in rows],
                "staff_names": _staff_names(session, identity.tenant_id),
                "me": session.get_one(Staff, identity.staff_id).username}  # fmt: skip

    found = await pages_of(request).read(read)
    values.setdefault("error", "")
    values.setdefault("done", forms.done_text(request, DONE))
    values.setdefault("form", {})
    return forms.page(request, identity, "admin/accounts.html", status=status, **found, **values)


@admin_only
async def accounts_page(request: Request, identity: WebIdentity) -> Response:
    """Every account of the tenant with its status and last error, and the shared-account form."""
    return await _list_page(request, identity)


@admin_only
async def add_shared(request: Request, identity: WebIdentity) -> Response:
    """Add a shared mailbox (``account add … --shared --visible-to …``) with a password."""
    pages = pages_of(request)
    form = await forms.posted(request, identity)
    if form is None:
        return forms.refused(request)
    viewers = forms.split_list(form.get("visible_to"))

    def add(session: Session) -> int:
        tenant = session.get_one(Tenant, identity.tenant_id)
        owner = form.get("owner") or session.get_one(Staff, identity.staff_id).username
        with forms.refusing(MailAccountError):
            wanted = imap_request(form, tenant, owner, shared=True, visible_to=viewers)
        return add_imap_account(session, pages.settings, wanted).id

    try:
        account_id = await pages.write(add)
    except forms.Refusal as exc:
        kept = form_values(form) | {
            "owner": form.get("owner"),
            "visible_to": form.get("visible_to"),
        }
        return await _list_page(request, identity, status=422, error=str(exc), form=kept)
    log.info("shared mailbox account added from the web", account_id=account_id)
    return pages.redirect(f"/admin/accounts/{account_id}?done=added")


async def _one_page(
    request: Request, identity: WebIdentity, account_id: int, *, status: int = 200,
    **values: Any,
) -> Response:  # fmt: skip
    pages = pages_of(request)

    def read(session: Session) -> dict[str, Any]:
        account = _tenant_account(session, identity, account_id)
        row = mailaccounts.account_dicts(session, [account])[0]
        return {
            "account": in_words(row)
            | {"recent_errors": errors_in_words(session, account, PAGE_ERRORS)},
            "staff_names": _staff_names(session, identity.tenant_id),
        }

    try:
        found = await pages.read(read)
    except forms.Missing:
        return pages.not_found()
    values.setdefault("error", "")
    values.setdefault("done", forms.done_text(request, DONE))
    return forms.page(request, identity, "admin/account.html", status=status, **found, **values)


@admin_only
async def account_page(request: Request, identity: WebIdentity) -> Response:
    """One account: its status in words and its whole error log; sync now, viewers, remove."""
    account_id = forms.path_id(request, "account_id")
    if account_id is None:
        return pages_of(request).not_found()
    return await _one_page(request, identity, account_id)


async def _write_then_show(
    request: Request,
    identity: WebIdentity,
    account_id: int,
    work: Callable[[Session], None],
    done: str,
    *,
    status: int,
) -> Response:
    """Run ``work`` on the account; back to its page saying ``done``, or why not (``status``)."""

    def again(error: str) -> Awaitable[Response]:
        return _one_page(request, identity, account_id, status=status, error=error)

    result = await forms.write_or_refuse(request, work, again)
    if isinstance(result, Response):
        return result
    return pages_of(request).redirect(f"/admin/accounts/{account_id}?done={done}")


@admin_only
async def account_sync(request: Request, identity: WebIdentity) -> Response:
    """Make any account of the tenant due now (``account sync``); the worker runs the pass."""
    found = await forms.posted_row(request, identity, "account_id")
    if isinstance(found, Response):
        return found
    account_id = found[0]

    def due(session: Session) -> None:
        account = _tenant_account(session, identity, account_id)
        with forms.refusing(MailAccountError):
            mailaccounts.retry_now(session, account, utcnow())

    return await _write_then_show(request, identity, account_id, due, "sync", status=409)


@admin_only
async def account_viewers(request: Request, identity: WebIdentity) -> Response:
    """Who sees a shared account (``set_viewers``): usernames, separated by commas or spaces."""
    found = await forms.posted_row(request, identity, "account_id")
    if isinstance(found, Response):
        return found
    account_id, form = found

    def save(session: Session) -> None:
        account = _tenant_account(session, identity, account_id)
        with forms.refusing(DirectoryError):
            mailaccounts.set_viewers(session, account, forms.split_list(form.get("visible_to")))

    return await _write_then_show(request, identity, account_id, save, "viewers", status=422)


@admin_only
async def account_remove(request: Request, identity: WebIdentity) -> Response:
    """Remove an account, keeping or removing what it brought in (``account remove``)."""
    pages = pages_of(request)
    found = await forms.posted_row(request, identity, "account_id")
    if isinstance(found, Response):
        return found
    account_id, form = found
    choice = forms.history_choice(form)

    def remove(session: Session) -> RemovalReport:
        account = _tenant_account(session, identity, account_id)
        if choice is None:
            raise forms.Refusal(NO_HISTORY_CHOICE)
        return mailaccounts.remove_account(session, pages.blobs, account, choice)

    def again(error: str) -> Awaitable[Response]:
        return _one_page(request, identity, account_id, status=422, error=error)

    report = await forms.write_or_refuse(request, remove, again)
    if isinstance(report, Response):
        return report
    log.info("mailbox account removed by an admin", account_id=account_id, history=str(choice))
    done = f"Account {account_id}: {removal_words(report)}"
    return await _list_page(request, identity, done=done)


ROUTES = [
    Route("/admin/accounts", accounts_page, methods=["GET"]),
    Route("/admin/accounts", add_shared, methods=["POST"]),
    Route("/admin/accounts/{account_id:int}", account_page, methods=["GET"]),
    Route("/admin/accounts/{account_id:int}/sync", account_sync, methods=["POST"]),
    Route("/admin/accounts/{account_id:int}/viewers", account_viewers, methods=["POST"]),
    Route("/admin/accounts/{account_id:int}/remove", account_remove, methods=["POST"]),
]
