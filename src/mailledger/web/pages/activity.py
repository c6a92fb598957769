"""One activity's page: its text, attachments, what it is about, and how it was authenticated.

Who may open it follows ``store.timelines.visible`` (a staff member: the activities they
brought in or took part in; an admin: the tenant); anything else is a 404. The message's HTML
is never part of this page: it is served at ``/activities/ID/html``, sanitized again (nh3)
and under a policy of its own that allows no script, no remote content and no form, and the
page shows it in an ``<iframe sandbox="">``. Attachments are served as downloads, never shown
inline, with ``nosniff`` so a browser cannot be talked into running one.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from mailledger.mail.content import sanitize_html
from mailledger.store.feed import attachment
from mailledger.store.models import Activity, ActivitySource, ReceivedMessage, Staff
from mailledger.store.queries import NotFoundError, activity_dicts
from mailledger.store.timelines import visible
from mailledger.store.websessions import WebIdentity
from mailledger.verify.explain import Arrival, verdict_sentence
from mailledger.web.api.activities import attachment_response
from mailledger.web.pages.identity import current
from mailledger.web.pages.site import pages_of, secure

# The message's own HTML: inline styles and embedded (data:) images, nothing else. No script,
# no remote image (a tracking pixel would tell the sender the mail was read), no form, no
# font; ``sandbox`` gives it an opaque origin even when opened outside the frame.
MESSAGE_HTML_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "form-action 'none'; base-uri 'none'; frame-ancestors 'self'; sandbox"
)


def _viewer(identity: WebIdentity) -> int | None:
    return None if identity.admin else identity.staff_id


def visible_activity(session: Session, identity: WebIdentity, activity_id: int) -> Activity | None:
    """The activity if this session may see it (its tenant; its staff member unless admin)."""
    query = select(Activity).where(
        *visible(identity.tenant_id, _viewer(identity)), Activity.id == activity_id
    )
    found: Activity | None = session.scalars(
        query.options(selectinload(Activity.participants))
    ).one_or_none()
    return found


def arrivals(session: Session, activity_id: int) -> list[Arrival]:
    """Every path the activity's email came by, with the verdicts stored for that copy."""
    rows = session.execute(
        select(
            ActivitySource.kind,
            Staff.name,
            Staff.username,
            ReceivedMessage.mail_from,
            ReceivedMessage.auth,
        )
        .join(ReceivedMessage, ReceivedMessage.id == ActivitySource.message_id)
        .outerjoin(Staff, Staff.id == ActivitySource.staff_id)
        .where(ActivitySource.activity_id == activity_id)
        .order_by(ActivitySource.id)
    )
    return [
        Arrival(
            kind=kind.value,
            staff=(name or username or "").split(" ")[0],
            mail_from=mail_from or "",
            auth=auth or {},
        )
        for kind, name, username, mail_from, auth in rows
    ]


def activity_view(
    session: Session, identity: WebIdentity, activity_id: int
) -> dict[str, Any] | None:
    """Everything the activity page shows, or None when the session may not see it."""
    row = visible_activity(session, identity, activity_id)
    if row is None:
        return None
    data = activity_dicts(session, [row])[0]
    owner = session.get(Staff, row.staff_id) if row.staff_id is not None else None
    return {
        "id": row.id,
        "subject": row.subject or "(no subject)",
        "direction": str(row.direction),
        "when": row.occurred_at,
        "private": row.private,
        "owner": (owner.name or owner.username) if owner is not None else "",
        "participants": [
            {
                "role": p.role,
                "address": p.address,
                "name": p.name,
                "kind": str(p.kind),
                "contact_id": p.contact_id,
                "company_id": p.company_id,
            }
            for p in row.participants
        ],
        "text": row.text_body,
        "has_html": bool(row.html_body.strip()),
        "attachments": [a for a in data["attachments"] if not a["inline"]],
        "regarding": data["regarding"],
        "verdicts": verdict_sentence(row.auth or {}, arrivals(session, row.id)),
    }


def _activity_id(request: Request) -> int | None:
    text = str(request.path_params["activity_id"])
    return int(text) if text.isdigit() and len(text) < 19 else None


async def activity(request: Request) -> Response:
    """One activity the session may see; anyone else's is a 404."""
    pages = pages_of(request)
    identity = await current(request)
    if identity is None:
        return pages.redirect("/signin")
    activity_id = _activity_id(request)
    if activity_id is None:
        return pages.not_found()

    def view(session: Session) -> dict[str, Any] | None:
        return activity_view(session, identity, activity_id)

    found = await pages.read(view)
    if found is None:
        return pages.not_found()
    return pages.page(
        "activity.html",
        signed_in=True,
        admin=identity.admin,
        csrf_token=identity.csrf_token,
        activity=found,
    )


async def message_html(request: Request) -> Response:
    """The message's HTML, sanitized, for the page's sandboxed frame."""
    pages = pages_of(request)
    identity = await current(request)
    activity_id = _activity_id(request)
    if identity is None or activity_id is None:
        return pages.not_found()

    def html(session: Session) -> str | None:
        row = visible_activity(session, identity, activity_id)
        return row.html_body if row is not None else None

    found = await pages.read(html)
    if found is None:
        return pages.not_found()
    # Stored HTML was sanitized when it was recorded; cleaning it again here keeps rows
    # recorded by older versions, or written by other means, to the same rule, and drops
    # remote images, which the frame's policy would refuse to load anyway.
    clean = await run_in_threadpool(partial(sanitize_html, remote_images=False), found)
    response = secure(HTMLResponse(clean))
    response.headers["Content-Security-Policy"] = MESSAGE_HTML_POLICY
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


async def download(request: Request) -> Response:
    """One attachment, as a download (the API's ``/attachments/N``, for a signed-in browser)."""
    pages = pages_of(request)
    identity = await current(request)
    activity_id = _activity_id(request)
    n_text = str(request.path_params["n"])
    if identity is None or activity_id is None or not n_text.isdigit() or len(n_text) > 6:
        return pages.not_found()
    n = int(n_text)

    def find(session: Session) -> tuple[str, str, str] | None:
        if visible_activity(session, identity, activity_id) is None:
            return None
        try:
            found = attachment(session, identity.tenant_id, activity_id, n)
        except NotFoundError:
            return None
        return found.blob, found.content_type, found.filename

    found = await pages.read(find)
    if found is None:
        return pages.not_found()
    blob, content_type, filename = found
    data = await run_in_threadpool(pages.blobs.get, blob)
    response = attachment_response(data, content_type, filename, n)
    # The page headers (a strict policy, no-store) but the download's own type and name.
    return secure(response)


ROUTES = [
    Route("/activities/{activity_id}", activity, methods=["GET"]),
    Route("/activities/{activity_id}/html", message_html, methods=["GET"]),
    Route("/activities/{activity_id}/attachments/{n}", download, methods=["GET"]),
]
