"""``mailledger account …``: mailbox accounts the server syncs (DESIGN §12).

``add`` connects a staff member's (or a shared) mailbox and prints its id; ``set`` changes
whose Authentication-Results a plain IMAP account's mail is judged on; ``test`` logs in
and lists the folders; ``list``, ``show`` and ``errors`` say how each account is doing and
why, in words; ``sync`` runs one pass now; ``reconnect`` takes a new password or a new
sign-in; ``remove`` disconnects, keeping or removing what it brought in.

Passwords are read from a file (``--password-file``, ``-`` for standard input), never from
the command line, where every user of the machine could read them in the process list. An
OAuth sign-in (``--oauth google|microsoft``) prints the address to open in any browser and
reads back the address the browser ends on, so it works on a server without one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    CommandError,
    command,
    emit,
    emit_record,
    err,
    group,
    json_flag,
    limit_flag,
    out,
    secret_box,
    session_scope,
    sessions_scope,
)
from mailledger.cli.switches import history_choice, history_flags

if TYPE_CHECKING:
    from mailledger.config import Settings
    from mailledger.store.models import CalendarAccount, MailboxAccount

LIST_COLUMNS = [
    "id", "tenant", "staff", "kind", "mode", "status", "login", "last_sync", "last_error",
    "messages_synced", "errors",
]  # fmt: skip
ERROR_COLUMNS = ["at", "status", "what", "fix"]
# What a plain IMAP account without --authserv-id means for its mail (verify.messageauth).
UNTRUSTED_NOTE = (
    "the mailbox's server is not trusted to report the sender's checks, so its mail is "
    "recorded with every verdict none; set --authserv-id to the id its "
    "Authentication-Results use (`mailledger account set ID --authserv-id ID`)"
)
FOLDER_COLUMNS = ["name", "flags", "synced_as"]
# What `account test` says of a folder sync never reads (sync.folders.never_read): thrown away,
# not yet sent, or a view of mail that lives in another folder.
NEVER_SYNCED = "never (trash, junk, drafts, or a view of other folders)"


def read_password(path: str) -> str:
    """The password in ``path`` (``-``: standard input), without its line ending."""
    try:
        text = sys.stdin.readline() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"--password-file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CommandError(f"--password-file {path}: not UTF-8 text") from None
    return text.removesuffix("\n").removesuffix("\r")


def oauth_sign_in(
    settings: Settings,
    account_id: int,
    model: type[MailboxAccount] | type[CalendarAccount] | None = None,
) -> None:
    """Print the provider's sign-in address, read back where the browser ended, finish.

    ``model`` says which kind of account ``account_id`` is (a mailbox unless told): the
    flow is ``accounts.oauth``'s for both, only the scope asked for differs.
    """
    from mailledger.accounts import oauth
    from mailledger.store.models import MailboxAccount, utcnow
    from mailledger.store.queries import NotFoundError

    kind_of = model or MailboxAccount
    what = "calendar account" if kind_of is not MailboxAccount else "account"

    def find(session: Any) -> MailboxAccount | CalendarAccount:
        account: MailboxAccount | CalendarAccount | None = session.get(kind_of, account_id)
        if account is None:
            raise NotFoundError(f"no {what} {account_id}")
        return account

    box = secret_box(settings)
    public_url = settings.http.public_url
    try:
        with session_scope(settings) as session:
            account = find(session)
            name = oauth.provider_name(account.kind)
            url = oauth.begin_authorization(
                session, account, box, settings.oauth, public_url=public_url, now=utcnow()
            )
            state = account.oauth_state
        sys.stderr.write(
            f"Open this address in a browser and sign in to {name} as {account.login}:\n\n"
            f"  {url}\n\n"
            "The browser then goes to an address starting with "
            f"{oauth.redirect_uri(oauth.provider(settings.oauth, account.kind), public_url)}.\n"
            "Paste that whole address here (it may show an error page: that is fine),\n"
            "or just press Enter if the page says the account is connected:\n"
        )
        sys.stderr.flush()
        pasted = sys.stdin.readline()
        with session_scope(settings) as session:
            account = find(session)
            if not pasted.strip() and account.oauth_state is None and account.secret:
                return  # the web page's callback finished it
            given_state, code = oauth.parse_redirect(pasted)
            if given_state is not None and given_state != state:
                raise CommandError(
                    "the pasted address belongs to another sign-in: paste the one this "
                    "command's address led to"
                )
            oauth.complete_authorization(
                session,
                state or "",
                code,
                box=box,
                oauth=settings.oauth,
                public_url=public_url,
                now=utcnow(),
            )
    except oauth.AuthorizationError as exc:
        raise CommandError(str(exc)) from None


def cmd_account_add(args: argparse.Namespace, settings: Settings) -> int:
    """Connect a mailbox; prints the account id."""
    from mailledger.store import directory
    from mailledger.store.mailaccounts import AccountRequest, add_account, find_account
    from mailledger.store.models import AccountKind, SyncMode, utcnow

    if (args.password_file is None) == (args.oauth is None):
        err("say how to log in: --password-file FILE, or --oauth google|microsoft")
        return EXIT_USAGE
    if args.oauth is None and not args.imap:
        err("say which IMAP server: --imap HOST[:PORT]")
        return EXIT_USAGE
    password = read_password(args.password_file) if args.password_file else None
    box = secret_box(settings)
    with session_scope(settings) as session:
        request = AccountRequest(
            tenant=directory.find_tenant(session, args.tenant),
            username=args.username,
            login=args.login,
            imap=args.imap or "",
            password=password,
            oauth=AccountKind(args.oauth) if args.oauth else None,
            security=args.security,
            allow_invalid_cert=args.allow_invalid_cert,
            mode=SyncMode(args.mode),
            since=args.since,
            folders=args.folder or [],
            source_folder=args.source_folder,
            processed_folder=args.processed_folder,
            shared=args.shared,
            visible_to=args.visible_to or [],
            authserv_id=args.authserv_id,
        )
        account = add_account(
            session,
            box,
            request,
            now=utcnow(),
            max_accounts_per_tenant=settings.sync.max_accounts_per_tenant,
        )
        account_id = account.id
    if args.oauth is not None:
        try:
            oauth_sign_in(settings, account_id)
        except CommandError:
            # Nobody was told this id: an account that never signed in is not left behind.
            with session_scope(settings) as session:
                session.delete(find_account(session, account_id))
            raise
    if args.oauth is None and not args.authserv_id.strip():
        err(f"note: account {account_id}: {UNTRUSTED_NOTE}")
    out(str(account_id))
    return EXIT_OK


def cmd_account_set(args: argparse.Namespace, settings: Settings) -> int:
    """Change whose Authentication-Results a plain IMAP account's mail is judged on."""
    from mailledger.store.mailaccounts import find_account, set_authserv_id

    with session_scope(settings) as session:
        authserv_id = set_authserv_id(find_account(session, args.id), args.authserv_id)
    if authserv_id:
        out(
            f"account {args.id}: the sender's checks are read from the topmost "
            f"Authentication-Results of {authserv_id}, for mail processed from now on"
        )
    else:
        out(f"account {args.id}: {UNTRUSTED_NOTE}")
    return EXIT_OK


