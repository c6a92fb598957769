"""Recurring events as Radicale sees them: a weekly meeting across a daylight-saving change,
one occurrence moved and one cancelled, and an all-day event, compared occurrence by
occurrence with the server's own expansion (its time-range filter, RFC 4791 §9.9)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.calendar.passes import CalendarSyncer, window
from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.store import calendars
from mailledger.store.models import Activity, CalendarEvent, Tenant
from mailledger.store.secretbox import SecretBox
from mailledger.testing.radicale import Radicale

USER = "richard"
PASSWORD = "calendar secret"
BERLIN = ZoneInfo("Europe/Berlin")
VTIMEZONE = (
    "BEGIN:VTIMEZONE\r\nTZID:Europe/Berlin\r\n"
    "BEGIN:DAYLIGHT\r\nTZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\nTZNAME:CEST\r\n"
    "DTSTART:19700329T020000\r\nRRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU\r\nEND:DAYLIGHT\r\n"
    "BEGIN:STANDARD\r\nTZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nTZNAME:CET\r\n"
    "DTSTART:19701025T030000\r\nRRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU\r\nEND:STANDARD\r\n"
    "END:VTIMEZONE\r\n"
)
_UTC = "%Y%m%dT%H%M%SZ"


def _next_dst_change(after: datetime) -> date:
    """The first day after ``after`` whose Berlin UTC offset differs from the day before's."""
    day = after.date()
    noon = datetime.combine(day, time(12), tzinfo=BERLIN).utcoffset()
    while True:
        day += timedelta(days=1)
        offset = datetime.combine(day, time(12), tzinfo=BERLIN).utcoffset()
        if offset != noon:
            return day


def _local(day: date, hour: int) -> datetime:
    return datetime.combine(day, time(hour), tzinfo=BERLIN)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_UTC)


@pytest.fixture
def radicale() -> Iterator[Radicale]:
    with Radicale({USER: PASSWORD}) as server:
        server.make_calendar(USER, "work", "Work")
        yield server


