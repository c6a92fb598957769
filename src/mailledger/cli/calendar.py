"""``mailledger calendar …``: staff members' CalDAV calendars, synced both ways (DESIGN §13).

``add`` finds the calendar (the URL of a calendar, or of a server or principal from which
the calendars are discovered; ``--calendar NAME`` picks one) and prints the account's id;
``test`` logs in and says how the calendar can be synced; ``list``, ``show`` and ``errors``
say how each account is doing and why; ``sync`` runs one pass now; ``reconnect`` takes a
new password or a new Google sign-in; ``remove`` disconnects, keeping or removing the
meetings it brought in.

Passwords are read from a file (``--password-file``, ``-`` for standard input), never from
the command line, where every user of the machine could read them in the process list.
Google Calendar takes no passwords over CalDAV: ``--oauth google`` signs in as ``account add
--oauth`` does (the address to open is printed, the address the browser ends on is pasted
back), and the pass sends a fresh access token as ``Authorization: Bearer``.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from mailledger.cli.account import oauth_sign_in, read_password
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

LIST_COLUMNS = [
    "id", "tenant", "staff", "calendar", "privacy", "status", "incremental", "last_sync",
    "last_error", "events", "errors",
]  # fmt: skip
ERROR_COLUMNS = ["at", "status", "what", "fix"]


def _said(problem: Any) -> CommandError:
    return CommandError(f"{problem.what}\nfix: {problem.fix}")


def _sign_in(settings: Settings, account_id: int, calendar: str) -> None:
    """Google sign-in for a calendar just added; it is removed again if that fails."""
    from mailledger.accounts.problems import SyncProblem
    from mailledger.calendar.accounts import find_signed_in
    from mailledger.store import calendars
    from mailledger.store.models import CalendarAccount

    try:
        oauth_sign_in(settings, account_id, CalendarAccount)
        with sessions_scope(settings) as sessions:
            try:
                find_signed_in(sessions, secret_box(settings), settings, account_id, calendar)
            except SyncProblem as problem:
                raise _said(problem) from None
            except calendars.CalendarAccountError as exc:
                raise CommandError(str(exc)) from None
    except CommandError:
        # Nobody was told this id: a calendar that never signed in is not left behind.
        with session_scope(settings) as session:
            calendars.remove_account(
                session, calendars.find_account(session, account_id), keep_history=True
            )
        raise


def cmd_calendar_add(args: argparse.Namespace, settings: Settings) -> int:
    """Connect a calendar; prints the calendar account's id."""
    from mailledger.accounts.problems import SyncProblem
    from mailledger.calendar.accounts import connect
    from mailledger.store import calendars, directory
    from mailledger.store.models import CalendarKind, CalendarPrivacy

    if (args.password_file is None) == (args.oauth is None):
        err(
            "say how to log in: --password-file FILE (an app password where the provider has "
            "them), or --oauth google"
        )
        return EXIT_USAGE
    password = read_password(args.password_file) if args.password_file else None
    box = secret_box(settings)
    with sessions_scope(settings) as sessions:
        with sessions() as session:
            tenant = directory.find_tenant(session, args.tenant)
            session.expunge(tenant)
        request = calendars.CalendarRequest(
            tenant=tenant,
            username=args.username,
            url=args.caldav,
            login=args.login,
            password=password,
            oauth=CalendarKind(args.oauth) if args.oauth else None,
            privacy=CalendarPrivacy(args.privacy),
            share_with=args.share_with or [],
            calendar=args.calendar or "",
        )
        try:
            account = connect(sessions, box, request, settings)
        except SyncProblem as problem:
            raise _said(problem) from None
    if args.oauth is not None:
        _sign_in(settings, account.id, args.calendar or "")
    out(str(account.id))
    return EXIT_OK


def cmd_calendar_list(args: argparse.Namespace, settings: Settings) -> int:
    """List calendar accounts with their status, last sync and last error."""
    from mailledger.store import calendars, directory

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant) if args.tenant else None
        rows = calendars.list_accounts(session, tenant)
    emit(rows, LIST_COLUMNS, as_json=args.json, empty="no calendar accounts")
    return EXIT_OK


def cmd_calendar_show(args: argparse.Namespace, settings: Settings) -> int:
    """One calendar account in full, with its latest errors."""
    from mailledger.store import calendars

    with session_scope(settings) as session:
        account = calendars.find_account(session, args.id)
        record = calendars.account_dicts(session, [account])[0]
        record["recent_errors"] = calendars.account_errors(session, account, limit=5)
    if args.json:
        out(json.dumps([record], indent=2, ensure_ascii=False))
    else:
        emit_record(record, {"recent_errors": ERROR_COLUMNS})
    return EXIT_OK


def cmd_calendar_errors(args: argparse.Namespace, settings: Settings) -> int:
    """The account's error log, newest first: when, what went wrong, how to fix it."""
    from mailledger.store import calendars

    with session_scope(settings) as session:
        rows = calendars.account_errors(
            session, calendars.find_account(session, args.id), limit=args.limit
        )
    emit(rows, ERROR_COLUMNS, as_json=args.json, empty="no errors")
    return EXIT_OK


def cmd_calendar_test(args: argparse.Namespace, settings: Settings) -> int:
    """Log in and say how the calendar syncs (nothing is read into the CRM or changed)."""
    from mailledger.accounts.problems import SyncProblem
    from mailledger.calendar.accounts import test

    with sessions_scope(settings) as sessions:
        try:
            report = test(sessions, secret_box(settings), settings, args.id)
        except SyncProblem as problem:
            err(f"calendar account {args.id}: {problem.what}")
            err(f"fix: {problem.fix}")
            return EXIT_REFUSED
    out(f"calendar account {args.id}: logged in; calendar {report.calendar.name!r}")
    out(f"  address:     {report.calendar.url}")
    out(f"  incremental: {report.incremental}")
    out(f"  events in the window: {report.objects_in_window}")
    return EXIT_OK