def cmd_account_list(args: argparse.Namespace, settings: Settings) -> int:
    """List accounts with their status, last sync and last error."""
    from mailledger.store import directory
    from mailledger.store.mailaccounts import list_accounts

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant) if args.tenant else None
        rows = list_accounts(session, tenant)
    emit(rows, LIST_COLUMNS, as_json=args.json, empty="no mailbox accounts")
    return EXIT_OK


def cmd_account_show(args: argparse.Namespace, settings: Settings) -> int:
    """One account in full, with its latest errors."""
    from mailledger.store.mailaccounts import account_dicts, account_errors, find_account

    with session_scope(settings) as session:
        account = find_account(session, args.id)
        record = account_dicts(session, [account])[0]
        record["recent_errors"] = account_errors(session, account, limit=5)
    if args.json:
        out(json.dumps([record], indent=2, ensure_ascii=False))
    else:
        emit_record(record, {"recent_errors": ERROR_COLUMNS})
    return EXIT_OK


def cmd_account_errors(args: argparse.Namespace, settings: Settings) -> int:
    """The account's error log, newest first: when, what went wrong, how to fix it."""
    from mailledger.store.mailaccounts import account_errors, find_account

    with session_scope(settings) as session:
        rows = account_errors(session, find_account(session, args.id), limit=args.limit)
    emit(rows, ERROR_COLUMNS, as_json=args.json, empty="no errors")
    return EXIT_OK


