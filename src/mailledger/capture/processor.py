"""Processing one stored message: prepare it outside the transaction, then walk its routes.

``prepare`` does the slow part first: reading and parsing the bytes, and deciding the sender's
authentication (``verify.messageauth``), which waits on DNS. ``process_message`` then runs in
a database transaction (the worker's, shared by a batch of messages, in a savepoint of the
message's own), so a crash part-way leaves no half-recorded activity: the message stays
``received`` and is processed again (DESIGN §3). Each route's copy walks the named steps
of ``pipeline.steps``; every outcome is an activity (new, or merged into the same email's
activity), forwarding set-up handled, or a quarantine with its reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailledger.capture.pipeline.claimed import ClaimedMessage
from mailledger.capture.pipeline.context import Context, Mail
from mailledger.capture.pipeline.decisions import (
    CONFIRMATION,
    FORWARDING_CHECK,
    RECORDED,
    Defer,
    Handled,
    Quarantine,
    Recorded,
)
from mailledger.capture.pipeline.lookups import Lookups
from mailledger.capture.pipeline.pending import PendingRows
from mailledger.capture.pipeline.steps import decide_route
from mailledger.capture.pipeline.tracer import Tracer
from mailledger.config import Settings
from mailledger.mail.parsing import ParsedMessage, ParseFailure, parse_message
from mailledger.routing import dedupe
from mailledger.store import webhooks
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.models import (
    AccountKind,
    MailboxAccount,
    MessageState,
    ReceivedMessage,
    Tenant,
    utcnow,
)
from mailledger.store.precompiled import Cursor
from mailledger.verify.authenticate import Authenticator
from mailledger.verify.messageauth import (
    Gateway,
    MailboxTrust,
    MessageAuth,
    authenticate_message,
    mailbox_trust,
)

# Messages larger than this are parsed from their file, then read whole.
PARSE_FROM_FILE_BYTES = 1024 * 1024


class RetryLater(Exception):  # noqa: N818 - a decision to wait, not a fault
    """A check failed temporarily (DNS): process the message again later instead of deciding."""


@dataclass(frozen=True, slots=True)
class Arrival:
    """What intake stored about a message that preparing it needs."""

    blob: str
    received_at: datetime
    peer: str
    helo: str
    mail_from: str
    gateways: Mapping[int, Gateway]  # every tenant the message is for, with its gateway
    # Read from a mailbox by sync (DESIGN §12), not received over SMTP: whose verdicts count.
    mailbox: MailboxTrust | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """What was worked out before the write transaction: the bytes, their parse, the verdicts.

    Parsing, the sender checks (which wait on DNS) and writing the stamped copy inside the
    transaction held SQLite's one write lock while intake's commits waited.
    """

    raw: bytes
    parsed: ParsedMessage | None
    failure: str = ""  # why the message could not be parsed, when parsed is None
    auth: MessageAuth | None = None  # every tenant's verdicts, when the From is one mailbox
    # The content checksum (routing.dedupe.content_key): a hash of the whole text, worked out
    # here so the write lock is not held for it (about an eighth of a synced message's time
    # in the transaction, `make bench`).
    checksum: str = ""
    # The attachments' blobs, in the parse's order, stored with the stamped copy before the
    # transaction: stored inside it, their fsyncs held SQLite's write lock while intake's
    # commit waited (`make bench`: the 250's p99). Like the stamped copy, a message that
    # ends quarantined leaves them unreferenced.
    attachments: tuple[str, ...] = ()


def prepare(
    blobs: BlobBackend, settings: Settings, authenticator: Authenticator, arrival: Arrival
) -> Prepared:
    """Read, parse and authenticate a stored message, outside any transaction.

    A large message is parsed from its file and only then read into memory: at its peak the
    parser holds the text and its lines, and the bytes need not be there beside them (about
    10 MB less at the peak for a 10 MB message). A message without one From mailbox is
    quarantined before any check, so it is not authenticated.
    """
    with blobs.open(arrival.blob) as stream:
        # Its length by seeking: a blob from the database or S3 is a file with no descriptor.
        large = stream.seek(0, os.SEEK_END) > PARSE_FROM_FILE_BYTES
        stream.seek(0)
        raw = b"" if large else stream.read()
        parsed, failure = _parse_raw(stream if large else raw, arrival.received_at, settings)
        if large:
            stream.seek(0)
            raw = stream.read()
    sender = parsed.sender if parsed is not None else None
    if parsed is None or sender is None:
        return Prepared(raw, parsed, failure)
    checksum = dedupe.content_key(parsed)
    attachments = tuple(blobs.put_pieces(part.pieces) for part in parsed.body.parts)
    auth = authenticate_message(
        authenticator,
        settings,
        blobs,
        raw,
        parsed.headers,
        from_domain=sender.domain,
        peer=arrival.peer,
        helo=arrival.helo,
        mail_from=arrival.mail_from,
        gateways=arrival.gateways,
        mailbox=arrival.mailbox,
    )
    return Prepared(raw, parsed, failure, auth, checksum, attachments)


def _arrival_of(session: Session, message: ReceivedMessage) -> Arrival:
    """The arrival facts of a loaded message, with its tenants' gateway settings."""
    tenants = [session.get_one(Tenant, t) for t in {route.tenant_id for route in message.routes}]
    gateways = {t.id: Gateway(tuple(t.gateway_networks), t.gateway_authserv_id) for t in tenants}
    account = (
        session.get(MailboxAccount, message.mailbox_account_id)
        if message.mailbox_account_id is not None
        else None
    )
    return Arrival(
        message.blob,
        message.received_at,
        message.peer,
        message.helo,
        message.mail_from,
        gateways,
        mailbox=mailbox_of(
            message.mailbox_account_id,
            account.kind if account is not None else None,
            account.authserv_id if account is not None else None,
        ),
    )


