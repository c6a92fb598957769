"""``/admin/webhooks``: the tenant's endpoints, adding and removing one, secrets, and replay.

The same functions as ``mailledger webhook …`` (``store.webhooks``; the URL test is
``web.webhooktargets.endpoint_url``), scoped by the session's tenant: another tenant's
endpoint or delivery id is a 404. A signing secret is shown once, in the answer to the POST
that made it, never in a URL, and the page is not cached (``Cache-Control: no-store``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailledger.config import Settings
from mailledger.store import queries, webhooks
from mailledger.store.models import Tenant, WebhookEndpoint
from mailledger.store.secretbox import SecretBox, SecretError
from mailledger.store.websessions import WebIdentity
from mailledger.web.pages.admin.forms import Missing, Refusal, page, path_id, posted, refused
from mailledger.web.pages.admin.guard import admin_only
from mailledger.web.pages.admin.times import when
from mailledger.web.pages.site import pages_of
from mailledger.web.webhooktargets import TargetRefusedError, endpoint_url

_T = TypeVar("_T")

DONE = {
    "removed": "Endpoint removed, with its deliveries.",
    "enabled": "Endpoint enabled: events are delivered to it again.",
    "replayed": "Replay queued, due now: it shows below once sent, with the same webhook-id.",
}
ANSWER_SHOWN = 200  # characters of an answer's body on the log page (1 KiB is kept)
DELIVERIES_SHOWN = 50


def _box(settings: Settings) -> SecretBox:
    """What seals a new signing secret (``[secrets] key_file``); Refusal when it cannot."""
    try:
        return SecretBox.from_file(settings.secrets.key_file)
    except SecretError as exc:
        raise Refusal(f"the signing secret cannot be kept: {exc}") from exc


def _endpoint_rows(session: Session, tenant_id: int) -> list[dict[str, Any]]:
    rows = webhooks.endpoints(session, session.get_one(Tenant, tenant_id))
    for row in rows:
        row["state_changed_at"] = when(row["state_changed_at"])
        row["rotating_until"] = when(row["rotating_until"])
    return rows


async def _list_page(
    request: Request,
    identity: WebIdentity,
    *,
    status: int = 200,
    error: str = "",
    url: str = "",
    chosen: list[str] | None = None,
) -> Response:
    def read(session: Session) -> list[dict[str, Any]]:
        return _endpoint_rows(session, identity.tenant_id)

    rows = await pages_of(request).read(read)
    done = DONE.get(request.query_params.get("done", ""), "")
    return page(
        request, identity, "admin/webhooks.html", status=status, endpoints=rows, error=error,
        done=done, url=url, chosen=chosen or [], event_types=webhooks.EVENT_TYPES,
    )  # fmt: skip


@admin_only
async def webhooks_page(request: Request, identity: WebIdentity) -> Response:
    """Every endpoint of the tenant with its state, and the form to add one."""
    return await _list_page(request, identity)


@admin_only
async def webhook_add(request: Request, identity: WebIdentity) -> Response:
    """Register an endpoint (``webhook add``); the answer shows its secret, once."""
    pages = pages_of(request)
    form = await posted(request, identity)
    if form is None:
        return refused(request)
    url = form.get("url")
    chosen = form.every("event")
    try:
        events = webhooks.check_events(chosen)
        checked = await endpoint_url(
            pages.resolver, url, allow_private=pages.settings.webhooks.allow_private_targets
        )
    except (webhooks.WebhookError, TargetRefusedError) as exc:
        return await _list_page(
            request, identity, status=422, error=str(exc), url=url, chosen=chosen
        )

    def add(session: Session) -> tuple[int, str]:
        tenant = session.get_one(Tenant, identity.tenant_id)
        box = _box(pages.settings)
        endpoint, secret = webhooks.add_endpoint(session, tenant, checked, events, box=box)
        return endpoint.id, secret

    try:
        endpoint_id, secret = await pages.write(add)
    except Refusal as exc:
        return await _list_page(
            request, identity, status=503, error=str(exc), url=url, chosen=chosen
        )
    return page(
        request, identity, "admin/webhook_secret.html", status=201, endpoint_id=endpoint_id,
        url=checked, events=events, secret=secret, rotated=False,
    )  # fmt: skip


def _log(session: Session, tenant_id: int, endpoint_id: int) -> dict[str, Any]:
    """One endpoint of the tenant with its latest deliveries; Missing for any other id."""
    tenant = session.get_one(Tenant, tenant_id)
    endpoint = _endpoint(session, tenant, endpoint_id)
    (summary,) = [e for e in webhooks.endpoints(session, tenant) if e["id"] == endpoint.id]
    summary["state_changed_at"] = when(summary["state_changed_at"])
    summary["rotating_until"] = when(summary["rotating_until"])
    found = webhooks.deliveries(session, endpoint, limit=DELIVERIES_SHOWN)
    for delivery in found:
        delivery["created_at"] = when(delivery["created_at"])
        delivery["next_attempt_at"] = when(delivery["next_attempt_at"])
        for attempt in delivery["attempts"]:
            attempt["at"] = when(attempt["at"])
            answer = " ".join((attempt["response"] or "").split())
            attempt["answer"] = answer[:ANSWER_SHOWN] + ("…" if len(answer) > ANSWER_SHOWN else "")
    return {"endpoint": summary, "deliveries": found}


def _endpoint(session: Session, tenant: Tenant, endpoint_id: int) -> WebhookEndpoint:
    """The tenant's endpoint, or Missing: another tenant's id is not found (DESIGN §11)."""
    try:
        return webhooks.find_endpoint(session, endpoint_id, tenant)
    except queries.NotFoundError as exc:
        raise Missing from exc


async def _log_page(
    request: Request, identity: WebIdentity, endpoint_id: int | None, *, status: int = 200,
    error: str = "", done: str = "",
) -> Response:  # fmt: skip
    pages = pages_of(request)
    if endpoint_id is None:
        return pages.not_found()

    def read(session: Session) -> dict[str, Any]:
        return _log(session, identity.tenant_id, endpoint_id)

    try:
        found = await pages.read(read)
    except Missing:
        return pages.not_found()
    return page(
        request, identity, "admin/webhook.html", status=status, error=error, done=done,
        shown=DELIVERIES_SHOWN, **found,
    )  # fmt: skip


@admin_only
async def webhook_page(request: Request, identity: WebIdentity) -> Response:
    """One endpoint: its state, its actions, and its delivery log with every attempt."""
    done = DONE.get(request.query_params.get("done", ""), "")
    return await _log_page(request, identity, path_id(request, "endpoint_id"), done=done)


async def _change(
    request: Request, identity: WebIdentity, change: Callable[[Session, WebhookEndpoint], _T]
) -> _T | Response:
    """Run ``change`` on the tenant's endpoint named in the path, for a form with its token.

    Returns what ``change`` returned, or the page to answer instead (a 404, the 403).
    """
    pages = pages_of(request)
    endpoint_id = path_id(request, "endpoint_id")
    if endpoint_id is None:
        return pages.not_found()
    if await posted(request, identity) is None:
        return refused(request)

    def run(session: Session) -> _T:
        tenant = session.get_one(Tenant, identity.tenant_id)
        return change(session, _endpoint(session, tenant, endpoint_id))

    try:
        return await pages.write(run)
    except Missing:
        return pages.not_found()


@admin_only
async def webhook_remove(request: Request, identity: WebIdentity) -> Response:
    """Delete the endpoint with its deliveries (``webhook remove``)."""
    done = await _change(request, identity, webhooks.remove_endpoint)
    if isinstance(done, Response):
        return done
    return pages_of(request).redirect("/admin/webhooks?done=removed")


@admin_only
async def webhook_rotate(request: Request, identity: WebIdentity) -> Response:
    """A new signing secret (``webhook rotate``), shown once; the old one signs for a day."""

    def rotate(session: Session, endpoint: WebhookEndpoint) -> dict[str, Any]:
        secret = webhooks.rotate_secret(session, endpoint, box=_box(pages_of(request).settings))
        return {"endpoint_id": endpoint.id, "url": endpoint.url, "events": list(endpoint.events),
                "secret": secret, "until": when(endpoint.previous_secret_expires_at)}  # fmt: skip

    try:
        done = await _change(request, identity, rotate)
    except Refusal as exc:
        endpoint_id = path_id(request, "endpoint_id")
        return await _log_page(request, identity, endpoint_id, status=503, error=str(exc))
    if isinstance(done, Response):
        return done
    return page(request, identity, "admin/webhook_secret.html", rotated=True, **done)


@admin_only
async def webhook_enable(request: Request, identity: WebIdentity) -> Response:
    """Deliver to a disabled or failing endpoint again (``webhook enable``)."""
    done = await _change(request, identity, webhooks.enable_endpoint)
    if isinstance(done, Response):
        return done
    endpoint_id = path_id(request, "endpoint_id")
    return pages_of(request).redirect(f"/admin/webhooks/{endpoint_id}?done=enabled")


@admin_only
async def webhook_replay(request: Request, identity: WebIdentity) -> Response:
    """Send a delivery's event again, same ``webhook-id`` (``webhook replay``)."""
    pages = pages_of(request)
    endpoint_id = path_id(request, "endpoint_id")
    delivery_id = path_id(request, "delivery_id")
    if endpoint_id is None or delivery_id is None:
        return pages.not_found()
    if await posted(request, identity) is None:
        return refused(request)

    def replay(session: Session) -> None:
        tenant = session.get_one(Tenant, identity.tenant_id)
        try:
            again = webhooks.replay(session, delivery_id, tenant=tenant)
        except queries.NotFoundError as exc:
            raise Missing from exc
        except webhooks.WebhookError as exc:
            raise Refusal(str(exc)) from exc
        if again.endpoint_id != endpoint_id:
            raise Missing  # in the transaction: the replay it made is rolled back

    try:
        await pages.write(replay)
    except Missing:
        return pages.not_found()
    except Refusal as exc:
        return await _log_page(request, identity, endpoint_id, status=409, error=str(exc))
    return pages.redirect(f"/admin/webhooks/{endpoint_id}?done=replayed")


ROUTES = [
    Route("/admin/webhooks", webhooks_page, methods=["GET"]),
    Route("/admin/webhooks", webhook_add, methods=["POST"]),
    Route("/admin/webhooks/{endpoint_id:int}", webhook_page, methods=["GET"]),
    Route("/admin/webhooks/{endpoint_id:int}/remove", webhook_remove, methods=["POST"]),
    Route("/admin/webhooks/{endpoint_id:int}/rotate", webhook_rotate, methods=["POST"]),
    Route("/admin/webhooks/{endpoint_id:int}/enable", webhook_enable, methods=["POST"]),
    Route(
        "/admin/webhooks/{endpoint_id:int}/deliveries/{delivery_id:int}/replay",
        webhook_replay,
        methods=["POST"],
    ),
]
