"""Calendar sync against a real CalDAV server (Debian's Radicale on a loopback port).

Both directions end to end, a second pass that writes nothing, the 412 race, an expired sync
token, deletes both ways, the read-only and no-RRULE rules, and what a colleague sees of a
private calendar.
"""

from __future__ import annotations

import http.server
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.calendar.passes import CalendarSyncer
from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.store import calendars, directory
from mailledger.store.models import (
    AccountStatus,
    Activity,
    CalendarAccount,
    CalendarError,
    CalendarEvent,
    EventOrigin,
    Participant,
    PartyKind,
    Tenant,
    WebhookEvent,
    utcnow,
)
from mailledger.store.secretbox import SecretBox
from mailledger.testing.cli import InProcessCli as Cli
from mailledger.testing.radicale import Radicale

USER = "richard"
PASSWORD = "calendar secret"
CONTACT = "carol@client.example"


@pytest.fixture
def radicale() -> Iterator[Radicale]:
    server = Radicale({USER: PASSWORD, "bob": "bob secret"})
    with server:
        server.make_calendar(USER, "work", "Work")
        server.make_calendar(USER, "home", "Home")
        yield server


@pytest.fixture
def password_file(tmp_path: Path) -> str:
    path = tmp_path / "calendar-password"
    path.write_text(PASSWORD + "\n", encoding="utf-8")
    return str(path)


def _syncer(sessions: sessionmaker[Session], settings: Settings) -> CalendarSyncer:
    return CalendarSyncer(sessions, settings, SecretBox.from_file(settings.secrets.key_file))


