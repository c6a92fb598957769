"""Contact and company timelines: ``/contacts/ID`` and ``/companies/ID``.

Every activity with the contact (or with any of the company's contacts), newest first, 25
to a page, searchable by subject (``?q=``) and narrowed by direction and by staff member.
Any signed-in staff member of the tenant may open a timeline; the activities on it are the
ones they may open (store.timelines.visible: their own, or the tenant's for an admin), so a
colleague's mail with the contact is not shown to someone who could not open it. An id of
another tenant is a 404, as a missing one is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailledger.store import timelines
from mailledger.store.timelines import TimelineFilters
from mailledger.web.pages.identity import current
from mailledger.web.pages.site import pages_of

Summary = Callable[[Session, int, int], dict[str, Any] | None]
Whose = Callable[[int, int], ColumnElement[bool]]


def _path_id(request: Request, name: str) -> int | None:
    text = str(request.path_params[name])
    return int(text) if text.isdigit() and len(text) < 19 else None


def _rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a timeline row shows of an activity."""
    rows = []
    for item in items:
        outbound = item["direction"] == "outbound"
        to = [p["address"] for p in item["participants"] if p["role"] in ("to", "cc")]
        rows.append(
            {
                "id": item["id"],
                "subject": item["subject"] or "(no subject)",
                "direction": item["direction"],
                "when": item["occurred_at"][:16].replace("T", " "),
                "from": item["from_name"] or item["from"],
                "to": ", ".join(to[:2]) + (" …" if len(to) > 2 else ""),
                "staff": item["staff"] or "",
                "attachments": sum(1 for a in item["attachments"] if not a["inline"]),
                "private": item["private"],
                "arrow": "→" if outbound else "←",
            }
        )
    return rows


async def _timeline(
    request: Request, kind: str, param: str, summary: Summary, whose: Whose
) -> Response:
    pages = pages_of(request)
    identity = await current(request)
    if identity is None:
        return pages.redirect("/signin")
    subject_id = _path_id(request, param)
    if subject_id is None:
        return pages.not_found()
    filters = TimelineFilters.from_params(dict(request.query_params))
    viewer = None if identity.admin else identity.staff_id

    def view(session: Session) -> dict[str, Any] | None:
        heading = summary(session, identity.tenant_id, subject_id)
        if heading is None:
            return None
        items, next_before = timelines.timeline(
            session,
            identity.tenant_id,
            whose(identity.tenant_id, subject_id),
            viewer=viewer,
            filters=filters,
        )
        return {
            "heading": heading,
            "rows": _rows(items),
            "next_before": next_before,
            "staff_choices": timelines.staff_choices(session, identity.tenant_id),
        }

    found = await pages.read(view)
    if found is None:
        return pages.not_found()
    kept = {"q": filters.q, "direction": filters.direction, "staff": filters.staff}
    kept = {k: v for k, v in kept.items() if v}
    older = None
    if found["next_before"] is not None:
        older = "?" + urlencode({**kept, "before": found["next_before"]})
    return pages.page(
        "timeline.html",
        signed_in=True,
        admin=identity.admin,
        csrf_token=identity.csrf_token,
        kind=kind,
        filters=filters,
        filtered=bool(kept),
        older=older,
        newest="?" + urlencode(kept) if filters.before is not None else None,
        sees_all=identity.admin,
        **found,
    )


async def contact_timeline(request: Request) -> Response:
    """A contact's timeline (SharpSpring's "Life of the Lead")."""
    return await _timeline(
        request, "contact", "contact_id", timelines.contact_summary, timelines.of_contact
    )


async def company_timeline(request: Request) -> Response:
    """A company's timeline: every contact of it, in one list."""
    return await _timeline(
        request, "company", "company_id", timelines.company_summary, timelines.of_company
    )


ROUTES = [
    Route("/contacts/{contact_id}", contact_timeline, methods=["GET"]),
    Route("/companies/{company_id}", company_timeline, methods=["GET"]),
]
