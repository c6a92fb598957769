"""The OpenAPI description of ``/v1/events`` (calendar sync, web/api/events.py).

Merged into ``GET /v1/openapi.json`` by web/openapi.py beside the other resources.
"""

from __future__ import annotations

from typing import Any

from mailledger.web.openapiparts import operation
from mailledger.web.openapiresources import (
    _LIMIT,
    _STRINGS,
    CREATE,
    ONE,
    READ,
    REMOVE,
    WRITE_BODY,
    _body,
    _list,
    _path_param,
    _query,
    _ref,
)

_EVENT_ID = _path_param("event_id", "The event's id.", integer=True)
_TIME = {"type": "string", "format": "date-time"}
_VIEWER = _query(
    "viewer",
    "The colleague the events are shown to (username): a private calendar's events are busy "
    "blocks unless the calendar is theirs or shared with them.",
)
_FIELDS: dict[str, Any] = {
    "summary": {"type": "string", "minLength": 1, "maxLength": 1000},
    "start": {**_TIME, "description": "With its UTC offset."},
    "end": {**_TIME, "description": "With its UTC offset; after start."},
    "attendees": {**_STRINGS, "description": "Email addresses."},
    "description": {"type": "string"},
    "location": {"type": "string"},
    "tz": {"type": "string", "description": "The time zone it is shown in (Europe/Berlin)."},
}
_EXAMPLE = {
    "summary": "Site visit",
    "start": "2027-01-05T09:00:00+01:00",
    "end": "2027-01-05T10:00:00+01:00",
    "attendees": ["carol@client.example"],
}

EVENT_PATHS: dict[str, Any] = {
    "/v1/events": {
        "get": operation(
            "listEvents",
            "The tenant's appointments by start, as `viewer` may see them.",
            "The events.",
            _list("Event"),
            READ,
            parameters=[
                _query("staff", "Only this staff member's calendars (username)."),
                _VIEWER,
                _query(
                    "start", "Events ending after this moment (with offset).", format="date-time"
                ),
                _query(
                    "end", "Events starting before this moment (with offset).", format="date-time"
                ),
                _LIMIT,
            ],
        ),
        "post": operation(
            "createEvent",
            "Make an appointment in a staff member's calendar (`events add`); it is "
            "written there with If-None-Match at the next pass. Never recurring: series are "
            "made in the calendar app.",
            "The new event (written to the calendar soon).",
            _ref("Event"),
            CREATE,
            status=201,
            body=_body(
                {"staff": {"type": "string", "description": "Whose calendar."}, **_FIELDS},
                {"staff": "richard", **_EXAMPLE},
                ["staff", "summary", "start", "end"],
            ),
        ),
    },
    "/v1/events/{event_id}": {
        "parameters": [_EVENT_ID],
        "get": operation(
            "getEvent",
            "One appointment, as `viewer` may see it.",
            "The event.",
            _ref("Event"),
            ONE,
            parameters=[_VIEWER],
        ),
        "patch": operation(
            "updateEvent",
            "Change an appointment the CRM made (written with If-Match); one made "
            "in the calendar is read-only: 409.",
            "The event.",
            _ref("Event"),
            WRITE_BODY,
            body=_body(_FIELDS, _EXAMPLE, ["summary", "start", "end"]),
        ),
        "delete": operation(
            "deleteEvent",
            "Delete an appointment the CRM made, here and in the calendar; one made "
            "in the calendar is read-only: 409.",
            "Deleted.",
            {
                "type": "object",
                "properties": {"id": {"type": "integer"}, "deleted": {"type": "boolean"}},
            },
            REMOVE,
        ),
    },
}

EVENT_SCHEMAS: dict[str, Any] = {
    "Event": {
        "type": "object",
        "required": ["id", "calendar_account", "staff", "start", "end", "busy", "private"],
        "properties": {
            "id": {"type": "integer"},
            "calendar_account": {"type": "integer"},
            "staff": {"type": ["string", "null"]},
            "start": _TIME,
            "end": _TIME,
            "all_day": {"type": "boolean"},
            "busy": {"type": "boolean"},
            "private": {
                "type": "boolean",
                "description": "A busy block: the calendar is private and not shared with the "
                "viewer; only start and end are shown.",
            },
            "summary": {"type": "string"},
            "description": {"type": "string"},
            "location": {"type": "string"},
            "tzid": {"type": "string"},
            "uid": {"type": "string"},
            "recurrence_id": {"type": "string"},
            "recurring": {"type": "boolean"},
            "origin": {"type": "string", "enum": ["crm", "calendar"]},
            "read_only": {"type": "boolean"},
            "organizer": {"type": "string"},
            "attendees": _STRINGS,
            "status": {"type": "string"},
            "synced": {"type": "boolean"},
            "conflict": {"type": "string"},
            "activity": {"type": ["integer", "null"]},
        },
    },
}
