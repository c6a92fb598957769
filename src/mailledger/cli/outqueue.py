"""``mailledger queue …``: the operator's view of the outbound queue, and its two actions.

``ID`` is a row id (one recipient domain of a message) or a queue id (every row of the
message), as ``queue list`` shows them.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import (
    EXIT_OK,
    EXIT_REFUSED,
    CommandError,
    command,
    emit,
    group,
    json_flag,
    limit_flag,
    out,
    session_scope,
    sessions_scope,
    show,
)

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy.orm import Session

    from mailledger.config import Settings
    from mailledger.store.models import OutboundMessage

QUEUE_COLUMNS = [
    "id",
    "queue_id",
    "kind",
    "state",
    "mail_from",
    "domain",
    "rcpt_to",
    "attempts",
    "next_try",
    "last_error",
]
RESULT_COLUMNS = ["rcpt", "status", "reply", "at", "attempt"]

# The values of ``mailledger.store.models.OutboundState`` for ``--state``, copied so that
# building the parser needs no SQLAlchemy (tests/unit/test_cli_startup.py keeps the two equal).
OUTBOUND_STATES = ("queued", "held", "delivered", "bounced", "expired")


def _time(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def row_record(row: OutboundMessage) -> dict[str, Any]:
    """One queue row as the plain data ``queue list/show --json`` prints."""
    from mailledger.store.models import OutboundState

    queued = row.state is OutboundState.QUEUED
    return {
        "id": row.id,
        "queue_id": row.queue_id,
        "kind": row.kind.value,
        "state": row.state.value,
        "mail_from": row.mail_from or "<>",
        "domain": row.domain,
        "rcpt_to": list(row.rcpt_to),
        "attempts": row.attempts,
        "next_try": _time(row.retry_after) if queued else None,
        "last_error": row.last_error,
        "size": row.size,
        "claimed_by": row.claimed_by,
        "claim_expires_at": _time(row.claim_expires_at),
        "signing": row.signing,
        "tenant_id": row.tenant_id,
        "staff_id": row.staff_id,
        "activity_id": row.activity_id,
        "created_at": _time(row.created_at),
        "finished_at": _time(row.finished_at),
        "results": [
            {
                "rcpt": rcpt,
                "status": (row.results or {}).get(rcpt, {}).get("status", "pending"),
                "code": (row.results or {}).get(rcpt, {}).get("code"),
                "reply": (row.results or {}).get(rcpt, {}).get("reply", ""),
                "at": (row.results or {}).get(rcpt, {}).get("at"),
                "attempt": (row.results or {}).get(rcpt, {}).get("attempt"),
            }
            for rcpt in row.rcpt_to
        ],
    }


def cmd_queue_list(args: argparse.Namespace, settings: Settings) -> int:
    """List outbound rows, newest first."""
    from mailledger.store import outbox
    from mailledger.store.models import OutboundState

    state = OutboundState(args.state) if args.state else None
    with session_scope(settings) as session:
        rows = [row_record(r) for r in outbox.list_rows(session, state, limit=args.limit)]
    if args.json:
        emit(rows, QUEUE_COLUMNS, as_json=True, empty="")
    else:
        emit(
            [{k: v for k, v in r.items() if k != "results"} for r in rows],
            QUEUE_COLUMNS,
            as_json=False,
            empty="the outbound queue is empty",
        )
    return EXIT_OK


def cmd_queue_show(args: argparse.Namespace, settings: Settings) -> int:
    """Show the rows of one message: state, attempts, next try, last error, per-recipient."""
    with session_scope(settings) as session:
        records = [row_record(r) for r in _rows(session, args.id)]
    show(records, {"results": RESULT_COLUMNS}, as_json=args.json)
    return EXIT_OK


def cmd_queue_retry(args: argparse.Namespace, settings: Settings) -> int:
    """Make a queued message due now (the running worker picks it up at its next poll)."""
    from mailledger.store import outbox

    with session_scope(settings) as session:
        try:
            rows = outbox.retry_now(session, args.id)
        except outbox.OutboxError as exc:
            raise CommandError(str(exc)) from exc
        done = ", ".join(f"{r.id} ({r.domain})" for r in rows)
    out(f"due now: {done}")
    return EXIT_OK


def cmd_queue_delete(args: argparse.Namespace, settings: Settings) -> int:
    """Remove a message from the queue for good; its bytes too unless something shares them."""
    from mailledger.store import outbox
    from mailledger.store.blobbackend import open_blob_backend

    with session_scope(settings) as session:
        try:
            rows, removed = outbox.delete(session, open_blob_backend(settings), args.id)
        except outbox.OutboxError as exc:
            raise CommandError(str(exc)) from exc
        done = ", ".join(f"{r.id} ({r.domain}, {r.state.value})" for r in rows)
    blob = "and its bytes" if removed else "(its bytes are still referenced elsewhere)"
    out(f"deleted {done} {blob}")
    return EXIT_OK


def cmd_queue_release(args: argparse.Namespace, settings: Settings) -> int:
    """Sign and send held mail whose DKIM key is now published, or send it unsigned."""
    import asyncio

    from mailledger.dnsauth.resolver import Resolver
    from mailledger.relay.held import release_held
    from mailledger.store import outbox
    from mailledger.store.blobbackend import open_blob_backend

    with sessions_scope(settings) as sessions:
        try:
            results = asyncio.run(
                release_held(
                    sessions,
                    open_blob_backend(settings),
                    Resolver(settings.dns),
                    settings,
                    ident=args.id,
                    unsigned=args.unsigned,
                )
            )
        except outbox.OutboxError as exc:
            raise CommandError(str(exc)) from exc
    if not results:
        out("no held messages")
    for result in results:
        verb = "queued" if result.released else "still held"
        out(f"{result.queue_id}: {verb} ({result.signing})")
    return EXIT_OK if all(r.released for r in results) else EXIT_REFUSED


def _rows(session: Session, ident: str) -> list[OutboundMessage]:
    from mailledger.store import outbox

    try:
        return outbox.find_rows(session, ident)
    except outbox.OutboxError as exc:
        raise CommandError(str(exc)) from exc


def register(commands: Any) -> None:
    """Add the ``queue`` command group to the CLI."""
    queue = group(commands, "queue", "the outbound queue (relayed mail, DSNs)")
    sub = command(queue, "list", cmd_queue_list, "list outbound rows, newest first")
    sub.add_argument("--state", choices=OUTBOUND_STATES)
    limit_flag(json_flag(sub))
    sub = json_flag(command(queue, "show", cmd_queue_show, "one message's rows and results"))
    sub.add_argument("id", metavar="ID", help="a row id or a queue id")
    sub = command(queue, "retry", cmd_queue_retry, "try a queued message again now")
    sub.add_argument("id", metavar="ID", help="a row id or a queue id")
    sub = command(queue, "release", cmd_queue_release, "sign and send held mail")
    sub.add_argument("id", metavar="ID", nargs="?", help="a row id or queue id; default: all")
    sub.add_argument("--unsigned", action="store_true", help="send it without a signature")
    sub = command(queue, "delete", cmd_queue_delete, "remove a message from the queue")
    sub.add_argument("id", metavar="ID", help="a row id or a queue id")
