"""``/admin/quarantine``: mail a rule held back, the reason in words, its trace and raw bytes;
release or delete one message or many.

Release and delete are ``store.quarantine.release`` and ``delete``, the functions behind
``mailledger quarantine release|delete`` and ``/v1/quarantine/{id}``: a released message goes
back to the processing worker, which records it as an activity if the rules now allow it.
The raw message is only ever a ``text/plain`` download: mail is never rendered as a page.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from mailledger.store import quarantine, queries
from mailledger.store.blobbackend import READ_BYTES, BlobBackend, is_digest
from mailledger.store.models import MessageState, ReceivedMessage
from mailledger.store.queries import NotFoundError
from mailledger.store.websessions import WebIdentity
from mailledger.web.pages.admin import forms
from mailledger.web.pages.admin.guard import admin_only
from mailledger.web.pages.admin.times import when
from mailledger.web.pages.site import pages_of, secure

QUARANTINED = MessageState.QUARANTINED
SHOWN = 100  # rows per page; the oldest wait until the newest are dealt with
ACTIONS = ("release", "delete")


def _tenant_reason(record: dict[str, Any]) -> str:
    """The reasons of this tenant's routes only (a message may be routed to others too)."""
    outcomes = [r["outcome"] for r in record["routes"] if r["outcome"]]
    return "; ".join(dict.fromkeys(outcomes)) or record["reason"]


def _row(record: dict[str, Any]) -> dict[str, Any]:
    reason = _tenant_reason(record)
    return {
        "id": record["id"],
        "queue_id": record["queue_id"],
        "sender": record["mail_from"] or "(null sender)",
        "recipients": [r["rcpt"] for r in record["routes"]],
        "received_at": when(record["received_at"]),
        "reason": reason,
        "words": quarantine.reason_in_words(reason),
        "message_id": record["message_id"],
    }


def _count(request: Request, name: str) -> int:
    value = request.query_params.get(name, "")
    return int(value) if value.isdigit() and len(value) < 7 else 0


async def _list_page(
    request: Request, identity: WebIdentity, *, status: int = 200, error: str = ""
) -> Response:
    def read(session: Session) -> dict[str, Any]:
        rows = queries.iter_messages(
            session, QUARANTINED, limit=SHOWN, tenant_id=identity.tenant_id
        )
        total = queries.count_messages(session, QUARANTINED, tenant_id=identity.tenant_id)
        return {"messages": [_row(r) for r in rows], "total": total}

    values = await pages_of(request).read(read)
    done = {name: _count(request, name) for name in ("released", "deleted", "skipped")}
    return forms.page(
        request, identity, "admin/quarantine.html", status=status, error=error, done="",
        counts=done, shown=SHOWN, **values,
    )  # fmt: skip


@admin_only
async def list_quarantine(request: Request, identity: WebIdentity) -> Response:
    """The tenant's quarantined mail, newest first, with a checkbox each for bulk actions."""
    return await _list_page(request, identity)


def _theirs(session: Session, identity: WebIdentity, message_id: int) -> ReceivedMessage:
    """The message with this row id, routed to the session's tenant; else Missing."""
    try:
        found = queries.get_message(session, message_id, tenant_id=identity.tenant_id)
    except NotFoundError as exc:
        raise forms.Missing from exc
    if found.id != message_id:  # matched by another name (a numeric Message-ID): not this row
        raise forms.Missing
    return found


def _act(
    session: Session,
    blobs: BlobBackend,
    identity: WebIdentity,
    ids: list[int],
    action: str,
    *,
    force: bool = False,
) -> tuple[int, int]:
    """Release or delete each message; (done, skipped: no longer quarantined).

    Every id is checked first, so an id of another tenant changes nothing at all (delete
    removes files as it goes, which a rollback would not bring back).
    """
    messages = [_theirs(session, identity, message_id) for message_id in dict.fromkeys(ids)]
    done = skipped = 0
    for message in messages:
        if message.state is not QUARANTINED:
            skipped += 1
            continue
        if action == "release":
            quarantine.release(session, message.id, force=force, tenant_id=identity.tenant_id)
        else:
            quarantine.delete(session, blobs, message.id, tenant_id=identity.tenant_id)
        done += 1
    return done, skipped


def _selected(values: list[str]) -> list[int] | None:
    """The ticked row ids, or None when one is not a row id (a forged form)."""
    ids = []
    for value in values:
        if not value.isdigit() or not 0 < int(value) <= forms.MAX_ID:
            return None
        ids.append(int(value))
    return ids


