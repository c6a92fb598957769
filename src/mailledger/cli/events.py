"""``mailledger events …``: appointments in the CRM, written to the staff member's calendar.

``add`` makes an appointment in the staff member's connected calendar (written at the next
pass, or at once with ``--sync``); ``list`` shows the appointments of a window as a
colleague (``--as USER``) may see them; ``delete`` removes one the CRM made. Events made in
the calendar are read-only here, and recurring appointments are made in the calendar app.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import (
    EXIT_OK,
    CommandError,
    command,
    emit,
    group,
    json_flag,
    out,
    secret_box,
    session_scope,
    sessions_scope,
)

if TYPE_CHECKING:
    from mailledger.config import Settings

LIST_COLUMNS = ["id", "staff", "start", "end", "summary", "origin", "attendees", "conflict"]


def _moment(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: give a date and time with its offset, e.g. 2027-01-05T09:00:00+01:00"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r}: add the UTC offset (+01:00, Z)")
    return moment


def _sync_now(settings: Settings, account_id: int) -> None:
    from mailledger.calendar.passes import CalendarSyncer

    with sessions_scope(settings) as sessions:
        result = CalendarSyncer(sessions, settings, secret_box(settings)).run(account_id)
    if result.problem is not None:
        raise CommandError(
            f"saved, but not yet on the calendar: {result.problem.what}\nfix: {result.problem.fix}"
        )


def cmd_events_add(args: argparse.Namespace, settings: Settings) -> int:
    """Make an appointment in a staff member's calendar; prints the event's id."""
    from mailledger.store import calendars, directory
    from mailledger.store.models import utcnow

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        staff = directory.find_staff(session, tenant, args.username)
        account = calendars.account_of_staff(session, staff)
        event = calendars.add_event(
            session,
            account,
            calendars.EventInput(
                summary=args.summary,
                start=args.start,
                end=args.end,
                attendees=args.attendee or [],
                description=args.description or "",
                location=args.location or "",
                tzid=args.tz or "",
            ),
            utcnow(),
        )
        event_id, account_id = event.id, account.id
    if args.sync:
        _sync_now(settings, account_id)
    out(str(event_id))
    return EXIT_OK


def cmd_events_list(args: argparse.Namespace, settings: Settings) -> int:
    """Appointments in a window, as ``--as USER`` sees them (private calendars: busy)."""
    from mailledger.store import calendars, directory

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        viewer = directory.find_staff(session, tenant, args.as_user) if args.as_user else None
        staff = directory.find_staff(session, tenant, args.staff) if args.staff else None
        rows = calendars.list_events(
            session, tenant, viewer=viewer, staff=staff, start=args.start, end=args.end
        )
    emit(rows, LIST_COLUMNS, as_json=args.json, empty="no events")
    return EXIT_OK


def cmd_events_delete(args: argparse.Namespace, settings: Settings) -> int:
    """Delete an appointment the CRM made, here and (next pass) in the calendar."""
    from mailledger.store import calendars
    from mailledger.store.models import utcnow

    with session_scope(settings) as session:
        event = calendars.find_event(session, args.id)
        calendars.delete_event(session, event, utcnow())
        account_id = event.account_id
    if args.sync:
        _sync_now(settings, account_id)
    out(json.dumps({"deleted": args.id}) if args.json else f"event {args.id} deleted")
    return EXIT_OK


def register(commands: Any) -> None:
    """Add the ``events`` command group to the CLI."""
    events = group(commands, "events", "appointments, written to staff members' calendars")
    sub = command(events, "add", cmd_events_add, "make an appointment; prints its id")
    sub.add_argument("tenant")
    sub.add_argument("username", help="whose calendar it goes in")
    sub.add_argument("--summary", required=True, metavar="TITLE")
    sub.add_argument("--start", required=True, type=_moment, metavar="WHEN")
    sub.add_argument("--end", required=True, type=_moment, metavar="WHEN")
    sub.add_argument("--attendee", action="extend", nargs="+", metavar="ADDRESS")
    sub.add_argument("--description", metavar="TEXT")
    sub.add_argument("--location", metavar="TEXT")
    sub.add_argument("--tz", metavar="ZONE", help="the time zone it is shown in (Europe/Berlin)")
    sub.add_argument("--sync", action="store_true", help="write it to the calendar now")
    sub = json_flag(command(events, "list", cmd_events_list, "appointments in a window"))
    sub.add_argument("tenant")
    sub.add_argument("--staff", metavar="USER", help="one staff member's appointments")
    sub.add_argument("--as", dest="as_user", metavar="USER", help="as this colleague sees them")
    sub.add_argument("--start", type=_moment, metavar="WHEN")
    sub.add_argument("--end", type=_moment, metavar="WHEN")
    sub = json_flag(command(events, "delete", cmd_events_delete, "delete an appointment"))
    sub.add_argument("id", type=int)
    sub.add_argument("--sync", action="store_true", help="delete it from the calendar now")
