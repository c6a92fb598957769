"""Mailbox accounts (DESIGN §12): add, list, show, errors, re-connect, viewers and remove.

One set of functions behind ``mailledger account``, the API and the pages, so a rule (what
``--since 3m`` means, who sees a shared account, what ``--remove-history`` deletes) is
written once. Passwords are sealed with the ``SecretBox`` before they reach a row and never
leave one: no function here returns a secret. Every status change goes through
:func:`set_status` (``store.accountstatus``, shared with calendar accounts), below
``sync.statuses`` which applies the rules to passes, so a re-connect from a web page and a
failed pass announce a change the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from mailledger.store import accountstatus
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.directory import DirectoryError, find_staff
from mailledger.store.models import (
    AccountKind,
    AccountStatus,
    Activity,
    ActivitySource,
    MailboxAccount,
    MailboxError,
    MailboxViewer,
    ReceivedMessage,
    Staff,
    SyncMode,
    Tenant,
)
from mailledger.store.queries import NotFoundError
from mailledger.store.removal import History, RemovalReport, remove_mailbox_history
from mailledger.store.secretbox import SecretBox

SECURITIES: Final = ("tls", "starttls", "none")
DEFAULT_PORTS: Final = {"tls": 993, "starttls": 143, "none": 143}
# `--since`: how far back the first pass reaches, fixed when the account is added.
SINCE_MONTHS: Final = {"now": 0, "1m": 1, "3m": 3, "6m": 6}
# Where Google and Microsoft 365 serve IMAP, for OAuth accounts added without --imap.
PROVIDER_HOSTS: Final = {
    AccountKind.GOOGLE: ("imap.gmail.com", 993),
    AccountKind.MICROSOFT: ("outlook.office365.com", 993),
}
PROVIDER_NAMES: Final = {AccountKind.GOOGLE: "Google", AccountKind.MICROSOFT: "Microsoft 365"}
# Folders a sweep never reads (DESIGN §12), refused as --folder.
NEVER_SWEPT: Final = frozenset({"trash", "junk", "spam", "deleted items", "junk e-mail"})
MAX_FOLDER_CHARS: Final = 255
MAX_PASSWORD_CHARS: Final = 1024
MAX_AUTHSERV_ID_CHARS: Final = 255
# An authserv-id is a token (RFC 8601 §2.2, RFC 2045 §5.1): no spaces, ";", "=" or quotes.
_AUTHSERV_ID = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`{|}~-]+$")
_HOST = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$|^\[?[0-9a-fA-F:.]+\]?$"
)


class MailAccountError(DirectoryError):
    """A mailbox account request that cannot be done; the message says what to change."""


@dataclass
class AccountRequest:
    """What ``account add`` (or the API, or the page) asks for, before it is checked."""

    tenant: Tenant
    username: str
    login: str
    imap: str = ""  # HOST[:PORT]; empty for an OAuth account: the provider's server
    password: str | None = field(default=None, repr=False)
    oauth: AccountKind | None = None  # GOOGLE or MICROSOFT
    security: str = "tls"
    allow_invalid_cert: bool = False
    mode: SyncMode = SyncMode.SWEEP
    since: str = "now"
    folders: list[str] = field(default_factory=list)
    source_folder: str = "mailledger"
    processed_folder: str = "mailledger/Processed"
    shared: bool = False
    visible_to: list[str] = field(default_factory=list)
    # `--authserv-id`: whose Authentication-Results a plain IMAP account's mail is judged on.
    authserv_id: str = ""


# --- checking what was asked ------------------------------------------------------------------


def parse_imap(value: str, security: str) -> tuple[str, int]:
    """``HOST[:PORT]`` (IPv6 in brackets) as host and port; the port defaults by ``security``."""
    text = value.strip()
    host, port = text, DEFAULT_PORTS[security]
    if text.startswith("["):
        inside, _, rest = text[1:].partition("]")
        host = inside
        if rest:
            if not rest.startswith(":"):
                raise MailAccountError(f"{value!r} is not HOST[:PORT]")
            port = _port(rest[1:], value)
    elif text.count(":") == 1:
        host, _, digits = text.partition(":")
        port = _port(digits, value)
    if not host or not _HOST.match(host):
        raise MailAccountError(f"{value!r} is not an IMAP server name (HOST or HOST:PORT)")
    return host.lower(), port


def _port(digits: str, value: str) -> int:
    if not digits.isdigit() or not 1 <= int(digits) <= 65535:
        raise MailAccountError(f"{value!r}: the port must be a number from 1 to 65535")
    return int(digits)


def since_moment(value: str, now: datetime) -> datetime:
    """``now``, ``1m``, ``3m`` or ``6m`` as the fixed moment the sync reaches back to."""
    months = SINCE_MONTHS.get(value.strip().lower())
    if months is None:
        raise MailAccountError(f"--since {value!r}: say now, 1m, 3m or 6m")
    year, month = divmod(now.month - 1 - months, 12)
    first = now.replace(year=now.year + year, month=month + 1, day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return first.replace(day=min(now.day, (following - first).days))


def check_folder(name: str, *, sweep: bool = True) -> str:
    """A folder name as given, if it can be one; Trash and Junk are never swept."""
    text = name.strip()
    if not text or len(text) > MAX_FOLDER_CHARS or any(ord(c) < 32 for c in text):
        raise MailAccountError(
            f"{name!r} is not a folder name (1 to {MAX_FOLDER_CHARS} characters, no control "
            "characters)"
        )
    if sweep and text.rpartition("/")[2].lower() in NEVER_SWEPT:
        raise MailAccountError(f"{text!r}: Trash and Junk folders are never synced")
    return text


def check_password(password: str | None) -> str:
    """A password as read from its file (without its final newline), if it is one."""
    if password is None or not password.strip():
        raise MailAccountError(
            "the password is empty: put it in the file given with --password-file"
        )
    if len(password) > MAX_PASSWORD_CHARS or any(c in password for c in "\r\n\x00"):
        raise MailAccountError("the password file must hold one line: the password")
    return password


def check_authserv_id(value: str, kind: AccountKind = AccountKind.IMAP) -> str:
    """An authserv-id as the account's server stamps it (RFC 8601 §2.2), lowercase; or empty.

    Only a plain IMAP account takes one: Google's and Microsoft 365's are known, and an
    account that named another would trust headers its provider never wrote.
    """
    text = value.strip()
    if not text:
        return ""
    if kind is not AccountKind.IMAP:
        name = PROVIDER_NAMES.get(kind, kind.value)
        raise MailAccountError(
            f"--authserv-id is for plain IMAP accounts: {name}'s Authentication-Results are "
            "recognised without it"
        )
    if len(text) > MAX_AUTHSERV_ID_CHARS or not _AUTHSERV_ID.match(text):
        raise MailAccountError(
            f"--authserv-id {value!r}: give the one name the mailbox's server writes at the "
            "start of its Authentication-Results (such as mail.example.com), nothing after it"
        )
    return text.lower()


def _check_login(login: str) -> str:
    text = login.strip()
    if not text or len(text) > 320 or any(ord(c) < 33 for c in text):
        raise MailAccountError(f"{login!r} is not a login (the mailbox's user name or address)")
    return text


# --- status changes -----------------------------------------------------------------------------


# One implementation for mailbox and calendar accounts (store/accountstatus.py); the names
# stay importable from here.
status_data = accountstatus.status_data
set_status = accountstatus.set_status
reset = accountstatus.reset


def awaiting_sign_in(session: Session, account: MailboxAccount, now: datetime) -> None:
    """An OAuth account before its first sign-in: ``reconnect``, quietly (nobody to tell)."""
    name = PROVIDER_NAMES.get(account.kind, account.kind.value)
    account.last_error = f"waiting for {name} sign-in"
    account.retry_at = None
    account.announced_status = AccountStatus.RECONNECT.value
    account.mailed_status = AccountStatus.RECONNECT.value
    set_status(session, account, AccountStatus.RECONNECT, now)


# --- add, find, list --------------------------------------------------------------------------


def add_account(
    session: Session,
    box: SecretBox,
    request: AccountRequest,
    *,
    now: datetime,
    max_accounts_per_tenant: int | None = None,
) -> MailboxAccount:
    """Check ``request`` and add the account: ``pending`` (password) or waiting for sign-in.

    An OAuth account's sign-in is started by the caller (``sync.oauth.begin_authorization``):
    the store knows nothing of providers' URLs.
    """
    tenant = request.tenant
    staff = find_staff(session, tenant, request.username)
    if request.security not in SECURITIES:
        raise MailAccountError(f"--security {request.security!r}: say tls, starttls or none")
    kind = request.oauth or AccountKind.IMAP
    if request.imap.strip():
        host, port = parse_imap(request.imap, request.security)
    elif kind in PROVIDER_HOSTS:
        host, port = PROVIDER_HOSTS[kind]
    else:
        raise MailAccountError("say which IMAP server: --imap HOST[:PORT]")
    login = _check_login(request.login)
    authserv_id = check_authserv_id(request.authserv_id, kind)
    if kind is AccountKind.IMAP:
        secret = box.seal(check_password(request.password))
    elif request.password is not None:
        raise MailAccountError("an OAuth account signs in with its provider: give no password")
    else:
        secret = ""
    mode = SyncMode(request.mode)
    sweep = mode is SyncMode.SWEEP
    folders = list(dict.fromkeys(check_folder(f, sweep=sweep) for f in request.folders))
    if folders and not sweep:
        raise MailAccountError("--folder names folders to sweep: folder mode reads one folder")
    source = check_folder(request.source_folder, sweep=False)
    processed = check_folder(request.processed_folder, sweep=False)
    if source == processed:
        raise MailAccountError("the folder to import from and the processed folder must differ")
    if request.visible_to and not request.shared:
        raise MailAccountError("--visible-to is for shared accounts: add --shared")
    viewers = [find_staff(session, tenant, name) for name in dict.fromkeys(request.visible_to)]
    if max_accounts_per_tenant is not None:
        count = session.scalar(
            select(func.count())
            .select_from(MailboxAccount)
            .where(MailboxAccount.tenant_id == tenant.id)
        )
        if (count or 0) >= max_accounts_per_tenant:
            raise MailAccountError(
                f"tenant {tenant.name!r} has {count} mailbox account(s), the most "
                f"[sync] max_accounts_per_tenant allows ({max_accounts_per_tenant}): remove "
                "one, or raise the limit"
            )
    duplicate = session.scalars(
        select(MailboxAccount.id).where(
            MailboxAccount.tenant_id == tenant.id,
            func.lower(MailboxAccount.login) == login.lower(),
            MailboxAccount.host == host,
        )
    ).first()
    if duplicate is not None:
        raise MailAccountError(
            f"{login} on {host} is already account {duplicate}: re-connect it with "
            f"`mailledger account reconnect {duplicate}` instead"
        )
    account = MailboxAccount(
        tenant_id=tenant.id,
        staff_id=staff.id,
        kind=kind,
        host=host,
        port=port,
        security=request.security,
        allow_invalid_cert=request.allow_invalid_cert,
        login=login,
        secret=secret,
        access_token="",
        mode=mode,
        since=since_moment(request.since, now),
        extra_folders=folders,
        source_folder=source,
        processed_folder=processed,
        shared=request.shared,
        authserv_id=authserv_id,
        status=AccountStatus.PENDING,
        status_changed_at=now,
        announced_status=AccountStatus.PENDING.value,
        mailed_status="",
        failures=0,
        messages_synced=0,
        created_at=now,
    )
    session.add(account)
    session.flush()
    for viewer in viewers:
        session.add(MailboxViewer(account_id=account.id, staff_id=viewer.id))
    if kind is not AccountKind.IMAP:
        awaiting_sign_in(session, account, now)
    session.flush()
    return account


def find_account(session: Session, account_id: int, tenant_id: int | None = None) -> MailboxAccount:
    """An account by id; with ``tenant_id``, another tenant's account is not found either."""
    account = session.get(MailboxAccount, account_id)
    if account is None or (tenant_id is not None and account.tenant_id != tenant_id):
        raise NotFoundError(f"no mailbox account {account_id}")
    return account