def cmd_calendar_sync(args: argparse.Namespace, settings: Settings) -> int:
    """Run one pass now and say how it ended."""
    from mailledger.calendar.passes import CalendarSyncer
    from mailledger.store import calendars
    from mailledger.store.models import utcnow

    with session_scope(settings) as session:
        calendars.retry_now(session, calendars.find_account(session, args.id), utcnow())
    with sessions_scope(settings) as sessions:
        result = CalendarSyncer(sessions, settings, secret_box(settings)).run(args.id)
    if result.mode == "busy":
        err(f"calendar account {args.id} is being synced right now (by the service): try later")
        return EXIT_REFUSED
    out(
        f"calendar account {args.id}: {result.status.value} ({result.mode}); "
        f"{result.fetched} read, {result.changed} changed, {result.removed} removed, "
        f"{result.written} written, {result.conflicts} conflict(s)"
    )
    for note in result.notes:
        out(f"note: {note}")
    if result.problem is not None:
        out(f"what: {result.problem.what}")
        out(f"fix:  {result.problem.fix}")
        return EXIT_REFUSED
    return EXIT_OK


def cmd_calendar_reconnect(args: argparse.Namespace, settings: Settings) -> int:
    """A new password (--password-file) or a new sign-in; the account is tried again."""
    from mailledger.store import calendars
    from mailledger.store.models import CalendarAccount, CalendarKind, utcnow

    with session_scope(settings) as session:
        kind = calendars.find_account(session, args.id).kind
    if kind is not CalendarKind.CALDAV:
        if args.password_file is not None:
            err(f"calendar account {args.id} signs in with {kind.value}: no password, sign in")
            return EXIT_USAGE
        oauth_sign_in(settings, args.id, CalendarAccount)
        out(f"calendar account {args.id} re-connected; its next pass starts soon")
        return EXIT_OK
    if args.password_file is None:
        err("give the new password: --password-file FILE (or - for standard input)")
        return EXIT_USAGE
    password = read_password(args.password_file)
    with session_scope(settings) as session:
        account = calendars.find_account(session, args.id)
        calendars.reconnect_password(session, secret_box(settings), account, password, utcnow())
    out(f"calendar account {args.id} re-connected; its next pass starts soon")
    return EXIT_OK


def cmd_calendar_remove(args: argparse.Namespace, settings: Settings) -> int:
    """Disconnect a calendar, keeping or removing the meetings it brought in."""
    from mailledger.store import calendars

    choice = history_choice(args)
    if choice is None:
        err(
            "say what happens to the meetings the calendar brought in: --keep-history keeps "
            "them on the timelines, --remove-history deletes those only this calendar made"
        )
        return EXIT_USAGE
    with session_scope(settings) as session:
        account = calendars.find_account(session, args.id)
        removed = calendars.remove_account(session, account, keep_history=choice == "keep")
    out(f"calendar account {args.id} removed; {removed} meeting(s) removed from the timelines")
    return EXIT_OK


def register(commands: Any) -> None:
    """Add the ``calendar`` command group to the CLI."""
    calendar = group(commands, "calendar", "staff members' calendars, synced both ways (CalDAV)")
    sub = command(calendar, "add", cmd_calendar_add, "connect a calendar; prints its id")
    sub.add_argument("tenant")
    sub.add_argument("username", help="the staff member whose calendar it is")
    sub.add_argument(
        "--caldav",
        required=True,
        metavar="URL",
        help="the calendar's address, or the server's (the calendars are then discovered)",
    )
    sub.add_argument("--login", required=True, metavar="LOGIN", help="the calendar's login")
    sub.add_argument(
        "--password-file",
        metavar="FILE",
        help="a file holding the password (or app password); - reads standard input",
    )
    sub.add_argument(
        "--oauth",
        choices=["google"],
        help="sign in with Google (prints an address to open; paste back where it ends)",
    )
    sub.add_argument("--calendar", metavar="NAME", help="which calendar, when there are several")
    sub.add_argument(
        "--privacy",
        choices=["public", "private"],
        default="public",
        help="private: colleagues see busy blocks only, unless shared with them",
    )
    sub.add_argument(
        "--share-with",
        action="extend",
        nargs="+",
        metavar="USER",
        help="colleagues who see a private calendar's details",
    )
    sub = json_flag(command(calendar, "list", cmd_calendar_list, "list calendars and statuses"))
    sub.add_argument("--tenant", metavar="T")
    sub = json_flag(command(calendar, "show", cmd_calendar_show, "one calendar account in full"))
    sub.add_argument("id", type=int)
    sub = json_flag(limit_flag(command(calendar, "errors", cmd_calendar_errors, "the error log")))
    sub.add_argument("id", type=int)
    sub = command(calendar, "test", cmd_calendar_test, "log in and look at the calendar")
    sub.add_argument("id", type=int)
    sub = command(calendar, "sync", cmd_calendar_sync, "run one pass now")
    sub.add_argument("id", type=int)
    sub = command(
        calendar, "reconnect", cmd_calendar_reconnect, "a new password or sign-in; tried again"
    )
    sub.add_argument("id", type=int)
    sub.add_argument("--password-file", metavar="FILE", help="the new password's file")
    sub = command(calendar, "remove", cmd_calendar_remove, "disconnect a calendar")
    sub.add_argument("id", type=int)
    history_flags(
        sub,
        keep="keep the meetings it brought in on the timelines",
        remove="delete the meetings only this calendar brought in",
    )