# The fetching account's kind and --authserv-id beside a message's own facts (None for mail
# received over SMTP), so the worker reads them in the statement it already runs.
MAILBOX_FACTS = (
    select(MailboxAccount.kind)
    .where(MailboxAccount.id == ReceivedMessage.mailbox_account_id)
    .scalar_subquery()
    .label("mailbox_kind"),
    select(MailboxAccount.authserv_id)
    .where(MailboxAccount.id == ReceivedMessage.mailbox_account_id)
    .scalar_subquery()
    .label("mailbox_authserv_id"),
)


def mailbox_of(
    account_id: int | None, kind: AccountKind | None, authserv_id: str | None
) -> MailboxTrust | None:
    """Whose Authentication-Results a fetched message is judged on; None: not fetched.

    An account that cannot be found (a database without foreign keys enforced) trusts
    nobody's: nothing then says which provider stamped the message.
    """
    if account_id is None:
        return None
    if kind is None:
        return MailboxTrust()
    return mailbox_trust(kind, authserv_id or "")


def process_message(
    session: Session,
    blobs: BlobBackend,
    message: ReceivedMessage,
    settings: Settings,
    authenticator: Authenticator,
    *,
    final_attempt: bool = True,
) -> None:
    """Decide every route of one loaded message and set its final state and reason.

    Prepared here, in the caller's transaction, and its rows written at once: the worker
    prepares messages before its transaction opens and records them with
    :func:`record_claimed`. Raises RetryLater when a check failed temporarily and this is
    not the last attempt; the caller rolls back and tries again later.
    """
    prepared = prepare(blobs, settings, authenticator, _arrival_of(session, message))
    claimed = ClaimedMessage.of(message)
    with Cursor.of(session) as sql:
        rows = PendingRows(sql)
        record_claimed(
            session,
            sql,
            blobs,
            claimed,
            settings,
            prepared=prepared,
            final_attempt=final_attempt,
            lookups=Lookups(session, sql),
            rows=rows,
        )
        rows.write()
    claimed.apply_to(message)


def record_claimed(
    session: Session,
    sql: Cursor,
    blobs: BlobBackend,
    message: ClaimedMessage,
    settings: Settings,
    *,
    prepared: Prepared,
    final_attempt: bool,
    lookups: Lookups,
    rows: PendingRows,
) -> None:
    """Decide every route of one prepared message, in the caller's transaction.

    The hot statements run on ``sql``, the driver's cursor of the session's transaction; the
    message's rows are queued on ``rows`` and its outcome set on ``message``, for the caller
    to write with the rest of its batch. ``lookups`` are the transaction's answers.
    """
    trace = Tracer(rows, message)
    # Explicit flushes only: an autoflush before each lookup wrote the message row again and
    # again. What a lookup must see (a new activity, a new contact) is written where made.
    with session.no_autoflush:
        _decide(
            session,
            sql,
            blobs,
            message,
            settings,
            trace=trace,
            prepared=prepared,
            final_attempt=final_attempt,
            lookups=lookups,
            rows=rows,
        )
        if message.state is MessageState.QUARANTINED and any(
            lookups.subscribed(t, webhooks.MESSAGE_QUARANTINED)
            for t in {route.tenant_id for route in message.routes}
        ):
            # In this transaction, as the quarantine itself (DESIGN §11).
            webhooks.message_quarantined(
                session, message, delay_seconds=settings.webhooks.retry_schedule_seconds[0]
            )
    trace.write()