def _ics(uid: str, start: datetime, summary: str, *, attendee: str = CONTACT) -> str:
    stamp = start.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    finish = (start + timedelta(hours=1)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//calendar app//EN\r\n"
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260101T000000Z\r\n"
        f"DTSTART:{stamp}\r\nDTEND:{finish}\r\nSUMMARY:{summary}\r\n"
        "ORGANIZER:mailto:richard@acme.example\r\n"
        f"ATTENDEE;CN=Carol:mailto:{attendee}\r\n"
        "END:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def _add(cli: Cli, radicale: Radicale, password_file: str, *extra: str) -> int:
    out = cli(
        "calendar", "add", "acme", USER, "--caldav", radicale.url + "/", "--login", USER,
        "--password-file", password_file, "--calendar", "Work", *extra,
    )  # fmt: skip
    return int(out.strip())


def _rows(sessions: sessionmaker[Session], account_id: int) -> list[CalendarEvent]:
    with sessions() as session:
        return list(
            session.scalars(
                select(CalendarEvent)
                .where(CalendarEvent.account_id == account_id)
                .order_by(CalendarEvent.id)
            )
        )


def _soon(days: int = 3, hour: int = 9) -> datetime:
    today = utcnow().replace(hour=hour, minute=0, second=0, microsecond=0)
    return today + timedelta(days=days)


def test_both_directions_end_to_end(
    cli: Cli,
    radicale: Radicale,
    password_file: str,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    """An outside meeting with a client reaches the client's timeline; a CRM appointment
    reaches the calendar; deletes go both ways; a second pass writes nothing."""
    work = radicale.calendar_url(USER, "work")
    account_id = _add(cli, radicale, password_file)
    with sessions() as session:
        account = session.get_one(CalendarAccount, account_id)
        assert account.calendar_url == work
        assert account.calendar_name == "Work"
    radicale.put(USER, work + "outside.ics", _ics("outside-1", _soon(), "Quote review"))
    radicale.put(
        USER,
        work + "nobody.ics",
        _ics("outside-2", _soon(4), "Dentist", attendee="x@elsewhere.example"),
    )
    out = cli("calendar", "sync", str(account_id))
    assert "enabled" in out, out
    rows = _rows(sessions, account_id)
    assert {r.uid for r in rows} == {"outside-1", "outside-2"}
    meeting = next(r for r in rows if r.uid == "outside-1")
    assert meeting.origin is EventOrigin.CALENDAR
    assert meeting.activity_id is not None
    assert next(r for r in rows if r.uid == "outside-2").activity_id is None
    with sessions() as session:
        activity = session.get_one(Activity, meeting.activity_id)
        assert activity.kind == "meeting"
        assert activity.subject == "Quote review"
        contact_parties = session.scalars(
            select(Participant).where(
                Participant.activity_id == activity.id, Participant.kind == PartyKind.CONTACT
            )
        ).all()
        assert [p.address for p in contact_parties] == [CONTACT]
        assert contact_parties[0].contact_id is not None
        assert contact_parties[0].company_id is not None  # on the company's timeline too

    # The CRM's appointment reaches the calendar.
    start = _soon(5, 14)
    event_id = int(
        cli(
            "events", "add", "acme", USER, "--summary", "Site visit",
            "--start", start.isoformat(), "--end", (start + timedelta(hours=2)).isoformat(),
            "--attendee", CONTACT, "--sync",
        ).strip()
    )  # fmt: skip
    with sessions() as session:
        event = session.get_one(CalendarEvent, event_id)
        href, uid = event.href, event.uid
        assert event.pending == "" and event.etag
        assert event.activity_id is None  # recorded when the calendar's copy comes back
    stored = radicale.get(USER, radicale.url + href)
    assert stored.status == 200 and f"UID:{uid}" in stored.body and "RRULE" not in stored.body
    assert "SUMMARY:Site visit" in stored.body

    # A second pass reads the CRM's own write back without making it twice.
    cli("calendar", "sync", str(account_id))
    rows = _rows(sessions, account_id)
    assert sorted(r.uid for r in rows) == sorted({"outside-1", "outside-2", uid})
    assert len(rows) == 3

    # Nothing changed: a pass asks one question and writes nothing.
    before_requests = radicale.requests()
    with sessions() as session:
        before = (
            session.scalar(select(func.max(CalendarEvent.updated_at))),
            session.scalar(select(func.count()).select_from(CalendarEvent)),
            session.scalar(select(func.count()).select_from(Activity)),
            session.scalar(select(func.max(Activity.updated_at))),
            session.scalar(select(func.count()).select_from(WebhookEvent)),
            session.scalar(select(func.count()).select_from(CalendarError)),
        )
    result = _syncer(sessions, settings).run(account_id)
    assert result.status is AccountStatus.ENABLED
    assert (result.fetched, result.changed, result.removed, result.written) == (0, 0, 0, 0)
    asked = radicale.requests() - before_requests
    assert dict(asked) == {"REPORT": 1}, asked
    with sessions() as session:
        after = (
            session.scalar(select(func.max(CalendarEvent.updated_at))),
            session.scalar(select(func.count()).select_from(CalendarEvent)),
            session.scalar(select(func.count()).select_from(Activity)),
            session.scalar(select(func.max(Activity.updated_at))),
            session.scalar(select(func.count()).select_from(WebhookEvent)),
            session.scalar(select(func.count()).select_from(CalendarError)),
        )
    assert after == before

    # Deleted in the calendar: gone here, and so is its meeting.
    assert radicale.delete(USER, work + "outside.ics").status in (200, 204)
    cli("calendar", "sync", str(account_id))
    with sessions() as session:
        gone = session.get_one(CalendarEvent, meeting.id)
        assert gone.deleted_at is not None
        assert session.get(Activity, meeting.activity_id) is None

    # Deleted in the CRM: gone from the calendar, and it never comes back.
    cli("events", "delete", str(event_id), "--sync")
    assert radicale.get(USER, radicale.url + href).status == 404
    cli("calendar", "sync", str(account_id))
    with sessions() as session:
        assert session.get_one(CalendarEvent, event_id).deleted_at is not None
        live = session.scalar(
            select(func.count())
            .select_from(CalendarEvent)
            .where(CalendarEvent.account_id == account_id, CalendarEvent.deleted_at.is_(None))
        )
    assert live == 1


def test_a_crm_edit_racing_an_outside_edit_keeps_the_outside_edit(
    cli: Cli,
    radicale: Radicale,
    password_file: str,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    """The calendar changed the event after our last read: If-Match fails (412), the
    calendar's version stays, and the CRM's change is a conflict on the event and the log."""
    account_id = _add(cli, radicale, password_file)
    start = _soon(2, 10)
    event_id = int(
        cli(
            "events", "add", "acme", USER, "--summary", "Kick-off",
            "--start", start.isoformat(), "--end", (start + timedelta(hours=1)).isoformat(),
            "--attendee", CONTACT, "--sync",
        ).strip()
    )  # fmt: skip
    with sessions() as session:
        event = session.get_one(CalendarEvent, event_id)
        href, etag = event.href, event.etag
    url = radicale.url + href
    outside = radicale.get(USER, url).body.replace(
        "SUMMARY:Kick-off", "SUMMARY:Kick-off (moved room)"
    )
    assert radicale.put(USER, url, outside, etag=etag).status in (200, 201, 204)
    with sessions.begin() as session:
        event = session.get_one(CalendarEvent, event_id)
        calendars.update_event(
            session,
            event,
            calendars.EventInput(
                summary="Kick-off (CRM title)",
                start=start,
                end=start + timedelta(hours=1),
                attendees=[CONTACT],
            ),
            utcnow(),
        )
    puts_before = radicale.requests()["PUT"]
    result = _syncer(sessions, settings).run(account_id)
    assert result.conflicts == 1 and result.written == 0
    assert radicale.requests()["PUT"] == puts_before + 1  # the refused If-Match PUT only
    assert "SUMMARY:Kick-off (moved room)" in radicale.get(USER, url).body
    with sessions() as session:
        event = session.get_one(CalendarEvent, event_id)
        assert event.summary == "Kick-off (moved room)"
        assert event.pending == ""
        assert "changed in the calendar" in event.conflict
        logged = session.scalars(
            select(CalendarError).where(CalendarError.account_id == account_id)
        ).all()
        assert [row.status for row in logged] == ["conflict"]
        assert session.get_one(CalendarAccount, account_id).status is AccountStatus.ENABLED
    out = cli("calendar", "errors", str(account_id))
    assert "conflict" in out


def test_an_expired_sync_token_falls_back_to_comparing_without_duplicates(
    cli: Cli,
    radicale: Radicale,
    password_file: str,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    """The server no longer knows the stored token (403 valid-sync-token): the window's hrefs
    and ETags are compared instead, the change made meanwhile is read, nothing twice."""
    work = radicale.calendar_url(USER, "work")
    for n in range(5):
        radicale.put(USER, work + f"e{n}.ics", _ics(f"uid-{n}", _soon(n + 1), f"Call {n}"))
    account_id = _add(cli, radicale, password_file)
    cli("calendar", "sync", str(account_id))
    assert len(_rows(sessions, account_id)) == 5
    radicale.put(USER, work + "e1.ics", _ics("uid-1", _soon(2), "Call 1 (renamed)"))
    radicale.put(USER, work + "e9.ics", _ics("uid-9", _soon(9), "Call 9"))
    with sessions.begin() as session:
        account = session.get_one(CalendarAccount, account_id)
        good = account.sync_token
        assert good.startswith("http://radicale.org/ns/sync/")
        account.sync_token = "http://radicale.org/ns/sync/" + "0" * 64
    result = _syncer(sessions, settings).run(account_id)
    assert result.status is AccountStatus.ENABLED, result.problem
    assert result.mode == "full"
    assert any("expired" in note for note in result.notes)
    assert result.fetched == 2  # the renamed one and the new one; the rest matched by ETag
    rows = _rows(sessions, account_id)
    keys = [(r.href, r.recurrence_id) for r in rows]
    assert len(keys) == len(set(keys)) == 6
    assert next(r for r in rows if r.uid == "uid-1").summary == "Call 1 (renamed)"
    with sessions() as session:
        fresh = session.get_one(CalendarAccount, account_id).sync_token
        assert fresh and fresh not in (good, "http://radicale.org/ns/sync/" + "0" * 64)
        meetings = session.scalar(
            select(func.count()).select_from(Activity).where(Activity.kind == "meeting")
        )
    assert meetings == 6


def test_events_made_in_the_calendar_are_read_only_and_the_crm_makes_no_series(
    cli: Cli,
    radicale: Radicale,
    password_file: str,
    sessions: sessionmaker[Session],
) -> None:
    """Aspire's rules: a calendar-made event cannot be changed or deleted from the CRM."""
    work = radicale.calendar_url(USER, "work")
    radicale.put(USER, work + "outside.ics", _ics("outside-1", _soon(), "Quote review"))
    account_id = _add(cli, radicale, password_file)
    cli("calendar", "sync", str(account_id))
    row = _rows(sessions, account_id)[0]
    cli("events", "delete", str(row.id), expect=1)
    assert "read-only" in cli.err
    with sessions.begin() as session, pytest.raises(calendars.EventError, match="recurring"):
        account = session.get_one(CalendarAccount, account_id)
        calendars.add_event(
            session,
            account,
            calendars.EventInput(
                summary="Weekly",
                start=_soon(),
                end=_soon() + timedelta(hours=1),
                recurrence="FREQ=WEEKLY",
            ),
            utcnow(),
        )


def test_a_private_calendar_shows_colleagues_busy_blocks(
    cli: Cli,
    radicale: Radicale,
    password_file: str,
    sessions: sessionmaker[Session],
) -> None:
    """Private: the owner and the colleagues it is shared with see details, others busy."""
    with sessions.begin() as session:
        tenant = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        directory.add_staff(session, tenant, "bob", ["bob@acme.example"])
        directory.add_staff(session, tenant, "cleo", ["cleo@acme.example"])
    work = radicale.calendar_url(USER, "work")
    radicale.put(USER, work + "secret.ics", _ics("secret-1", _soon(), "Salary talk"))
    account_id = _add(cli, radicale, password_file, "--privacy", "private", "--share-with", "bob")
    cli("calendar", "sync", str(account_id))
    with sessions() as session:
        tenant = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        seen = {}
        for name in (USER, "bob", "cleo"):
            viewer = directory.find_staff(session, tenant, name)
            seen[name] = calendars.list_events(session, tenant, viewer=viewer)
        anonymous = calendars.list_events(session, tenant, viewer=None)
        meeting = session.scalars(select(Activity).where(Activity.kind == "meeting")).one()
        assert meeting.private
    assert seen[USER][0]["summary"] == "Salary talk"
    assert seen["bob"][0]["summary"] == "Salary talk"
    for busy in (seen["cleo"][0], anonymous[0]):
        assert busy["summary"] == "Busy" and busy["private"] is True
        assert "attendees" not in busy and "description" not in busy and "location" not in busy
        assert busy["start"] == seen[USER][0]["start"]
    out = cli("events", "list", "acme", "--as", "cleo", "--json")
    assert "Salary" not in out and "carol" not in out


def test_a_refused_login_waits_for_a_reconnect_like_a_mailbox(
    cli: Cli,
    radicale: Radicale,
    password_file: str,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    """A wrong password: `reconnect`, an error-log row in words, an announced status; a new
    password makes it `pending` and the next pass `enabled`. Then list, show, test, remove."""
    work = radicale.calendar_url(USER, "work")
    radicale.put(USER, work + "outside.ics", _ics("outside-1", _soon(), "Quote review"))
    account_id = _add(cli, radicale, password_file)
    with sessions.begin() as session:
        account = session.get_one(CalendarAccount, account_id)
        account.secret = SecretBox.from_file(settings.secrets.key_file).seal("not the password")
    out = cli("calendar", "sync", str(account_id), expect=1)
    assert "reconnect" in out and "refused the login richard" in out
    with sessions() as session:
        account = session.get_one(CalendarAccount, account_id)
        assert account.status is AccountStatus.RECONNECT and account.retry_at is None
        assert account.announced_status == "reconnect"
    assert "refused the login" in cli("calendar", "errors", str(account_id))
    cli("calendar", "sync", str(account_id), expect=1)
    assert "needs re-connecting" in cli.err
    cli("calendar", "reconnect", str(account_id), "--password-file", password_file)
    assert "enabled" in cli("calendar", "sync", str(account_id))
    listed = cli("calendar", "list", "--json")
    assert '"status": "enabled"' in listed and '"incremental": "sync-token"' in listed
    assert "Work" in cli("calendar", "show", str(account_id))
    tested = cli("calendar", "test", str(account_id))
    assert "incremental: sync-token" in tested and "events in the window: 1" in tested
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Activity)) == 1
    cli("calendar", "remove", str(account_id), expect=2)
    assert "1 meeting(s) removed" in cli("calendar", "remove", str(account_id), "--remove-history")
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Activity)) == 0
        assert session.get(CalendarAccount, account_id) is None


def test_never_log_keeps_a_meeting_off_the_timeline_and_discovery_asks_which_calendar(
    cli: Cli,
    radicale: Radicale,
    password_file: str,
    sessions: sessionmaker[Session],
) -> None:
    """A client on the never-log list: the event is synced but is no meeting. A server with
    several calendars and no --calendar: the command lists them."""
    out = cli(
        "calendar", "add", "acme", USER, "--caldav", radicale.url + "/", "--login", USER,
        "--password-file", password_file, expect=1,
    )  # fmt: skip
    assert "several calendars" in cli.err and "'Work'" in cli.err and "'Home'" in cli.err
    assert out == ""
    cli("never-log", "add", "acme", "client.example")
    work = radicale.calendar_url(USER, "work")
    radicale.put(USER, work + "outside.ics", _ics("outside-1", _soon(), "Quote review"))
    account_id = _add(cli, radicale, password_file)
    cli("calendar", "sync", str(account_id))
    rows = _rows(sessions, account_id)
    assert len(rows) == 1 and rows[0].activity_id is None
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Activity)) == 0