@admin_only
async def bulk(request: Request, identity: WebIdentity) -> Response:
    """Release or delete every ticked message, in one transaction."""
    form = await forms.posted(request, identity)
    if form is None:
        return forms.refused(request)
    action = form.get("action")
    ids = _selected(form.every("id"))
    if action not in ACTIONS or ids is None:
        return await _list_page(
            request, identity, status=400, error="Choose Release or Delete for the ticked mail."
        )
    if not ids:
        return await _list_page(
            request, identity, status=400, error="Tick the messages to release or delete first."
        )

    return await _act_and_report(request, identity, ids, action)


async def _quarantined(request: Request, identity: WebIdentity) -> dict[str, Any] | None:
    """The message in the path, in full, if it is the tenant's and still quarantined."""
    message_id = forms.path_id(request, "message_id")
    if message_id is None:
        return None

    def read(session: Session) -> dict[str, Any] | None:
        try:
            message = _theirs(session, identity, message_id)
        except forms.Missing:
            return None
        if message.state is not QUARANTINED:
            return None
        return queries.message(session, message.id, tenant_id=identity.tenant_id)

    return await pages_of(request).read(read)


@admin_only
async def show(request: Request, identity: WebIdentity) -> Response:
    """One quarantined message: the reason in words, the trace, and what can be done."""
    record = await _quarantined(request, identity)
    if record is None:
        return pages_of(request).not_found()
    trace = [t | {"time": (t["time"] or "")[:19].replace("T", " ")} for t in record["trace"]]
    return forms.page(
        request, identity, "admin/quarantine_one.html", message=_row(record), trace=trace,
        size=record["size"], peer=record["peer"], helo=record["helo"],
    )  # fmt: skip


@admin_only
async def raw(request: Request, identity: WebIdentity) -> Response:
    """The message as received, as a ``text/plain`` download: never rendered as HTML."""
    pages = pages_of(request)
    record = await _quarantined(request, identity)
    if record is None:
        return pages.not_found()
    digest = record["blob"]
    if not is_digest(digest) or not await run_in_threadpool(pages.blobs.exists, digest):
        return pages.not_found()
    # Streamed in pieces from whichever backend holds it: a 25 MB message is never whole here.
    response = StreamingResponse(
        _pieces(pages.blobs, digest),
        media_type="text/plain",
        headers={"Content-Disposition": f'attachment; filename="{record["queue_id"]}.eml.txt"'},
    )
    return secure(response)


def _pieces(blobs: BlobBackend, digest: str) -> Iterator[bytes]:
    """The blob read piece by piece (Starlette runs a plain iterator in its thread pool)."""
    with blobs.open(digest) as stream:
        while piece := stream.read(READ_BYTES):
            yield piece


async def _one(request: Request, identity: WebIdentity, action: str) -> Response:
    found = await forms.posted_row(request, identity, "message_id")
    if isinstance(found, Response):
        return found
    message_id, form = found
    force = action == "release" and form.get("force") == "yes"
    return await _act_and_report(request, identity, [message_id], action, force=force)


async def _act_and_report(
    request: Request, identity: WebIdentity, ids: list[int], action: str, *, force: bool = False
) -> Response:
    """Run :func:`_act` in one transaction and redirect to the list saying how many."""
    pages = pages_of(request)

    def run(session: Session) -> tuple[int, int]:
        return _act(session, pages.blobs, identity, ids, action, force=force)

    try:
        done, skipped = await pages.write(run)
    except forms.Missing:
        return pages.not_found()
    past = "released" if action == "release" else "deleted"
    return pages.redirect(f"/admin/quarantine?{past}={done}&skipped={skipped}")


@admin_only
async def release_one(request: Request, identity: WebIdentity) -> Response:
    """Send one message back to processing (``quarantine release [--force]``)."""
    return await _one(request, identity, "release")


@admin_only
async def delete_one(request: Request, identity: WebIdentity) -> Response:
    """Delete one message for good (``quarantine delete``)."""
    return await _one(request, identity, "delete")


ROUTES = [
    Route("/admin/quarantine", list_quarantine, methods=["GET"]),
    Route("/admin/quarantine", bulk, methods=["POST"]),
    Route("/admin/quarantine/{message_id:int}", show, methods=["GET"]),
    Route("/admin/quarantine/{message_id:int}/raw", raw, methods=["GET"]),
    Route("/admin/quarantine/{message_id:int}/release", release_one, methods=["POST"]),
    Route("/admin/quarantine/{message_id:int}/delete", delete_one, methods=["POST"]),
]