def test_weekly_meeting_across_a_dst_change_matches_the_servers_expansion(
    radicale: Radicale,
    sessions: sessionmaker[Session],
    settings: Settings,
    demo: DemoAddresses,
) -> None:
    """Every occurrence in the CRM starts and ends where Radicale's expansion puts it; the
    moved one is at its new time, the cancelled one is nowhere, the all-day one is one day."""
    change = _next_dst_change(datetime.now(UTC))
    now = datetime.combine(change - timedelta(days=21), time(6), tzinfo=UTC)
    first = now.date() + timedelta(days=1)
    while first.weekday() != 4:  # the first Friday of the series
        first += timedelta(days=1)
    fridays = [first + timedelta(weeks=n) for n in range(8)]
    cancelled = next(d for d in fridays if d > change)  # after the change
    moved = next(d for d in fridays if d > cancelled)
    moved_to = _local(moved - timedelta(days=1), 14)  # the Thursday before, 14:00
    start_local = _local(first, 10)
    series = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//calendar app//EN\r\n" + VTIMEZONE
        + "BEGIN:VEVENT\r\nUID:weekly-1\r\nDTSTAMP:20260101T000000Z\r\n"
        f"DTSTART;TZID=Europe/Berlin:{start_local:%Y%m%dT%H%M%S}\r\n"
        f"DTEND;TZID=Europe/Berlin:{start_local + timedelta(hours=1):%Y%m%dT%H%M%S}\r\n"
        "RRULE:FREQ=WEEKLY;BYDAY=FR;COUNT=8\r\n"
        f"EXDATE;TZID=Europe/Berlin:{_local(cancelled, 10):%Y%m%dT%H%M%S}\r\n"
        "SUMMARY:Weekly review\r\nORGANIZER:mailto:richard@acme.example\r\n"
        "ATTENDEE;CN=Carol:mailto:carol@client.example\r\nEND:VEVENT\r\n"
        "BEGIN:VEVENT\r\nUID:weekly-1\r\nDTSTAMP:20260101T000000Z\r\n"
        f"RECURRENCE-ID;TZID=Europe/Berlin:{_local(moved, 10):%Y%m%dT%H%M%S}\r\n"
        f"DTSTART;TZID=Europe/Berlin:{moved_to:%Y%m%dT%H%M%S}\r\n"
        f"DTEND;TZID=Europe/Berlin:{moved_to + timedelta(hours=1):%Y%m%dT%H%M%S}\r\n"
        "SUMMARY:Weekly review (moved)\r\nORGANIZER:mailto:richard@acme.example\r\n"
        "ATTENDEE;CN=Carol:mailto:carol@client.example\r\nEND:VEVENT\r\n"
        "END:VCALENDAR\r\n"
    )  # fmt: skip
    all_day = change + timedelta(days=2)
    offsite = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//calendar app//EN\r\n"
        "BEGIN:VEVENT\r\nUID:offsite-1\r\nDTSTAMP:20260101T000000Z\r\n"
        f"DTSTART;VALUE=DATE:{all_day:%Y%m%d}\r\n"
        f"DTEND;VALUE=DATE:{all_day + timedelta(days=1):%Y%m%d}\r\n"
        "SUMMARY:Offsite\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    work = radicale.calendar_url(USER, "work")
    assert radicale.put(USER, work + "weekly.ics", series).status in (200, 201)
    assert radicale.put(USER, work + "offsite.ics", offsite).status in (200, 201)
    box = SecretBox.from_file(settings.secrets.key_file)
    with sessions.begin() as session:
        tenant = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        account = calendars.add_account(
            session,
            box,
            calendars.CalendarRequest(
                tenant=tenant, username=USER, url=work, login=USER, password=PASSWORD
            ),
            calendar_url=work,
            calendar_name="Work",
            now=now,
        )
        account_id = account.id
    result = CalendarSyncer(sessions, settings, box).run(account_id, now=now)
    assert result.problem is None, result.problem

    with sessions() as session:
        rows = list(
            session.scalars(
                select(CalendarEvent)
                .where(CalendarEvent.account_id == account_id, CalendarEvent.deleted_at.is_(None))
                .order_by(CalendarEvent.start_at)
            )
        )
        meetings = session.scalar(
            select(func.count()).select_from(Activity).where(Activity.kind == "meeting")
        )
    weekly = [r for r in rows if r.uid == "weekly-1"]
    # What the series means, worked out by hand: 10:00 Berlin time on each Friday, whatever
    # the offset that day, less the cancelled one, the moved one on the Thursday at 14:00.
    expected = sorted(
        [_local(d, 10).astimezone(UTC) for d in fridays if d not in (cancelled, moved)]
        + [moved_to.astimezone(UTC)]
    )
    assert [r.start_at for r in weekly] == expected
    # The same 10:00 in Berlin is another hour in UTC once the clocks changed.
    before = {r.start_at.hour for r in weekly if r.start_at.date() < change}
    after = {
        r.start_at.hour
        for r in weekly
        if r.start_at.date() > change and not r.summary.endswith("(moved)")
    }
    assert len(before) == len(after) == 1 and before != after
    assert all(r.tzid == "Europe/Berlin" and r.recurring for r in weekly)
    assert next(r for r in weekly if r.start_at == moved_to.astimezone(UTC)).summary.endswith(
        "(moved)"
    )
    assert meetings == len(weekly)  # one meeting with Carol per occurrence
    offsite_rows = [r for r in rows if r.uid == "offsite-1"]
    assert len(offsite_rows) == 1 and offsite_rows[0].all_day
    assert offsite_rows[0].end_at - offsite_rows[0].start_at == timedelta(days=1)

    # Radicale's own view, occurrence by occurrence: each of ours is found at its exact
    # times, and not in the hour before its start or after its end.
    for row in rows:
        href = row.href
        assert href in radicale.matches(USER, work, _stamp(row.start_at), _stamp(row.end_at))
        if not row.all_day:
            before = row.start_at - timedelta(hours=1)
            after = row.end_at + timedelta(hours=1)
            assert href not in radicale.matches(USER, work, _stamp(before), _stamp(row.start_at))
            assert href not in radicale.matches(USER, work, _stamp(row.end_at), _stamp(after))
    # ... and day by day over the whole window, the days the server finds each object on
    # are the days we hold an occurrence of it on.
    start, end = window(settings, now)
    day = start
    while day < end:
        following = day + timedelta(days=1)
        found = set(radicale.matches(USER, work, _stamp(day), _stamp(following)))
        ours = {r.href for r in rows if r.start_at < following and r.end_at > day}
        assert found == ours, f"{day:%Y-%m-%d}: Radicale {found}, we {ours}"
        day = following
