"""A staff member's mailbox accounts on the pages: connect, sync now, re-connect, sender
checks (``account set --authserv-id``), disconnect.

Every button is a POST with the session's CSRF token and calls what ``mailledger account``
calls (``store.mailaccounts``, ``sync.oauth``). A staff member acts on their own accounts only;
shared accounts are the admins' (a viewer sees them, nothing more). Any other id, another
tenant's too, is a 404. A password arrives in a POST body and goes into the sealed column:
it is never put back into a form, a URL, a cookie or a log line.

"Sync now" makes the account due at once, as ``POST /v1/accounts/{id}/sync`` does: the sync
worker (which holds the account's lease) runs the pass within a few seconds; a pass can take
longer than a request should.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailledger.config import Settings
from mailledger.logs import get_logger
from mailledger.store import mailaccounts
from mailledger.store.directory import DirectoryError
from mailledger.store.mailaccounts import AccountRequest, MailAccountError
from mailledger.store.models import AccountKind, MailboxAccount, Staff, SyncMode, Tenant, utcnow
from mailledger.store.queries import NotFoundError
from mailledger.store.removal import History, RemovalReport
from mailledger.store.secretbox import SecretError
from mailledger.store.websessions import WebIdentity
from mailledger.sync import oauth
from mailledger.web.pages.accountsignin import allow_sign_in, secret_box, start_sign_in
from mailledger.web.pages.accountviews import (
    PAGE_ERRORS,
    described,
    may_act,
    visible_account,
)
from mailledger.web.pages.admin import forms
from mailledger.web.pages.identity import current
from mailledger.web.pages.integrations import render_integrations
from mailledger.web.pages.site import pages_of

log = get_logger(__name__)

PROVIDERS: Final = {"google": AccountKind.GOOGLE, "microsoft": AccountKind.MICROSOFT}
EMPTY_PASSWORD: Final = "password: type the mailbox's password (or its app password)"  # noqa: S105
# What the connect form remembers after a refusal: never the password.
FORM_FIELDS: Final = (
    "imap", "login", "security", "allow_invalid_cert", "mode", "since", "folders",
    "source_folder", "processed_folder", "authserv_id",
)  # fmt: skip


# --- the connect form, shared with the admin's page ---------------------------------------------


def form_values(form: forms.Posted) -> dict[str, str]:
    """What the person typed, to show again after a refusal (the password left out)."""
    return {name: form.get(name) for name in FORM_FIELDS}


def folder_list(text: str) -> list[str]:
    """Folder names typed into one field, separated by commas (a name may hold spaces)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def imap_request(
    form: forms.Posted, tenant: Tenant, username: str, *, shared: bool = False,
    visible_to: list[str] | None = None,
) -> AccountRequest:  # fmt: skip
    """The connect form as ``account add`` would be asked (store.mailaccounts checks the rest)."""
    mode = form.get("mode") or "sweep"
    if mode not in ("sweep", "folder"):
        raise MailAccountError("mode: sweep or folder")
    password = form.values.get("password", [""])[0]  # as typed: spaces may belong to it
    if not password.strip():
        raise MailAccountError(EMPTY_PASSWORD)
    return AccountRequest(
        tenant=tenant,
        username=username,
        login=form.get("login"),
        imap=form.get("imap"),
        password=password,
        security=form.get("security") or "tls",
        allow_invalid_cert=form.get("allow_invalid_cert") == "on",
        mode=SyncMode(mode),
        since=form.get("since") or "now",
        folders=folder_list(form.get("folders")) if mode == "sweep" else [],
        source_folder=form.get("source_folder") or "mailledger",
        processed_folder=form.get("processed_folder") or "mailledger/Processed",
        shared=shared,
        visible_to=visible_to or [],
        authserv_id=form.get("authserv_id"),
    )


def add_imap_account(
    session: Session, settings: Settings, request: AccountRequest
) -> MailboxAccount:
    """``account add`` with a password: sealed, ``pending`` until its first pass."""
    try:
        box = secret_box(settings)
    except SecretError as exc:
        raise forms.Refusal(f"passwords cannot be sealed on this server: {exc}") from exc
    try:
        return mailaccounts.add_account(
            session, box, request, now=utcnow(),
            max_accounts_per_tenant=settings.sync.max_accounts_per_tenant,
        )  # fmt: skip
    except DirectoryError as exc:  # MailAccountError too: both say what to change
        raise forms.Refusal(str(exc)) from exc


def removal_words(report: RemovalReport) -> str:
    """What a disconnect did, in a sentence for the page."""
    if report.history is History.KEEP:
        return f"Disconnected. Every activity it brought in stays ({report.activities_kept})."
    return (
        f"Disconnected, and what only it brought in was removed: {report.activities_deleted} "
        f"activity(ies) deleted; {report.activities_trimmed} that also came another way kept "
        "without this account as a source."
    )