def _decide(
    session: Session,
    sql: Cursor,
    blobs: BlobBackend,
    message: ClaimedMessage,
    settings: Settings,
    *,
    trace: Tracer,
    prepared: Prepared,
    final_attempt: bool,
    lookups: Lookups,
    rows: PendingRows,
) -> None:
    """Parse and From first, for the whole message; then each route walks the steps."""
    parsed = prepared.parsed
    if parsed is None:
        _quarantine_all(message, trace, prepared.failure)
        return
    message.message_id = parsed.message_id[:998]
    trace(
        "parse",
        "parsed",
        f"message-id=<{parsed.message_id}> subject={parsed.subject[:80]!r} "
        f"{len(parsed.body.attachments)} attachment(s)",
    )
    # No single From, or a once-only header repeated (RFC 5322 §3.6): no instance is believed,
    # so nothing (parties, thread, dedupe key, DMARC alignment) is taken from the message.
    sender = parsed.sender
    if sender is None:
        _quarantine_all(message, trace, _ambiguity(parsed))
        return
    assert prepared.auth is not None, "prepare authenticates every message with one From"
    checksum = prepared.checksum  # worked out with the verdicts, for every message with one From
    key = dedupe.message_id_key(parsed.message_id) if parsed.message_id else checksum
    mail = Mail(
        session,
        sql,
        blobs,
        settings,
        message,
        parsed,
        sender,
        trace,
        prepared.auth,
        final_attempt,
        lookups,
        rows,
        key,
        checksum,
        prepared.attachments,
    )
    outcomes: list[str] = []
    for route in message.routes:
        tenant = lookups.tenant(route.tenant_id)
        match decide_route(Context(mail, route, tenant)):
            case Quarantine(reason):
                route.outcome = reason
                trace("quarantine", "quarantined", f"{route.rcpt}: {reason}")
                outcomes.append(reason)
            case Defer(reason):
                raise RetryLater(reason)
            case Handled(outcome):
                route.outcome = outcome
            case Recorded(activity):
                route.outcome = RECORDED
                route.activity_id = activity
    handled = (RECORDED, CONFIRMATION, FORWARDING_CHECK)
    state = MessageState.PROCESSED
    if not any(route.outcome in handled for route in message.routes):
        state = MessageState.QUARANTINED
    _finish(message, state, "; ".join(dict.fromkeys(outcomes)))


def _quarantine_all(message: ClaimedMessage, trace: Tracer, reason: str) -> None:
    """The whole message is kept aside, every route with the same reason."""
    trace("quarantine", "quarantined", reason)
    for route in message.routes:
        route.outcome = reason
    _finish(message, MessageState.QUARANTINED, reason)


def _finish(message: ClaimedMessage, state: MessageState, reason: str) -> None:
    message.state = state
    message.reason = reason
    message.finished_at = utcnow()
    message.claimed_by = None
    message.claim_expires_at = None


def _parse_raw(
    raw: bytes | BinaryIO, received_at: datetime, settings: Settings
) -> tuple[ParsedMessage | None, str]:
    """The parse, or None and why the message cannot be parsed (it is quarantined)."""
    try:
        parsed = parse_message(
            raw,
            received_at=received_at,
            max_depth=settings.capture.max_mime_depth,
            max_parts=settings.capture.max_mime_parts,
        )
    except ParseFailure as exc:
        return None, str(exc)
    except (ValueError, LookupError, UnicodeError, AttributeError, TypeError) as exc:
        # The email package is lenient, but garbage MIME can still trip it; keep the message.
        return None, f"unparseable: {type(exc).__name__}"
    return parsed, ""


def _ambiguity(parsed: ParsedMessage) -> str:
    """Why the message has no sender: quarantined as ambiguous (DESIGN §4).

    Either From is not one mailbox in one header, or a header RFC 5322 §3.6 allows once is
    repeated: a DKIM signature covers only its last instance (RFC 6376 §5.4.2), so a copy
    prepended to a replayed, signed message would otherwise pass as signed.
    """
    if parsed.from_fields == 0:
        return "ambiguous-from: no From header"
    if parsed.from_fields > 1:
        return f"ambiguous-from: {parsed.from_fields} From headers"
    if parsed.repeated:
        return f"ambiguous: {parsed.ambiguity}"
    if parsed.from_list.invalid:
        return f"ambiguous-from: unparseable From {parsed.from_list.invalid[0][:80]!r}"
    if not parsed.from_list.mailboxes:
        return "ambiguous-from: From holds no mailbox"
    return f"ambiguous-from: From holds {len(parsed.from_list.mailboxes)} mailboxes"
