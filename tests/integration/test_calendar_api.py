"""``/v1/events`` through real HTTP against the running server, whose calendar worker writes
to a real Radicale: an appointment made through the API appears in the calendar app; one
made in the calendar is read-only (409); recurring ones are refused; a private calendar's
events are busy blocks to colleagues it is not shared with."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.store import calendars, directory
from mailledger.store.models import CalendarPrivacy, Tenant, utcnow
from mailledger.store.secretbox import SecretBox
from mailledger.testing.api import bearer, make_token, running_api
from mailledger.testing.radicale import Radicale

USER = "richard"
PASSWORD = "calendar secret"
# The longest the worker may take to pick a change up before the test gives up on it.
PATIENCE_SECONDS = 60.0


async def _until(check: object, client: httpx.AsyncClient, path: str) -> dict[str, object]:
    """GET ``path`` until ``check(body)`` holds (the worker runs on its own schedule)."""
    deadline = asyncio.get_running_loop().time() + PATIENCE_SECONDS
    while True:
        body = (await client.get(path)).json()
        if check(body):  # type: ignore[operator]
            return body  # type: ignore[no-any-return]
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.1)


async def test_events_api_writes_to_the_calendar_and_keeps_the_rules(
    settings: Settings, sessions: sessionmaker[Session], demo: DemoAddresses
) -> None:
    calendar_settings = settings.calendar.model_copy(update={"poll_interval_seconds": 0.1})
    settings = settings.model_copy(update={"calendar": calendar_settings})
    box = SecretBox.from_file(settings.secrets.key_file)
    with Radicale({USER: PASSWORD}) as radicale:
        work = radicale.make_calendar(USER, "work", "Work")
        start = (utcnow() + timedelta(days=3)).replace(microsecond=0)
        radicale.put(
            USER,
            work + "outside.ics",
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//app//EN\r\nBEGIN:VEVENT\r\n"
            f"UID:outside-1\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:{start:%Y%m%dT%H%M%SZ}\r\n"
            f"DTEND:{start + timedelta(hours=1):%Y%m%dT%H%M%SZ}\r\nSUMMARY:Board meeting\r\n"
            "ATTENDEE:mailto:carol@client.example\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
        )
        with sessions.begin() as session:
            acme = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
            token = make_token(session, acme)
            directory.add_staff(session, acme, "cleo", ["cleo@acme.example"])
            calendars.add_account(
                session,
                box,
                calendars.CalendarRequest(
                    tenant=acme,
                    username=USER,
                    url=work,
                    login=USER,
                    password=PASSWORD,
                    privacy=CalendarPrivacy.PRIVATE,
                ),
                calendar_url=work,
                calendar_name="Work",
                now=utcnow(),
            )
        async with (
            running_api(settings) as api,
            httpx.AsyncClient(base_url=api.base_url, timeout=20, headers=bearer(token)) as client,
        ):
            body = await _until(lambda b: len(b["data"]) == 1, client, f"/v1/events?viewer={USER}")
            outside = body["data"][0]
            assert outside["origin"] == "calendar" and outside["read_only"] is True

            made = await client.post(
                "/v1/events",
                json={
                    "staff": USER,
                    "summary": "Contract signing",
                    "start": (start + timedelta(days=1)).isoformat(),
                    "end": (start + timedelta(days=1, hours=1)).isoformat(),
                    "attendees": ["carol@client.example"],
                },
            )
            assert made.status_code == 201, made.text
            event = made.json()
            assert event["origin"] == "crm" and event["synced"] is False
            synced = await _until(
                lambda b: b["synced"] is True, client, f"/v1/events/{event['id']}?viewer={USER}"
            )
            assert synced["conflict"] == ""
            stored = radicale.get(USER, work + event["uid"].replace("@", "-") + ".ics")
            assert stored.status == 200 and "SUMMARY:Contract signing" in stored.body

            refused = await client.patch(
                f"/v1/events/{outside['id']}",
                json={"summary": "Renamed", "start": outside["start"], "end": outside["end"]},
            )
            assert refused.status_code == 409
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert "read-only" in refused.json()["detail"]
            deleted = await client.delete(f"/v1/events/{outside['id']}")
            assert deleted.status_code == 409

            series = await client.post(
                "/v1/events",
                json={
                    "staff": USER,
                    "summary": "Weekly",
                    "start": start.isoformat(),
                    "end": (start + timedelta(hours=1)).isoformat(),
                    "rrule": "FREQ=WEEKLY",
                },
            )
            assert series.status_code == 422 and "recurring" in series.json()["detail"]

            # A colleague the private calendar is not shared with sees busy blocks only.
            busy = (await client.get("/v1/events?viewer=cleo")).json()["data"]
            assert {b["summary"] for b in busy} == {"Busy"}
            assert all("attendees" not in b and b["private"] for b in busy)
            one = (await client.get(f"/v1/events/{outside['id']}?viewer=cleo")).json()
            assert one["summary"] == "Busy" and "description" not in one