NO_HISTORY_CHOICE: Final = (
    "Choose what happens to what the account already brought in: keep every activity, or "
    "remove the ones only this account brought in."
)


# --- the session and the account behind a button -----------------------------------------------


async def _session_post(request: Request) -> tuple[WebIdentity, forms.Posted] | Response:
    """The session and form behind a POST, or the answer to give instead (sign in, 403)."""
    identity = await current(request)
    if identity is None:
        return pages_of(request).redirect("/signin")
    form = await forms.posted(request, identity)
    if form is None:
        return forms.refused(request)
    return identity, form


def own_account(session: Session, identity: WebIdentity, account_id: int) -> MailboxAccount:
    """The account, if this session may act on it from its own pages; else Missing (404)."""
    try:
        account = visible_account(session, identity, account_id)
    except NotFoundError as exc:
        raise forms.Missing from exc
    if not may_act(identity, account):
        raise forms.Missing
    return account


def _refusal(
    request: Request, identity: WebIdentity, status: int
) -> Callable[[str], Awaitable[Response]]:
    """The integrations page again with why a button did nothing (``status``)."""

    def again(text: str) -> Awaitable[Response]:
        return render_integrations(request, identity, status=status, account_error=text)

    return again


# --- connect ------------------------------------------------------------------------------------


async def connect_imap(request: Request) -> Response:
    """``POST /accounts``: connect a mailbox with its password (``account add --password-file``)."""
    pages = pages_of(request)
    found = await _session_post(request)
    if isinstance(found, Response):
        return found
    identity, form = found

    def add(session: Session) -> int:
        staff = session.get_one(Staff, identity.staff_id)
        tenant = session.get_one(Tenant, identity.tenant_id)
        with forms.refusing(MailAccountError):
            wanted = imap_request(form, tenant, staff.username)
        return add_imap_account(session, pages.settings, wanted).id

    def again(error: str) -> Awaitable[Response]:
        return render_integrations(
            request, identity, status=422, account_error=error, imap_form=form_values(form)
        )

    account_id = await forms.write_or_refuse(request, add, again)
    if isinstance(account_id, Response):
        return account_id
    log.info("mailbox account connected from the web", account_id=account_id)
    return pages.redirect(f"/integrations?done=added#account-{account_id}")


async def connect_provider(request: Request) -> Response:
    """``POST /accounts/oauth``: add a Google or Microsoft 365 account and go sign in."""
    pages = pages_of(request)
    found = await _session_post(request)
    if isinstance(found, Response):
        return found
    identity, form = found
    kind = PROVIDERS.get(form.get("provider"))
    if kind is None:
        return await _refusal(request, identity, 422)("choose Google or Microsoft")
    mode = form.get("oauth_mode") or "sweep"
    settings = pages.settings

    def add(session: Session) -> str:
        try:
            box = secret_box(settings)
        except SecretError as exc:
            raise forms.Refusal(f"tokens cannot be sealed on this server: {exc}") from exc
        staff = session.get_one(Staff, identity.staff_id)
        try:
            if mode not in ("sweep", "folder"):
                raise MailAccountError("mode: sweep or folder")
            account = mailaccounts.add_account(
                session,
                box,
                AccountRequest(
                    tenant=session.get_one(Tenant, identity.tenant_id),
                    username=staff.username,
                    login=form.get("oauth_login"),
                    oauth=kind,
                    mode=SyncMode(mode),
                    since=form.get("oauth_since") or "now",
                ),
                now=utcnow(),
                max_accounts_per_tenant=settings.sync.max_accounts_per_tenant,
            )
            # The same transaction: a sign-in that cannot start leaves no account behind.
            return start_sign_in(session, account, box, settings, utcnow())
        except (DirectoryError, oauth.AuthorizationError) as exc:
            raise forms.Refusal(str(exc)) from exc

    def again(error: str) -> Awaitable[Response]:
        return render_integrations(
            request, identity, status=422, account_error=error,
            oauth_form={"oauth_login": form.get("oauth_login"), "oauth_mode": mode,
                        "oauth_since": form.get("oauth_since")},
        )  # fmt: skip

    url = await forms.write_or_refuse(request, add, again)
    if isinstance(url, Response):
        return url
    log.info("mailbox sign-in started from the web", provider=kind.value)
    return allow_sign_in(pages.redirect(url), settings)


# --- one account --------------------------------------------------------------------------------


async def account_page(request: Request) -> Response:
    """``GET /accounts/{id}``: one account in words, with its whole error log."""
    pages = pages_of(request)
    identity = await current(request)
    if identity is None:
        return pages.redirect("/signin")
    account_id = forms.path_id(request, "account_id")
    if account_id is None:
        return pages.not_found()

    def read(session: Session) -> dict[str, Any]:
        try:
            account = visible_account(session, identity, account_id)
        except NotFoundError as exc:
            raise forms.Missing from exc
        return described(session, [account], identity, PAGE_ERRORS)[0]

    try:
        account = await pages.read(read)
    except forms.Missing:
        return pages.not_found()
    response = forms.page(request, identity, "account.html", account=account)
    return allow_sign_in(response, pages.settings)


