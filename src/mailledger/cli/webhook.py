"""``mailledger webhook …``: a tenant's webhook endpoints, their deliveries, and replay.

``add`` prints the signing secret once (only the server keeps it, to sign with); ``rotate``
prints a new one while the old one keeps signing for a day. Deliveries are listed with every
attempt: when, the answer's status, how long it took, and the answer's first kilobyte.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import (
    EXIT_OK,
    CommandError,
    command,
    emit,
    group,
    json_flag,
    limit_flag,
    out,
    secret_box,
    session_scope,
)

if TYPE_CHECKING:
    from mailledger.config import Settings

# The values of ``mailledger.store.webhooks.EVENT_TYPES``, copied so that building the parser
# needs no SQLAlchemy (tests/integration/test_webhooks_cli.py keeps the two equal).
EVENT_TYPES = (
    "activity.created",
    "activity.updated",
    "message.quarantined",
    "account.status_changed",
)
ENDPOINT_COLUMNS = ["id", "tenant", "url", "events", "state", "pending", "failed", "state_reason"]
ATTEMPT_COLUMNS = ["delivery", "type", "state", "attempt", "at", "status", "latency_ms", "answer"]


def _check_target(settings: Settings, url: str) -> str:
    """The URL checked as every way of adding an endpoint checks it, or a CommandError."""
    from mailledger.dnsauth.resolver import Resolver
    from mailledger.web.webhooktargets import TargetRefusedError, endpoint_url

    try:
        return asyncio.run(
            endpoint_url(
                Resolver(settings.dns), url, allow_private=settings.webhooks.allow_private_targets
            )
        )
    except TargetRefusedError as exc:
        raise CommandError(f"{url}: {exc}") from exc


def cmd_webhook_add(args: argparse.Namespace, settings: Settings) -> int:
    """Register an endpoint; print its id and, once, its signing secret."""
    from mailledger.store import directory, webhooks

    try:
        events = webhooks.check_events(args.event or [])
    except webhooks.WebhookError as exc:
        raise CommandError(str(exc)) from exc
    url = _check_target(settings, args.url)
    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        endpoint, secret = webhooks.add_endpoint(
            session, tenant, url, events, box=secret_box(settings)
        )
        ident = endpoint.id
    out(f"webhook endpoint {ident}: {url} ({', '.join(events) or 'every event'})")
    out(f"signing secret (shown once, keep it): {secret}")
    return EXIT_OK


def cmd_webhook_list(args: argparse.Namespace, settings: Settings) -> int:
    """List endpoints with their state (active, failing, disabled) and waiting deliveries."""
    from mailledger.store import directory, webhooks

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        rows = webhooks.endpoints(session, tenant)
    emit(rows, ENDPOINT_COLUMNS, as_json=args.json, empty="no webhook endpoints")
    return EXIT_OK


def cmd_webhook_remove(args: argparse.Namespace, settings: Settings) -> int:
    """Delete an endpoint, its deliveries and their attempts."""
    from mailledger.store import webhooks

    with session_scope(settings) as session:
        endpoint = webhooks.find_endpoint(session, args.id)
        url = endpoint.url
        count = webhooks.remove_endpoint(session, endpoint)
    out(f"removed webhook endpoint {args.id} ({url}) and {count} deliveries")
    return EXIT_OK


def cmd_webhook_rotate(args: argparse.Namespace, settings: Settings) -> int:
    """Give an endpoint a new secret; the old one keeps signing for --overlap-hours."""
    from datetime import timedelta

    from mailledger.store import webhooks

    box = secret_box(settings)
    with session_scope(settings) as session:
        endpoint = webhooks.find_endpoint(session, args.id)
        secret = webhooks.rotate_secret(
            session, endpoint, box=box, overlap=timedelta(hours=args.overlap_hours)
        )
        until = endpoint.previous_secret_expires_at
    out(f"new signing secret (shown once, keep it): {secret}")
    if until is not None and args.overlap_hours > 0:
        out(f"the old secret signs too until {until.isoformat(timespec='seconds')}")
    return EXIT_OK


def cmd_webhook_enable(args: argparse.Namespace, settings: Settings) -> int:
    """Deliver to a disabled (410 Gone) or failing endpoint again."""
    from mailledger.store import webhooks

    with session_scope(settings) as session:
        changed = webhooks.enable_endpoint(session, webhooks.find_endpoint(session, args.id))
    out(f"webhook endpoint {args.id} {'enabled' if changed else 'was already active'}")
    return EXIT_OK


def _attempt_rows(deliveries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One table row per attempt; a delivery not attempted yet gets one row of its own."""
    rows = []
    for delivery in deliveries:
        base = {"delivery": delivery["id"], "type": delivery["type"], "state": delivery["state"]}
        if not delivery["attempts"]:
            rows.append({**base, "at": delivery["next_attempt_at"]})
        for attempt in delivery["attempts"]:
            rows.append(
                {
                    **base,
                    "attempt": attempt["attempt"],
                    "at": attempt["at"],
                    "status": attempt["status"],
                    "latency_ms": attempt["latency_ms"],
                    "answer": (attempt["response"] or attempt["error"])[:80],
                }
            )
    return rows


