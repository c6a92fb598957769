"""``/v1/accounts``: the tenant's mailbox accounts (``account …`` in the CLI), DESIGN §12.

The same store functions as the CLI (``store.mailaccounts``). A password is accepted on
create and re-connect and never returned; OAuth accounts are connected where a person can
sign in (the integrations page, ``account add --oauth``). PATCH changes ``authserv_id``
(``account set``). "Sync now" makes the account due at
once for the sync worker (202): a pass can take minutes, longer than a request should.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailledger.config import Settings
from mailledger.store import mailaccounts
from mailledger.store.directory import DirectoryError
from mailledger.store.mailaccounts import AccountRequest, MailAccountError
from mailledger.store.models import MailboxAccount, SyncMode, utcnow
from mailledger.store.queries import NotFoundError
from mailledger.store.removal import History
from mailledger.store.secretbox import SecretBox, SecretError
from mailledger.web.api.common import (
    bool_field,
    by_method,
    created,
    history_param,
    json_object,
    list_field,
    only_params,
    page_limit,
    path_id,
    problem_from,
    tenant_row,
    text_field,
    writer,
)
from mailledger.web.auth import identify
from mailledger.web.context import context_of
from mailledger.web.problems import ProblemError

CREATE_FIELDS = {
    "staff", "login", "imap", "password", "security", "allow_invalid_cert", "mode", "since",
    "folders", "source_folder", "processed_folder", "shared", "visible_to", "authserv_id",
}  # fmt: skip


def _site(request: Request) -> Settings:
    site: Settings | None = getattr(request.app.state, "site", None)
    if site is None:
        raise ProblemError(503, "accounts need the server's whole configuration, not given")
    return site


def _box(site: Settings) -> SecretBox:
    try:
        return SecretBox.from_file(site.secrets.key_file)
    except SecretError as exc:
        raise ProblemError(503, f"credentials cannot be sealed: {exc}") from exc


def _find(session: Session, tenant_id: int, account_id: int) -> MailboxAccount:
    try:
        return mailaccounts.find_account(session, account_id, tenant_id)
    except NotFoundError as exc:
        raise ProblemError(404, str(exc)) from exc


def _record(session: Session, account: MailboxAccount) -> dict[str, Any]:
    return mailaccounts.account_dicts(session, [account])[0]


def _field_of(message: str) -> str:
    lowered = message.lower()
    for name in (
        "authserv", "since", "folder", "security", "password", "visible", "imap", "port", "login",
    ):  # fmt: skip
        if name in lowered:
            renamed = {"visible": "visible_to", "folder": "folders", "port": "imap"}
            return renamed.get(name, "authserv_id" if name == "authserv" else name)
    return "staff"


async def list_accounts(request: Request) -> Response:
    """Every mailbox account of the tenant with its status, last sync and last error."""
    identity = await identify(request)
    only_params(request, set())

    def rows(session: Session) -> list[dict[str, Any]]:
        return mailaccounts.list_accounts(session, tenant_row(session, identity.tenant_id))

    return JSONResponse({"data": await context_of(request).read(rows)})


async def create_account(request: Request) -> Response:
    """Connect a mailbox with a password (``account add``); 201 with the account."""
    identity = await writer(request)
    site = _site(request)
    body = await json_object(request, CREATE_FIELDS)
    mode = text_field(body, "mode") or "sweep"
    if mode not in ("sweep", "folder"):
        raise ProblemError(422, "mode: sweep or folder", field="mode")
    username = text_field(body, "staff", required=True) or ""
    login = text_field(body, "login", required=True) or ""
    imap = text_field(body, "imap", required=True) or ""
    password = text_field(body, "password", required=True) or ""
    security = text_field(body, "security") or "tls"
    allow_invalid_cert = bool(bool_field(body, "allow_invalid_cert"))
    since = text_field(body, "since") or "now"
    folders = list_field(body, "folders")
    source_folder = text_field(body, "source_folder") or "mailledger"
    processed_folder = text_field(body, "processed_folder") or "mailledger/Processed"
    shared = bool(bool_field(body, "shared"))
    visible_to = list_field(body, "visible_to")
    authserv_id = text_field(body, "authserv_id") or ""
    box = _box(site)

    def add(session: Session) -> dict[str, Any]:
        tenant = tenant_row(session, identity.tenant_id)
        try:
            account = mailaccounts.add_account(
                session,
                box,
                AccountRequest(
                    tenant=tenant,
                    username=username,
                    login=login,
                    imap=imap,
                    password=password,
                    security=security,
                    allow_invalid_cert=allow_invalid_cert,
                    mode=SyncMode(mode),
                    since=since,
                    folders=folders,
                    source_folder=source_folder,
                    processed_folder=processed_folder,
                    shared=shared,
                    visible_to=visible_to,
                    authserv_id=authserv_id,
                ),
                now=utcnow(),
                max_accounts_per_tenant=site.sync.max_accounts_per_tenant,
            )
        except MailAccountError as exc:
            status = 409 if "already account" in str(exc) or "the most" in str(exc) else 422
            raise ProblemError(status, str(exc), field=_field_of(str(exc))) from exc
        except DirectoryError as exc:
            raise ProblemError(422, f"staff: {exc}", field="staff") from exc
        return _record(session, account)

    return created(await context_of(request).write(add), "/v1/accounts")


async def get_account(request: Request) -> Response:
    """One account (``account show``), with its five latest errors."""
    identity = await identify(request)
    only_params(request, set())
    account_id = path_id(request, "account_id")

    def show(session: Session) -> dict[str, Any]:
        account = _find(session, identity.tenant_id, account_id)
        record = _record(session, account)
        record["recent_errors"] = mailaccounts.account_errors(session, account, limit=5)
        return record

    return JSONResponse(await context_of(request).read(show))


async def update_account(request: Request) -> Response:
    """Change whose Authentication-Results the account's mail is judged on (``account set``).

    Only ``authserv_id`` can change: the server, login and mode are the account's identity
    (remove it and connect again), and a password changes by ``reconnect``.
    """
    identity = await writer(request)
    account_id = path_id(request, "account_id")
    body = await json_object(request, {"authserv_id"})
    if "authserv_id" not in body:
        raise ProblemError(422, "say what to change: authserv_id", field="authserv_id")
    authserv_id = text_field(body, "authserv_id") or ""

    def change(session: Session) -> dict[str, Any]:
        account = _find(session, identity.tenant_id, account_id)
        with problem_from(MailAccountError, field="authserv_id"):
            mailaccounts.set_authserv_id(account, authserv_id)
        return _record(session, account)

    return JSONResponse(await context_of(request).write(change))


async def delete_account(request: Request) -> Response:
    """Disconnect, keeping or removing what it brought in (``account remove``)."""
    identity = await writer(request)
    account_id = path_id(request, "account_id")
    choice = History(history_param(request))
    api = context_of(request)

    def remove(session: Session) -> dict[str, Any]:
        account = _find(session, identity.tenant_id, account_id)
        report = mailaccounts.remove_account(session, api.blobs, account, choice)
        return {"id": account_id, "removed": True, **asdict(report)}

    return JSONResponse(await api.write(remove))


async def account_errors(request: Request) -> Response:
    """The account's error log, newest first (``account errors``)."""
    identity = await identify(request)
    params = only_params(request, {"limit"})
    limit = page_limit(params.get("limit"))
    account_id = path_id(request, "account_id")

    def rows(session: Session) -> list[dict[str, Any]]:
        account = _find(session, identity.tenant_id, account_id)
        return mailaccounts.account_errors(session, account, limit=limit)

    return JSONResponse({"data": await context_of(request).read(rows)})