def _time(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def account_dicts(session: Session, accounts: list[MailboxAccount]) -> list[dict[str, Any]]:
    """Accounts as ``account list --json``, ``show`` and the API show them; never a secret."""
    if not accounts:
        return []
    ids = [a.id for a in accounts]
    tenant_ids = {a.tenant_id for a in accounts}
    tenants: dict[int, str] = {
        row[0]: row[1]
        for row in session.execute(select(Tenant.id, Tenant.name).where(Tenant.id.in_(tenant_ids)))
    }
    viewer_rows = session.execute(
        select(MailboxViewer.account_id, MailboxViewer.staff_id).where(
            MailboxViewer.account_id.in_(ids)
        )
    ).all()
    staff_ids = {a.staff_id for a in accounts} | {staff_id for _, staff_id in viewer_rows}
    usernames: dict[int, str] = {
        row[0]: row[1]
        for row in session.execute(select(Staff.id, Staff.username).where(Staff.id.in_(staff_ids)))
    }
    viewers: dict[int, list[str]] = {}
    for account_id, staff_id in viewer_rows:
        viewers.setdefault(account_id, []).append(usernames.get(staff_id, "?"))
    errors: dict[int, int] = {
        row[0]: row[1]
        for row in session.execute(
            select(MailboxError.account_id, func.count())
            .where(MailboxError.account_id.in_(ids))
            .group_by(MailboxError.account_id)
        )
    }
    return [
        {
            "id": a.id,
            "tenant": tenants.get(a.tenant_id),
            "staff": usernames.get(a.staff_id),
            "kind": a.kind.value,
            "mode": a.mode.value,
            "status": a.status.value,
            "login": a.login,
            "host": a.host,
            "port": a.port,
            "security": a.security,
            "allow_invalid_cert": a.allow_invalid_cert,
            "since": _time(a.since),
            "folders": list(a.extra_folders),
            "source_folder": a.source_folder,
            "processed_folder": a.processed_folder,
            "shared": a.shared,
            "visible_to": sorted(viewers.get(a.id, [])),
            "authserv_id": a.authserv_id,
            "last_sync": _time(a.last_sync_at),
            "last_error": a.last_error,
            "status_changed_at": _time(a.status_changed_at),
            "retry_at": _time(a.retry_at),
            "failures": a.failures,
            "messages_synced": a.messages_synced,
            "errors": int(errors.get(a.id, 0)),
            "created_at": _time(a.created_at),
        }
        for a in accounts
    ]


def list_accounts(
    session: Session, tenant: Tenant | None = None, *, visible_to: Staff | None = None
) -> list[dict[str, Any]]:
    """Accounts, oldest first: all, one tenant's, or those one staff member may see."""
    statement = select(MailboxAccount).order_by(MailboxAccount.id)
    if tenant is not None:
        statement = statement.where(MailboxAccount.tenant_id == tenant.id)
    if visible_to is not None:
        statement = statement.where(visible_clause(visible_to))
    return account_dicts(session, list(session.scalars(statement)))


def visible_clause(staff: Staff) -> Any:
    """Accounts ``staff`` may see: an admin the tenant's; others their own and shared ones named."""
    same_tenant = MailboxAccount.tenant_id == staff.tenant_id
    if staff.admin:
        return same_tenant
    named = select(MailboxViewer.account_id).where(MailboxViewer.staff_id == staff.id)
    return same_tenant & ((MailboxAccount.staff_id == staff.id) | MailboxAccount.id.in_(named))


def account_errors(
    session: Session, account: MailboxAccount, limit: int = 100
) -> list[dict[str, Any]]:
    """The account's error log, newest first: when, the status it led to, what, and the fix."""
    rows = session.scalars(
        select(MailboxError)
        .where(MailboxError.account_id == account.id)
        .order_by(MailboxError.at.desc(), MailboxError.id.desc())
        .limit(limit)
    )
    return [
        {"at": _time(row.at), "status": row.status, "what": row.what, "fix": row.fix}
        for row in rows
    ]


def set_viewers(session: Session, account: MailboxAccount, usernames: list[str]) -> list[str]:
    """Who (besides its owner and the admins) sees a shared account; returns the usernames."""
    if not account.shared:
        raise MailAccountError("only a shared account has viewers")
    tenant = session.get_one(Tenant, account.tenant_id)
    chosen = [find_staff(session, tenant, name) for name in dict.fromkeys(usernames)]
    session.execute(delete(MailboxViewer).where(MailboxViewer.account_id == account.id))
    for staff in chosen:
        session.add(MailboxViewer(account_id=account.id, staff_id=staff.id))
    session.flush()
    return [s.username for s in chosen]


def set_authserv_id(account: MailboxAccount, value: str) -> str:
    """Whose Authentication-Results the account's mail is judged on from now on; the id.

    Mail already processed keeps the verdicts it was recorded with.
    """
    account.authserv_id = check_authserv_id(value, account.kind)
    return account.authserv_id


# --- re-connect and remove ----------------------------------------------------------------------


def reconnect_password(
    session: Session, box: SecretBox, account: MailboxAccount, password: str, now: datetime
) -> None:
    """A new password for an IMAP account: stored sealed, and the account is tried again."""
    if account.kind is not AccountKind.IMAP:
        name = PROVIDER_NAMES[account.kind]
        raise MailAccountError(f"account {account.id} signs in with {name}: re-connect it so")
    account.secret = box.seal(check_password(password))
    reset(session, account, now)


def retry_now(session: Session, account: MailboxAccount, now: datetime) -> None:
    """Make the account due now (``account sync``, "sync now"); a ``reconnect`` one stays put."""
    if account.status is AccountStatus.RECONNECT:
        raise MailAccountError(
            f"account {account.id} needs re-connecting first: {account.last_error or 'sign in'}"
        )
    account.retry_at = None
    if account.status is AccountStatus.CONNECTION:
        reset(session, account, now)
    session.flush()


def remove_account(
    session: Session, blobs: BlobBackend, account: MailboxAccount, history: History
) -> RemovalReport:
    """Disconnect an account: its activities stay (keep) or those only it brought in go."""
    if history is History.REMOVE:
        report = remove_mailbox_history(session, blobs, account.id)
    else:
        report = RemovalReport(History.KEEP)
        fetched = select(ReceivedMessage.id).where(ReceivedMessage.mailbox_account_id == account.id)
        report.activities_kept = int(
            session.scalar(
                select(func.count(func.distinct(Activity.id)))
                .join(ActivitySource, ActivitySource.activity_id == Activity.id)
                .where(ActivitySource.message_id.in_(fetched))
            )
            or 0
        )
    session.execute(
        update(ReceivedMessage)
        .where(ReceivedMessage.mailbox_account_id == account.id)
        .values(mailbox_account_id=None)
    )
    session.delete(account)
    session.flush()
    return report


def claim_account(
    session: Session, account_id: int, owner: str, now: datetime, lease: timedelta
) -> bool:
    """Lease ``account_id`` to ``owner`` for a pass unless someone else holds a live lease.

    The server's sync worker and ``account sync`` both take it, so a pass started by hand
    never runs beside the server's own pass on the same mailbox.
    """
    taken = session.execute(
        update(MailboxAccount)
        .where(
            MailboxAccount.id == account_id,
            (MailboxAccount.claim_expires_at.is_(None))
            | (MailboxAccount.claim_expires_at < now)
            | (MailboxAccount.claimed_by == owner),
        )
        .values(claimed_by=owner, claim_expires_at=now + lease)
        .execution_options(synchronize_session=False)
    )
    return getattr(taken, "rowcount", 0) == 1


def release_accounts(session: Session, account_ids: list[int], owner: str) -> None:
    """Hand back the leases ``owner`` holds on ``account_ids``."""
    session.execute(
        update(MailboxAccount)
        .where(MailboxAccount.id.in_(account_ids), MailboxAccount.claimed_by == owner)
        .values(claimed_by=None, claim_expires_at=None)
        .execution_options(synchronize_session=False)
    )
