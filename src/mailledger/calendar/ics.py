"""Calendar objects: read into occurrences over a window, and written for the CRM's events.

A calendar object (one ``.ics`` resource) holds one event, or a recurring one: a master
VEVENT with RRULE/RDATE/EXDATE and overrides (VEVENTs with a RECURRENCE-ID). The CRM keeps
each occurrence in the window as a row, so :func:`occurrences` expands the object with
``recurring-ical-events`` (RFC 5545 §3.8.5: RRULE, EXDATE, RDATE, RECURRENCE-ID overrides,
``DATE`` values, TZID with its daylight-saving rules, BYDAY) and says each occurrence's UTC
start and end, its original start (the recurrence id), and the TZID it was written in.

The CRM writes single events only: :func:`event_ics` never writes an RRULE (recurring
appointments are made in the calendar app, as Aspire's users expect).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import icalendar
import recurring_ical_events

from mailledger.mail.addresses import AddressError, parse_address

PRODID = "-//mailledger//calendar sync//EN"
# Parts of a recurrence id as the rows keep it: UTC date-time, or a date for all-day ones.
_UTC_FORMAT = "%Y%m%dT%H%M%SZ"
_DATE_FORMAT = "%Y%m%d"


class CalendarDataError(ValueError):
    """A calendar object that cannot be read as iCalendar (RFC 5545)."""


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One occurrence of an event in the window, in the CRM's terms."""

    uid: str
    recurrence_id: str  # "" for a single event
    recurring: bool
    summary: str
    description: str
    location: str
    start: datetime  # UTC
    end: datetime  # UTC
    tzid: str
    all_day: bool
    organizer: str
    attendees: list[dict[str, str]] = field(default_factory=list)
    status: str = "confirmed"


def _utc(value: date | datetime) -> datetime:
    """A DATE or DATE-TIME as UTC; a floating time is taken as UTC, a DATE as midnight UTC."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    return datetime.combine(value, time(), tzinfo=UTC)


def recurrence_key(value: date | datetime) -> str:
    """An occurrence's original start as the rows keep it (UTC, or a date all day)."""
    if isinstance(value, datetime):
        return _utc(value).strftime(_UTC_FORMAT)
    return value.strftime(_DATE_FORMAT)


def _address(value: Any) -> str:
    """The address of a CAL-ADDRESS (``mailto:ann@example.com``), normalized, or ""."""
    text = str(value or "").strip()
    if text.lower().startswith("mailto:"):
        text = text[7:]
    try:
        return parse_address(text).address.lower()
    except (AddressError, ValueError):
        return ""


def _attendees(component: icalendar.Component) -> list[dict[str, str]]:
    raw = component.get("ATTENDEE")
    if raw is None:
        return []
    values = raw if isinstance(raw, list) else [raw]
    people = []
    for value in values:
        address = _address(value)
        if not address:
            continue
        params = getattr(value, "params", {})
        people.append(
            {
                "address": address,
                "name": str(params.get("CN", ""))[:200],
                "status": str(params.get("PARTSTAT", "NEEDS-ACTION")).lower(),
            }
        )
    return people


def _text(component: icalendar.Component, name: str) -> str:
    value = component.get(name)
    return str(value) if value is not None else ""


def parse(text: str) -> icalendar.Calendar:
    """The object's text as a calendar; a clear error when it is not one."""
    try:
        calendar = icalendar.Calendar.from_ical(text)
    except ValueError as exc:
        raise CalendarDataError(f"not iCalendar data: {exc}") from None
    if not isinstance(calendar, icalendar.Calendar):
        raise CalendarDataError("not a VCALENDAR object")
    return calendar


def uid_of(text: str) -> str:
    """The UID of the object's events ("" when it has no VEVENT)."""
    for component in parse(text).walk("VEVENT"):
        return _text(component, "UID")
    return ""