def cmd_webhook_deliveries(args: argparse.Namespace, settings: Settings) -> int:
    """An endpoint's deliveries, newest first, with every attempt."""
    from mailledger.store import webhooks

    with session_scope(settings) as session:
        endpoint = webhooks.find_endpoint(session, args.id)
        rows = webhooks.deliveries(session, endpoint, limit=args.limit)
    if args.json:
        emit(rows, [], as_json=True, empty="")
    else:
        emit(_attempt_rows(rows), ATTEMPT_COLUMNS, as_json=False, empty="no deliveries yet")
    return EXIT_OK


def cmd_webhook_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Send a delivery's event to its endpoint again (same webhook-id), due now."""
    from mailledger.store import webhooks

    with session_scope(settings) as session:
        try:
            again = webhooks.replay(session, args.delivery)
        except webhooks.WebhookError as exc:
            raise CommandError(str(exc)) from exc
        ident, same = again.id, str(again.id) == str(args.delivery).strip()
    if same:
        out(f"delivery {ident} was still waiting: due now")
    else:
        out(f"replaying delivery {args.delivery} as delivery {ident}, due now")
    return EXIT_OK


def _hours(value: str) -> float:
    try:
        hours = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("must be a number of hours") from exc
    if not 0 <= hours <= 24 * 30:
        raise argparse.ArgumentTypeError("must be between 0 and 720 hours")
    return hours


def register(commands: Any) -> None:
    """Add the ``webhook`` command group to the CLI."""
    hooks = group(commands, "webhook", "signed webhook deliveries to a tenant's CRM")
    sub = command(hooks, "add", cmd_webhook_add, "register an endpoint; prints its secret once")
    sub.add_argument("tenant", metavar="TENANT")
    sub.add_argument("url", metavar="URL")
    sub.add_argument(
        "--event",
        action="append",
        choices=EVENT_TYPES,
        metavar="E",
        help=f"an event type to send ({', '.join(EVENT_TYPES)}); repeat it; default: all",
    )
    sub = json_flag(command(hooks, "list", cmd_webhook_list, "a tenant's endpoints"))
    sub.add_argument("tenant", metavar="TENANT")
    sub = command(hooks, "remove", cmd_webhook_remove, "delete an endpoint and its deliveries")
    sub.add_argument("id", metavar="ID")
    sub = command(hooks, "rotate", cmd_webhook_rotate, "a new signing secret, printed once")
    sub.add_argument("id", metavar="ID")
    sub.add_argument(
        "--overlap-hours",
        type=_hours,
        default=24.0,
        metavar="H",
        help="how long the old secret keeps signing beside the new one (default 24)",
    )
    sub = command(hooks, "enable", cmd_webhook_enable, "deliver to a disabled endpoint again")
    sub.add_argument("id", metavar="ID")
    sub = command(hooks, "deliveries", cmd_webhook_deliveries, "deliveries and every attempt")
    sub.add_argument("id", metavar="ID", help="an endpoint id")
    limit_flag(json_flag(sub))
    sub = command(hooks, "replay", cmd_webhook_replay, "send a delivery's event again")
    sub.add_argument("delivery", metavar="DELIVERY", help="a delivery id")