class _NoSyncTokens:
    """Radicale behind a loopback proxy that hides its sync tokens, as older servers have
    none: what such a server offers is ``getctag`` and ETags."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length", "accept-encoding")
                }
                request = urllib.request.Request(
                    proxy.upstream + self.path, data=body, method=self.command, headers=headers
                )
                try:
                    with urllib.request.urlopen(request, timeout=30) as answer:
                        status, answer_headers, data = answer.status, answer.headers, answer.read()
                except urllib.error.HTTPError as error:
                    status, answer_headers, data = error.code, error.headers, error.read()
                if self.command == "PROPFIND":
                    data = re.sub(rb"<[^>]*sync-token[^>]*>[^<]*</[^>]*sync-token>", b"", data)
                    data = re.sub(rb"<[^>]*sync-token\s*/>", b"", data)
                self.send_response(status)
                for key, value in answer_headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            # http.server dispatches on do_<METHOD>.
            do_GET = do_PUT = do_DELETE = do_PROPFIND = do_REPORT = _forward  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _NoSyncTokens:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_server_without_sync_tokens_is_compared_by_ctag_and_etags(
    radicale: Radicale,
    sessions: sessionmaker[Session],
    settings: Settings,
    demo: DemoAddresses,
) -> None:
    """No sync token: an unchanged ``getctag`` is one PROPFIND and nothing read; a change
    moves the ctag and only the changed object is read."""
    work = radicale.calendar_url(USER, "work")
    for n in range(3):
        radicale.put(USER, work + f"e{n}.ics", _ics(f"uid-{n}", _soon(n + 1), f"Call {n}"))
    box = SecretBox.from_file(settings.secrets.key_file)
    with _NoSyncTokens(radicale.url) as proxy:
        calendar_url = proxy.url + "/richard/work/"
        with sessions.begin() as session:
            tenant = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
            account_id = calendars.add_account(
                session,
                box,
                calendars.CalendarRequest(
                    tenant=tenant, username=USER, url=calendar_url, login=USER, password=PASSWORD
                ),
                calendar_url=calendar_url,
                calendar_name="Work",
                now=utcnow(),
            ).id
        syncer = _syncer(sessions, settings)
        first = syncer.run(account_id)
        assert first.problem is None and first.fetched == 3
        with sessions() as session:
            account = session.get_one(CalendarAccount, account_id)
            assert account.sync_token == "" and account.ctag
        before = radicale.requests()
        second = syncer.run(account_id)
        assert second.mode == "unchanged" and second.fetched == 0
        assert dict(radicale.requests() - before) == {"PROPFIND": 1}
        radicale.put(USER, work + "e1.ics", _ics("uid-1", _soon(2), "Call 1 (renamed)"))
        third = syncer.run(account_id)
        assert third.mode == "full" and third.fetched == 1 and third.changed == 1
    rows = _rows(sessions, account_id)
    assert len(rows) == 3
    assert next(r for r in rows if r.uid == "uid-1").summary == "Call 1 (renamed)"
