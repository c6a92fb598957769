"""``/v1/events``: appointments in staff members' calendars (``events …`` in the CLI), §13.

The same store functions as the CLI (``store.calendars``). An appointment made here is
stored at once and written to the staff member's calendar by the calendar worker's next
pass (the account is made due now). An event made in the calendar is read-only here: a
change or delete answers ``409`` with a problem that says so; a recurring appointment is
refused (``422``): series are made in the calendar app. ``viewer`` names the colleague the
CRM shows the events to: a private calendar's events are busy blocks unless the viewer owns
the calendar or it is shared with them (without ``viewer``, every private event is busy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailledger.store import calendars, directory
from mailledger.store.directory import DirectoryError
from mailledger.store.models import CalendarEvent, Staff, Tenant, utcnow
from mailledger.store.queries import NotFoundError
from mailledger.web.api.common import (
    by_method,
    created,
    json_object,
    list_field,
    only_params,
    page_limit,
    path_id,
    tenant_row,
    text_field,
    writer,
)
from mailledger.web.auth import identify
from mailledger.web.context import context_of
from mailledger.web.problems import ProblemError

FIELDS = {"staff", "summary", "start", "end", "attendees", "description", "location", "tz"}
# Asked for, these are refused with the rule's words rather than "not a field here".
RECURRENCE_FIELDS = {"rrule", "recurrence", "rdate"}


def _moment(body: dict[str, Any], name: str) -> datetime:
    text = text_field(body, name, required=True) or ""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ProblemError(
            422, f"{name}: a date and time with its offset (2027-01-05T09:00:00+01:00)", field=name
        ) from None
    if moment.tzinfo is None:
        raise ProblemError(422, f"{name}: add the UTC offset (+01:00 or Z)", field=name)
    return moment


def _param_moment(params: dict[str, str], name: str) -> datetime | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ProblemError(422, f"{name}: a date and time with its offset", field=name) from None
    if moment.tzinfo is None:
        raise ProblemError(422, f"{name}: add the UTC offset (+01:00 or Z)", field=name)
    return moment


def _staff(session: Session, tenant: Tenant, username: str | None, field: str) -> Staff | None:
    if not username:
        return None
    try:
        return directory.find_staff(session, tenant, username)
    except DirectoryError as exc:
        raise ProblemError(422, f"{field}: {exc}", field=field) from exc


def _find(session: Session, tenant_id: int, event_id: int) -> CalendarEvent:
    try:
        event = calendars.find_event(session, event_id, tenant_id)
    except NotFoundError as exc:
        raise ProblemError(404, str(exc)) from exc
    if event.deleted_at is not None:
        raise ProblemError(404, f"no event {event_id}")
    return event


async def _input(request: Request) -> tuple[dict[str, Any], calendars.EventInput]:
    body = await json_object(request, FIELDS | RECURRENCE_FIELDS)
    asked = sorted(RECURRENCE_FIELDS & set(body))
    if asked:
        raise ProblemError(
            422,
            "the CRM does not make recurring appointments: make the series in the calendar "
            "app; it appears here after the next sync",
            field=asked[0],
        )
    return body, calendars.EventInput(
        summary=text_field(body, "summary", required=True) or "",
        start=_moment(body, "start"),
        end=_moment(body, "end"),
        attendees=list_field(body, "attendees"),
        description=text_field(body, "description") or "",
        location=text_field(body, "location") or "",
        tzid=text_field(body, "tz") or "",
    )


@contextlib.contextmanager
def _refusing() -> Iterator[None]:
    """An event the calendar or its rules refuse: 409 read-only, else 422 naming the field."""
    try:
        yield
    except calendars.EventError as exc:
        raise _refused(exc) from exc


def _refused(exc: calendars.EventError) -> ProblemError:
    if isinstance(exc, calendars.ReadOnlyEventError):
        return ProblemError(409, str(exc))
    text = str(exc)
    field = next(
        (
            name
            for name in ("summary", "attendee", "tz", "description", "staff")
            if name in text.lower()
        ),
        "start",
    )
    return ProblemError(
        422, text, field={"attendee": "attendees", "time zone": "tz"}.get(field, field)
    )


async def list_events(request: Request) -> Response:
    """The tenant's appointments by start, as ``viewer`` may see them."""
    identity = await identify(request)
    params = only_params(request, {"staff", "viewer", "start", "end", "limit"})
    start, end = _param_moment(params, "start"), _param_moment(params, "end")
    limit = page_limit(params.get("limit"))

    def rows(session: Session) -> list[dict[str, Any]]:
        tenant = tenant_row(session, identity.tenant_id)
        return calendars.list_events(
            session,
            tenant,
            viewer=_staff(session, tenant, params.get("viewer"), "viewer"),
            staff=_staff(session, tenant, params.get("staff"), "staff"),
            start=start,
            end=end,
            limit=limit,
        )

    return JSONResponse({"data": await context_of(request).read(rows)})