def occurrences(text: str, start: datetime, end: datetime) -> list[Occurrence]:
    """Every occurrence of the object's events that overlaps ``[start, end)``, by start."""
    calendar = parse(text)
    events = calendar.walk("VEVENT")
    if not events:
        return []
    recurring = any("RRULE" in e or "RDATE" in e or "RECURRENCE-ID" in e for e in events)
    found: list[Occurrence] = []
    try:
        expanded = recurring_ical_events.of(calendar).between(start, end)
    except (ValueError, TypeError) as exc:
        raise CalendarDataError(f"the recurrence cannot be expanded: {exc}") from None
    for component in expanded:
        dtstart = component.get("DTSTART")
        if dtstart is None:
            continue
        begin = dtstart.dt
        all_day = not isinstance(begin, datetime)
        dtend = component.get("DTEND")
        if dtend is not None:
            finish = dtend.dt
        elif component.get("DURATION") is not None:
            finish = begin + component.get("DURATION").dt
        else:
            finish = begin + (timedelta(days=1) if all_day else timedelta(0))
        original = component.get("RECURRENCE-ID")
        recurrence_id = ""
        if recurring:
            recurrence_id = recurrence_key(original.dt if original is not None else begin)
        tzid = str(dtstart.params.get("TZID", "")) if not all_day else ""
        found.append(
            Occurrence(
                uid=_text(component, "UID"),
                recurrence_id=recurrence_id,
                recurring=recurring,
                summary=_text(component, "SUMMARY"),
                description=_text(component, "DESCRIPTION"),
                location=_text(component, "LOCATION"),
                start=_utc(begin),
                end=_utc(finish),
                tzid=tzid[:64],
                all_day=all_day,
                organizer=_address(component.get("ORGANIZER")),
                attendees=_attendees(component),
                status=(_text(component, "STATUS") or "confirmed").lower()[:16],
            )
        )
    found.sort(key=lambda o: (o.start, o.recurrence_id))
    return found


@dataclass(frozen=True, slots=True)
class EventDraft:
    """What the CRM writes to a calendar: one appointment, never a recurring one."""

    uid: str
    summary: str
    start: datetime | date
    end: datetime | date
    organizer: str
    attendees: list[str] = field(default_factory=list)
    description: str = ""
    location: str = ""
    tzid: str = ""  # the time zone the times are shown in; "" writes UTC
    sequence: int = 0


def event_ics(draft: EventDraft, now: datetime) -> str:
    """The calendar object for ``draft`` (RFC 5545 §3.6.1); no RRULE, ever."""
    calendar = icalendar.Calendar()
    calendar.add("PRODID", PRODID)
    calendar.add("VERSION", "2.0")
    event = icalendar.Event()
    event.add("UID", draft.uid)
    event.add("DTSTAMP", now.astimezone(UTC))
    event.add("SEQUENCE", draft.sequence)
    start, end = draft.start, draft.end
    if isinstance(start, datetime) and isinstance(end, datetime) and draft.tzid:
        zone = ZoneInfo(draft.tzid)
        start, end = start.astimezone(zone), end.astimezone(zone)
    elif isinstance(start, datetime) and isinstance(end, datetime):
        start, end = start.astimezone(UTC), end.astimezone(UTC)
    event.add("DTSTART", start)
    event.add("DTEND", end)
    event.add("SUMMARY", draft.summary)
    if draft.description:
        event.add("DESCRIPTION", draft.description)
    if draft.location:
        event.add("LOCATION", draft.location)
    if draft.organizer:
        event.add("ORGANIZER", f"mailto:{draft.organizer}")
    for address in draft.attendees:
        attendee = icalendar.vCalAddress(f"mailto:{address}")
        attendee.params["ROLE"] = "REQ-PARTICIPANT"
        attendee.params["PARTSTAT"] = "NEEDS-ACTION"
        event.add("ATTENDEE", attendee, encode=False)
    calendar.add_component(event)
    if draft.tzid and isinstance(start, datetime):
        calendar.add_missing_timezones()
    return str(calendar.to_ical().decode("utf-8"))