def _syncer(settings: Settings, sessions: Any) -> Any:
    from mailledger.store.blobbackend import open_blob_backend
    from mailledger.sync.passes import Syncer

    return Syncer(sessions, open_blob_backend(settings), settings, secret_box(settings))


def cmd_account_test(args: argparse.Namespace, settings: Settings) -> int:
    """Log in to the account's server and list its folders (nothing is read or changed)."""
    from mailledger.store.mailaccounts import find_account
    from mailledger.sync.folders import list_folders, never_read, plan
    from mailledger.sync.imapconn import close
    from mailledger.sync.problems import describe

    with sessions_scope(settings) as sessions:
        with sessions() as session:
            account = find_account(session, args.id)
            session.expunge(account)
        syncer = _syncer(settings, sessions)
        try:
            imap = syncer.open(args.id)
            try:
                listed = list_folders(imap)
            finally:
                close(imap)
        except Exception as exc:  # noqa: BLE001 - every failure is said in words
            problem = describe(exc, account)
            err(f"account {args.id}: {problem.what}")
            err(f"fix: {problem.fix}")
            return EXIT_REFUSED
    roles = {p.name: p.role for p in plan(listed, account)}
    rows = [
        {
            "name": f.name,
            "flags": sorted(f.flags),
            "synced_as": NEVER_SYNCED if never_read(f) else roles.get(f.name, "-"),
        }
        for f in listed
    ]
    out(f"account {args.id}: logged in to {account.host} as {account.login}")
    emit(rows, FOLDER_COLUMNS, as_json=False, empty="no folders")
    return EXIT_OK


def cmd_account_sync(args: argparse.Namespace, settings: Settings) -> int:
    """Run one pass now and say how it ended."""
    from mailledger.dnsauth.resolver import Resolver
    from mailledger.store.blobbackend import open_blob_backend
    from mailledger.store.mailaccounts import (
        claim_account,
        find_account,
        release_accounts,
        retry_now,
    )
    from mailledger.store.models import utcnow
    from mailledger.sync.notices import mail_notices

    owner = f"cli-{socket.gethostname()}-{os.getpid()}"
    lease = timedelta(seconds=settings.sync.pass_timeout_seconds)
    with session_scope(settings) as session:
        account = find_account(session, args.id)
        if not claim_account(session, account.id, owner, utcnow(), lease):
            err(
                f"account {args.id} is being synced by {account.claimed_by} right now; "
                "its pass includes what this one would fetch (see `account show`)"
            )
            return EXIT_REFUSED
        retry_now(session, account, utcnow())
    with sessions_scope(settings) as sessions:
        try:
            result = _syncer(settings, sessions).run(args.id)
        finally:
            with sessions.begin() as session:
                release_accounts(session, [args.id], owner)
        asyncio.run(
            mail_notices(sessions, Resolver(settings.dns), open_blob_backend(settings), settings)
        )
    out(f"account {args.id}: {result.status.value}, {result.fetched} message(s) fetched")
    if result.problem is not None:
        out(f"what: {result.problem.what}")
        out(f"fix:  {result.problem.fix}")
        return EXIT_REFUSED
    return EXIT_OK


def cmd_account_reconnect(args: argparse.Namespace, settings: Settings) -> int:
    """A new password (--password-file) or a new sign-in; the account is tried again."""
    from mailledger.store.mailaccounts import find_account, reconnect_password
    from mailledger.store.models import AccountKind, utcnow

    with session_scope(settings) as session:
        kind = find_account(session, args.id).kind
    if kind is AccountKind.IMAP:
        if args.password_file is None:
            err("give the new password: --password-file FILE (or - for standard input)")
            return EXIT_USAGE
        password = read_password(args.password_file)
        with session_scope(settings) as session:
            account = find_account(session, args.id)
            reconnect_password(session, secret_box(settings), account, password, utcnow())
    else:
        if args.password_file is not None:
            err(f"account {args.id} signs in with {kind.value}: no password, just sign in")
            return EXIT_USAGE
        oauth_sign_in(settings, args.id)
    out(f"account {args.id} re-connected; its next pass starts soon")
    return EXIT_OK