async def create_event(request: Request) -> Response:
    """Make an appointment in a staff member's calendar; 201 with the event."""
    identity = await writer(request)
    body, event_input = await _input(request)
    username = text_field(body, "staff", required=True) or ""

    def add(session: Session) -> dict[str, Any]:
        tenant = tenant_row(session, identity.tenant_id)
        staff = _staff(session, tenant, username, "staff")
        assert staff is not None
        try:
            account = calendars.account_of_staff(session, staff)
            event = calendars.add_event(session, account, event_input, utcnow())
        except calendars.EventError as exc:
            if "no calendar connected" in str(exc):
                raise ProblemError(409, str(exc)) from exc
            raise _refused(exc) from exc
        return calendars.event_dicts(session, [event], staff)[0]

    return created(await context_of(request).write(add), "/v1/events")


async def get_event(request: Request) -> Response:
    """One appointment, as ``viewer`` may see it."""
    identity = await identify(request)
    params = only_params(request, {"viewer"})
    event_id = path_id(request, "event_id")

    def show(session: Session) -> dict[str, Any]:
        tenant = tenant_row(session, identity.tenant_id)
        event = _find(session, identity.tenant_id, event_id)
        viewer = _staff(session, tenant, params.get("viewer"), "viewer")
        return calendars.event_dicts(session, [event], viewer)[0]

    return JSONResponse(await context_of(request).read(show))


async def update_event(request: Request) -> Response:
    """Change an appointment the CRM made; one made in the calendar is read-only (409)."""
    identity = await writer(request)
    event_id = path_id(request, "event_id")
    body, event_input = await _input(request)
    if "staff" in body:
        raise ProblemError(422, "staff: an appointment stays in its calendar", field="staff")

    def change(session: Session) -> dict[str, Any]:
        event = _find(session, identity.tenant_id, event_id)
        with _refusing():
            calendars.update_event(session, event, event_input, utcnow())
        owner = session.get_one(Staff, calendars.find_account(session, event.account_id).staff_id)
        return calendars.event_dicts(session, [event], owner)[0]

    return JSONResponse(await context_of(request).write(change))


async def delete_event(request: Request) -> Response:
    """Delete an appointment the CRM made, here and from the calendar (next pass)."""
    identity = await writer(request)
    only_params(request, set())
    event_id = path_id(request, "event_id")

    def remove(session: Session) -> dict[str, Any]:
        event = _find(session, identity.tenant_id, event_id)
        with _refusing():
            calendars.delete_event(session, event, utcnow())
        return {"id": event_id, "deleted": True}

    return JSONResponse(await context_of(request).write(remove))


ROUTES = [
    Route("/v1/events", by_method(list_events, post=create_event), methods=["GET", "POST"]),
    Route(
        "/v1/events/{event_id:int}",
        by_method(get_event, patch=update_event, delete=delete_event),
        methods=["GET", "PATCH", "DELETE"],
    ),
]