async def _account_post(request: Request) -> tuple[WebIdentity, forms.Posted, int] | Response:
    pages = pages_of(request)
    account_id = forms.path_id(request, "account_id")
    if account_id is None:
        return pages.not_found()
    found = await _session_post(request)
    if isinstance(found, Response):
        return found
    return found[0], found[1], account_id


async def sync_now(request: Request) -> Response:
    """Make the account due now (``account sync``'s first half; the worker runs the pass)."""
    pages = pages_of(request)
    found = await _account_post(request)
    if isinstance(found, Response):
        return found
    identity, _, account_id = found

    def due(session: Session) -> None:
        account = own_account(session, identity, account_id)
        with forms.refusing(MailAccountError):
            mailaccounts.retry_now(session, account, utcnow())

    done = await forms.write_or_refuse(request, due, _refusal(request, identity, 409))
    if isinstance(done, Response):
        return done
    return pages.redirect(f"/integrations?done=sync#account-{account_id}")


async def reconnect(request: Request) -> Response:
    """A new password (IMAP), or a new sign-in (Google, Microsoft); the account is tried again."""
    pages = pages_of(request)
    found = await _account_post(request)
    if isinstance(found, Response):
        return found
    identity, form, account_id = found
    password = form.values.get("password", [""])[0]
    settings = pages.settings

    def renew(session: Session) -> str:
        account = own_account(session, identity, account_id)
        try:
            box = secret_box(settings)
        except SecretError as exc:
            raise forms.Refusal(f"credentials cannot be sealed on this server: {exc}") from exc
        if account.kind is AccountKind.IMAP and not password.strip():
            raise forms.Refusal(EMPTY_PASSWORD)
        try:
            if account.kind is AccountKind.IMAP:
                mailaccounts.reconnect_password(session, box, account, password, utcnow())
                return ""
            return start_sign_in(session, account, box, settings, utcnow())
        except (MailAccountError, oauth.AuthorizationError) as exc:
            raise forms.Refusal(str(exc)) from exc

    url = await forms.write_or_refuse(request, renew, _refusal(request, identity, 422))
    if isinstance(url, Response):
        return url
    if url:
        return allow_sign_in(pages.redirect(url), settings)
    log.info("mailbox account re-connected from the web", account_id=account_id)
    return pages.redirect(f"/integrations?done=reconnected#account-{account_id}")


async def sender_checks(request: Request) -> Response:
    """Whose Authentication-Results the account's mail is judged on (``account set``)."""
    pages = pages_of(request)
    found = await _account_post(request)
    if isinstance(found, Response):
        return found
    identity, form, account_id = found

    def change(session: Session) -> str:
        account = own_account(session, identity, account_id)
        with forms.refusing(MailAccountError):
            return mailaccounts.set_authserv_id(account, form.get("authserv_id"))

    done = await forms.write_or_refuse(request, change, _refusal(request, identity, 422))
    if isinstance(done, Response):
        return done
    log.info("mailbox sender checks changed from the web", account_id=account_id)
    return pages.redirect(f"/integrations?done=authserv#account-{account_id}")


async def disconnect(request: Request) -> Response:
    """Remove the account, keeping or removing what it brought in (``account remove``)."""
    pages = pages_of(request)
    found = await _account_post(request)
    if isinstance(found, Response):
        return found
    identity, form, account_id = found
    choice = forms.history_choice(form)

    def remove(session: Session) -> RemovalReport:
        account = own_account(session, identity, account_id)
        if choice is None:
            raise forms.Refusal(NO_HISTORY_CHOICE)
        return mailaccounts.remove_account(session, pages.blobs, account, choice)

    report = await forms.write_or_refuse(request, remove, _refusal(request, identity, 422))
    if isinstance(report, Response):
        return report
    log.info("mailbox account removed from the web", account_id=account_id, history=str(choice))
    return await render_integrations(request, identity, account_done=removal_words(report))


ROUTES = [
    Route("/accounts", connect_imap, methods=["POST"]),
    Route("/accounts/oauth", connect_provider, methods=["POST"]),
    Route("/accounts/{account_id:int}", account_page, methods=["GET"]),
    Route("/accounts/{account_id:int}/sync", sync_now, methods=["POST"]),
    Route("/accounts/{account_id:int}/reconnect", reconnect, methods=["POST"]),
    Route("/accounts/{account_id:int}/authserv", sender_checks, methods=["POST"]),
    Route("/accounts/{account_id:int}/remove", disconnect, methods=["POST"]),
]