def cmd_account_remove(args: argparse.Namespace, settings: Settings) -> int:
    """Disconnect an account, keeping or removing the activities it brought in."""
    from dataclasses import asdict

    from mailledger.store.blobbackend import open_blob_backend
    from mailledger.store.mailaccounts import find_account, remove_account
    from mailledger.store.removal import History

    choice = history_choice(args)
    if choice is None:
        err(
            "say what happens to what the account brought in: --keep-history keeps every "
            "activity, --remove-history deletes those only this account brought in"
        )
        return EXIT_USAGE
    with session_scope(settings) as session:
        account = find_account(session, args.id)
        report = remove_account(session, open_blob_backend(settings), account, History(choice))
    if args.json:
        out(json.dumps([asdict(report)], indent=2))
    else:
        out(f"account {args.id} removed; {report.summary()}")
    return EXIT_OK


def _login_flags(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--password-file",
        metavar="FILE",
        help="a file holding the password (or app password); - reads standard input",
    )


def _authserv_flag(
    sub: argparse.ArgumentParser, *, default: str | None, required: bool = False
) -> None:
    sub.add_argument(
        "--authserv-id",
        metavar="ID",
        default=default,
        required=required,
        help="the id the IMAP server's own Authentication-Results begin with; only those "
        "are trusted for the sender's SPF/DKIM/DMARC ('' trusts none)",
    )


def register(commands: Any) -> None:
    """Add the ``account`` command group to the CLI."""
    account = group(commands, "account", "mailbox accounts the server syncs over IMAP")
    sub = command(account, "add", cmd_account_add, "connect a mailbox; prints the account id")
    sub.add_argument("tenant")
    sub.add_argument("username", help="the staff member whose mailbox it is")
    sub.add_argument("--imap", metavar="HOST[:PORT]", help="the IMAP server")
    sub.add_argument("--login", required=True, metavar="LOGIN", help="the mailbox's login")
    _login_flags(sub)
    sub.add_argument("--oauth", choices=["google", "microsoft"], help="sign in with OAuth 2.0")
    sub.add_argument("--security", choices=["tls", "starttls", "none"], default="tls")
    sub.add_argument(
        "--allow-invalid-cert",
        action="store_true",
        help="accept a certificate that does not verify (your own server only)",
    )
    sub.add_argument("--mode", choices=["sweep", "folder"], default="sweep")
    sub.add_argument(
        "--since", choices=["now", "1m", "3m", "6m"], default="now", help="how far back"
    )
    sub.add_argument(
        "--folder", action="extend", nargs="+", metavar="NAME", help="more folders to sweep"
    )
    sub.add_argument("--source-folder", default="mailledger", metavar="NAME")
    sub.add_argument("--processed-folder", default="mailledger/Processed", metavar="NAME")
    sub.add_argument("--shared", action="store_true", help="a shared mailbox (the admin's)")
    sub.add_argument(
        "--visible-to",
        action="extend",
        nargs="+",
        metavar="USER",
        help="staff who see a shared account",
    )
    _authserv_flag(sub, default="")
    sub = command(account, "set", cmd_account_set, "change a plain IMAP account's settings")
    sub.add_argument("id", type=int)
    _authserv_flag(sub, default=None, required=True)
    sub = json_flag(command(account, "list", cmd_account_list, "list accounts and statuses"))
    sub.add_argument("--tenant", metavar="T")
    sub = json_flag(command(account, "show", cmd_account_show, "one account in full"))
    sub.add_argument("id", type=int)
    sub = json_flag(limit_flag(command(account, "errors", cmd_account_errors, "the error log")))
    sub.add_argument("id", type=int)
    sub = command(account, "test", cmd_account_test, "log in and list the folders")
    sub.add_argument("id", type=int)
    sub = command(account, "sync", cmd_account_sync, "run one pass now")
    sub.add_argument("id", type=int)
    sub = command(
        account, "reconnect", cmd_account_reconnect, "a new password or sign-in; tried again"
    )
    sub.add_argument("id", type=int)
    _login_flags(sub)
    sub = json_flag(command(account, "remove", cmd_account_remove, "disconnect an account"))
    sub.add_argument("id", type=int)
    history_flags(
        sub,
        keep="keep every activity the account brought in",
        remove="delete the activities only this account brought in",
    )