async def reconnect_account(request: Request) -> Response:
    """A new password for a password account (``account reconnect``); tried again soon."""
    identity = await writer(request)
    site = _site(request)
    account_id = path_id(request, "account_id")
    body = await json_object(request, {"password"})
    password = text_field(body, "password", required=True) or ""
    box = _box(site)

    def reconnect(session: Session) -> dict[str, Any]:
        account = _find(session, identity.tenant_id, account_id)
        with problem_from(MailAccountError, field="password"):
            mailaccounts.reconnect_password(session, box, account, password, utcnow())
        return _record(session, account)

    return JSONResponse(await context_of(request).write(reconnect))


async def sync_account(request: Request) -> Response:
    """Make the account due now; the sync worker runs the pass (202)."""
    identity = await writer(request)
    only_params(request, set())
    account_id = path_id(request, "account_id")

    def due(session: Session) -> dict[str, Any]:
        account = _find(session, identity.tenant_id, account_id)
        with problem_from(MailAccountError, 409):
            mailaccounts.retry_now(session, account, utcnow())
        return _record(session, account)

    return JSONResponse(await context_of(request).write(due), status_code=202)


ROUTES = [
    Route("/v1/accounts", by_method(list_accounts, post=create_account), methods=["GET", "POST"]),
    Route(
        "/v1/accounts/{account_id:int}",
        by_method(get_account, patch=update_account, delete=delete_account),
        methods=["GET", "PATCH", "DELETE"],
    ),
    Route("/v1/accounts/{account_id:int}/errors", account_errors, methods=["GET"]),
    Route("/v1/accounts/{account_id:int}/reconnect", reconnect_account, methods=["POST"]),
    Route("/v1/accounts/{account_id:int}/sync", sync_account, methods=["POST"]),
]
