"""``/calendar``: the tenant's appointments in the sync window, as the signed-in member may see.

A public calendar's events show their title, place and attendees to every colleague; a
private calendar's show its owner and the colleagues it is shared with everything, and
everyone else a busy block (when, whose, "Busy"): the rule is ``store.calendars``', the same
the API applies, so the page never shows more than ``GET /v1/events?viewer=`` does.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailledger.store import calendars, directory
from mailledger.store.directory import DirectoryError
from mailledger.store.models import Staff, Tenant, utcnow
from mailledger.web.pages.identity import current
from mailledger.web.pages.site import pages_of


def _row(event: dict[str, Any]) -> dict[str, Any]:
    """What a row shows: busy blocks carry when and whose only."""
    return {
        "when": event["start"][:16].replace("T", " "),
        "until": event["end"][:16].replace("T", " "),
        "staff": event["staff"] or "",
        "summary": event["summary"] or "(no title)",
        "busy": bool(event["private"]),
        "with": ", ".join(event.get("attendees", [])[:3]),
        "origin": event.get("origin", ""),
        "conflict": event.get("conflict", ""),
    }


async def calendar_page(request: Request) -> Response:
    """Appointments from the window's start, soonest first; ``?staff=USER`` narrows them."""
    pages = pages_of(request)
    identity = await current(request)
    if identity is None:
        return pages.redirect("/signin")
    days = pages.settings.calendar
    chosen = request.query_params.get("staff", "")

    def view(session: Session) -> dict[str, Any] | None:
        tenant = session.get_one(Tenant, identity.tenant_id)
        viewer = session.get_one(Staff, identity.staff_id)
        staff = None
        if chosen:
            try:
                staff = directory.find_staff(session, tenant, chosen)
            except DirectoryError:
                return None
        now = utcnow()
        events = calendars.list_events(
            session,
            tenant,
            viewer=viewer,
            staff=staff,
            start=now - timedelta(days=days.days_back),
            end=now + timedelta(days=days.days_ahead),
        )
        return {"rows": [_row(e) for e in events], "chosen": chosen}

    found = await pages.read(view)
    if found is None:
        return pages.not_found()
    return pages.page(
        "calendar.html",
        signed_in=True,
        admin=identity.admin,
        csrf_token=identity.csrf_token,
        **found,
    )


ROUTES = [Route("/calendar", calendar_page, methods=["GET"])]
