"""Webhooks as an outbox (DESIGN §11): endpoints, events, deliveries and their attempts.

An event is written in the transaction of the change it reports (an activity recorded or
merged, a message quarantined), so a rolled-back change leaves no event and a committed one
is never lost. It is fanned out at once, in that same transaction, into one delivery row per
subscribed endpoint: each endpoint has its own attempts, retry time and lease, so a slow or
failing CRM never holds back another, a delivery is claimed with the lease every queue uses
(``store.leases``), and an endpoint added later does not receive what happened before it.
The event row holds the body once, exactly as signed, shared by its deliveries and replays.

Signing, the retry schedule and the HTTP attempt itself are the webhook worker's
(``web.webhooks``); this module keeps the rows and the rules on them that the CLI, the API
and the worker share.
"""

from __future__ import annotations

import base64
import json
import secrets
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

import structlog
from sqlalchemy import bindparam, delete, exists, func, insert, or_, select, update
from sqlalchemy.orm import Session

from mailledger.store import leases, queries
from mailledger.store.models import (
    Activity,
    EndpointState,
    Staff,
    Tenant,
    WebhookAttempt,
    WebhookDelivery,
    WebhookDeliveryState,
    WebhookEndpoint,
    WebhookEvent,
    utcnow,
)
from mailledger.store.secretbox import SecretBox, SecretError, is_sealed

log = structlog.get_logger("mailledger.webhooks")

ACTIVITY_CREATED: Final = "activity.created"
# A merge added a source or a participant to the activity, or its ``regarding`` changed.
ACTIVITY_UPDATED: Final = "activity.updated"
MESSAGE_QUARANTINED: Final = "message.quarantined"
# A mailbox account's settled status changed (sync.statuses): enabled, error, reconnect, ...
ACCOUNT_STATUS_CHANGED: Final = "account.status_changed"
EVENT_TYPES: Final = (
    ACTIVITY_CREATED,
    ACTIVITY_UPDATED,
    MESSAGE_QUARANTINED,
    ACCOUNT_STATUS_CHANGED,
)

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - the prefix, not a secret
# Standard Webhooks: a secret is 24 to 64 random bytes, base64-encoded after ``whsec_``.
SECRET_BYTES: Final = 32
# After ``rotate`` the old secret keeps signing (a second signature) for this long, so the
# receiver can switch to the new one without refusing a delivery meanwhile.
ROTATION_OVERLAP: Final = timedelta(hours=24)
MAX_URL_LENGTH: Final = 2000
# The answer's body kept per attempt.
RESPONSE_EXCERPT_BYTES: Final = 1024


class WebhookError(ValueError):
    """A webhook request that cannot be done; the message says what to change."""


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def new_webhook_id() -> str:
    """A ``webhook-id``: unique per event, without the ``.`` that separates the signed parts."""
    return "msg_" + secrets.token_hex(16)


def check_url(url: str) -> str:
    """The URL to deliver to, if it is an absolute http(s) URL with a host; else WebhookError.

    Whether its host is a public address is a DNS question (``web.webhooktargets``).
    """
    text = url.strip()
    if len(text) > MAX_URL_LENGTH:
        raise WebhookError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) < 0x21 or c == "\x7f" for c in text):
        raise WebhookError("the URL holds a space or a control character")
    parts = urllib.parse.urlsplit(text)
    if parts.scheme.lower() not in ("http", "https"):
        raise WebhookError(f"{url!r} is not an http:// or https:// URL")
    if not parts.hostname:
        raise WebhookError(f"{url!r} names no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookError(
            "the URL carries a user name or password: verify the signature instead, or put a "
            "token in the path"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise WebhookError(f"{url!r} has a bad port: {exc}") from exc
    if parts.fragment:
        raise WebhookError("the URL has a #fragment, which is never sent")
    return text


def check_events(events: Iterable[str]) -> list[str]:
    """The event types asked for, each one we send; empty means every type."""
    chosen = list(dict.fromkeys(e.strip() for e in events if e.strip()))
    unknown = [e for e in chosen if e not in EVENT_TYPES]
    if unknown:
        raise WebhookError(
            f"unknown event type {', '.join(unknown)}; the types are {', '.join(EVENT_TYPES)}"
        )
    return chosen


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _stamp(value: datetime) -> str:
    """An RFC 3339 time in UTC with a ``Z``, as Standard Webhooks' examples write it."""
    return value.isoformat().replace("+00:00", "Z")


# --- endpoints --------------------------------------------------------------------------------


def add_endpoint(
    session: Session, tenant: Tenant, url: str, events: Iterable[str] = (), *, box: SecretBox
) -> tuple[WebhookEndpoint, str]:
    """Register ``url`` for the tenant; returns the endpoint and its secret (shown once).

    The row keeps the secret sealed by ``box`` (``[secrets] key_file``), never in clear.
    """
    secret = new_secret()
    endpoint = WebhookEndpoint(
        tenant_id=tenant.id,
        url=check_url(url),
        events=check_events(events),
        secret=box.seal(secret),
        state=EndpointState.ACTIVE,
        created_at=utcnow(),
    )
    session.add(endpoint)
    session.flush()
    return endpoint, secret


def find_endpoint(
    session: Session, ident: int | str, tenant: Tenant | None = None
) -> WebhookEndpoint:
    """An endpoint by id (of ``tenant`` only, when given: another tenant's id is not found)."""
    text = str(ident).strip()
    endpoint = session.get(WebhookEndpoint, int(text)) if text.isdigit() else None
    if endpoint is None or (tenant is not None and endpoint.tenant_id != tenant.id):
        raise queries.NotFoundError(f"no webhook endpoint {ident}")
    return endpoint


def remove_endpoint(session: Session, endpoint: WebhookEndpoint) -> int:
    """Delete an endpoint with its deliveries and their attempts; how many deliveries went."""
    count = int(
        session.scalar(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint.id)
        )
        or 0
    )
    session.delete(endpoint)
    session.flush()
    return count


def rotate_secret(
    session: Session,
    endpoint: WebhookEndpoint,
    *,
    box: SecretBox,
    overlap: timedelta = ROTATION_OVERLAP,
    now: datetime | None = None,
) -> str:
    """Give the endpoint a new secret; the current one keeps signing for ``overlap``.

    Only two secrets sign at once: a rotation during another's overlap drops the oldest.
    Both are kept sealed by ``box``.
    """
    now = now or utcnow()
    secret = new_secret()
    endpoint.previous_secret = _sealed(box, endpoint.secret)
    endpoint.previous_secret_expires_at = now + overlap
    endpoint.secret = box.seal(secret)
    session.flush()
    return secret


def _sealed(box: SecretBox, value: str) -> str:
    """``value`` sealed, unless it is empty or sealed already (a row from before sealing)."""
    return value if not value or is_sealed(value) else box.seal(value)


def seal_clear_secrets(endpoint: WebhookEndpoint, box: SecretBox) -> bool:
    """Seal an endpoint's secrets kept in clear (rows written before sealing began).

    ``db upgrade`` seals every row when it is given the key (migration 0010); a database
    upgraded without it is sealed here, on each endpoint's next use. Whether it changed.
    """
    secret, previous = _sealed(box, endpoint.secret), _sealed(box, endpoint.previous_secret)
    changed = (secret, previous) != (endpoint.secret, endpoint.previous_secret)
    endpoint.secret, endpoint.previous_secret = secret, previous
    return changed


def endpoint_secrets(endpoint: WebhookEndpoint, box: SecretBox, now: datetime) -> tuple[str, ...]:
    """The clear ``whsec_…`` secrets that sign for the endpoint now (``signing_secrets``).

    A value still in clear is read as it is; one that cannot be opened raises SecretError.
    """

    def opened(value: str) -> str:
        return box.open(value) if is_sealed(value) else value

    chosen = signing_secrets(
        endpoint.secret, endpoint.previous_secret, endpoint.previous_secret_expires_at, now
    )
    return tuple(opened(value) for value in chosen)


def enable_endpoint(session: Session, endpoint: WebhookEndpoint) -> bool:
    """Deliver to a disabled or failing endpoint again; whether its state changed."""
    if endpoint.state is EndpointState.ACTIVE:
        return False
    _set_state(endpoint, EndpointState.ACTIVE, "enabled by the operator")
    session.flush()
    return True


def disable_endpoint(session: Session, endpoint: WebhookEndpoint, reason: str) -> int:
    """Stop delivering to an endpoint; its waiting deliveries fail. How many there were."""
    _set_state(endpoint, EndpointState.DISABLED, reason)
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.endpoint_id == endpoint.id,
            WebhookDelivery.state == WebhookDeliveryState.PENDING,
        )
        .values(
            state=WebhookDeliveryState.FAILED,
            last_error=f"endpoint disabled: {reason}"[:2000],
            finished_at=utcnow(),
            claimed_by=None,
            claim_expires_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return int(getattr(result, "rowcount", 0) or 0)


def _set_state(endpoint: WebhookEndpoint, state: EndpointState, reason: str) -> None:
    endpoint.state = state
    endpoint.state_reason = reason[:2000]
    endpoint.state_changed_at = utcnow()


def signing_secrets(
    secret: str, previous: str, previous_expires_at: datetime | None, now: datetime
) -> tuple[str, ...]:
    """The secrets that sign now: the current one, and the previous one until it expires."""
    if previous and previous_expires_at is not None and previous_expires_at > now:
        return (secret, previous)
    return (secret,)


def endpoints(session: Session, tenant: Tenant | None = None) -> list[dict[str, Any]]:
    """Endpoints (of one tenant, or all) as plain data; secrets are never shown again."""
    query = select(WebhookEndpoint).order_by(WebhookEndpoint.id)
    if tenant is not None:
        query = query.where(WebhookEndpoint.tenant_id == tenant.id)
    rows = session.scalars(query).all()
    counts: dict[tuple[int, str], int] = {}
    if rows:
        counted = session.execute(
            select(WebhookDelivery.endpoint_id, WebhookDelivery.state, func.count())
            .where(WebhookDelivery.endpoint_id.in_([r.id for r in rows]))
            .group_by(WebhookDelivery.endpoint_id, WebhookDelivery.state)
        )
        counts = {(e, WebhookDeliveryState(s).value): int(n) for e, s, n in counted}
    names = dict(session.execute(select(Tenant.id, Tenant.name)).all()) if rows else {}
    now = utcnow()
    return [
        {
            "id": row.id,
            "tenant": names.get(row.tenant_id),
            "url": row.url,
            "events": list(row.events) or ["all"],
            "state": row.state.value,
            "state_reason": row.state_reason,
            "state_changed_at": _time(row.state_changed_at),
            "rotating_until": _time(row.previous_secret_expires_at)
            if len(
                signing_secrets(
                    row.secret, row.previous_secret, row.previous_secret_expires_at, now
                )
            )
            > 1
            else None,
            "pending": counts.get((row.id, "pending"), 0),
            "delivered": counts.get((row.id, "delivered"), 0),
            "failed": counts.get((row.id, "failed"), 0),
            "created_at": _time(row.created_at),
        }
        for row in rows
    ]


# --- the outbox: events written with the change they report ------------------------------------

# Endpoints an event of a tenant may go to: every one not disabled (the type is checked after).
_SUBSCRIBERS = select(WebhookEndpoint.id, WebhookEndpoint.events).where(
    WebhookEndpoint.tenant_id == bindparam("tenant_id"),
    WebhookEndpoint.state != EndpointState.DISABLED,
)
_NEW_EVENT = insert(WebhookEvent).returning(WebhookEvent.id)
_NEW_DELIVERY = insert(WebhookDelivery)


def subscribers(session: Session, tenant_id: int, event_type: str) -> list[int]:
    """The ids of the tenant's endpoints that receive ``event_type`` now."""
    rows = session.connection().execute(_SUBSCRIBERS, {"tenant_id": tenant_id})
    return [id_ for id_, events in rows if not events or event_type in events]


def emit(
    session: Session,
    tenant_id: int,
    event_type: str,
    data: dict[str, Any] | None = None,
    *,
    data_of: Any = None,
    delay_seconds: float = 0.0,
    now: datetime | None = None,
) -> int | None:
    """Write one event and a delivery per subscribed endpoint, in the caller's transaction.

    ``data`` is the event's object, or ``data_of`` (a callable of no arguments) makes it only
    when some endpoint subscribes, so a tenant without webhooks pays one indexed read. Returns
    the event's id, or None when no endpoint receives this type.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"not an event type: {event_type}")
    targets = subscribers(session, tenant_id, event_type)
    if not targets:
        return None
    now = now or utcnow()
    payload = data if data is not None else data_of()
    body = json.dumps(
        {"type": event_type, "timestamp": _stamp(now), "data": payload},
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )
    connection = session.connection()
    event_id = connection.execute(
        _NEW_EVENT,
        {
            "tenant_id": tenant_id,
            "webhook_id": new_webhook_id(),
            "type": event_type,
            "body": body,
            "created_at": now,
        },
    ).scalar_one()
    due = now + timedelta(seconds=delay_seconds)
    connection.execute(
        _NEW_DELIVERY,
        [
            {
                "event_id": event_id,
                "endpoint_id": endpoint_id,
                "state": WebhookDeliveryState.PENDING,
                "attempts": 0,
                "retry_after": due,
                "last_error": "",
                "created_at": now,
            }
            for endpoint_id in targets
        ],
    )
    return int(event_id)


def activity_data(session: Session, activity_id: int, *, base_url: str = "") -> dict[str, Any]:
    """The activity as ``activities list --json`` and the API show it: one representation.

    Read afresh (``populate_existing``): within one processing transaction a second route of
    the same message merges into an activity the first route's event already loaded.
    ``base_url`` (``[http] public_url``) makes its links absolute, for the CRM to follow.
    """
    row = session.scalars(
        queries.activity_query()
        .where(Activity.id == activity_id)
        .execution_options(populate_existing=True)
    ).one()
    return queries.activity_dicts(session, [row], base_url=base_url)[0]


def activity_changed(
    session: Session,
    tenant_id: int,
    activity_id: int,
    event_type: str,
    *,
    base_url: str = "",
    delay_seconds: float = 0.0,
) -> int | None:
    """``activity.created`` or ``activity.updated`` for one activity, in the caller's transaction.

    Call it after the change is written (flushed), so the payload shows it: a merge that
    added a source or participant, or a changed ``regarding``, is an ``activity.updated``.
    """
    if event_type not in (ACTIVITY_CREATED, ACTIVITY_UPDATED):
        raise ValueError(f"not an activity event: {event_type}")
    return emit(
        session,
        tenant_id,
        event_type,
        data_of=lambda: activity_data(session, activity_id, base_url=base_url),
        delay_seconds=delay_seconds,
    )


class QuarantinedRoute(Protocol):
    """What ``message.quarantined`` reads of one route: a loaded one, or processing's own."""

    @property
    def tenant_id(self) -> int: ...
    @property
    def rcpt(self) -> str: ...
    @property
    def outcome(self) -> str: ...


class QuarantinedMessage(Protocol):
    """What ``message.quarantined`` reads of a message: a loaded one, or processing's own
    plain copy (``capture.pipeline.claimed``)."""

    @property
    def id(self) -> int: ...
    @property
    def queue_id(self) -> str: ...
    @property
    def message_id(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def mail_from(self) -> str: ...
    @property
    def received_at(self) -> datetime: ...
    @property
    def finished_at(self) -> datetime | None: ...
    @property
    def routes(self) -> Sequence[QuarantinedRoute]: ...


def message_quarantined(
    session: Session, message: QuarantinedMessage, *, delay_seconds: float = 0.0
) -> list[int]:
    """``message.quarantined`` to each tenant the message was for, in the caller's transaction.

    Each tenant sees its own recipients and the reasons given for them, never another
    tenant's. Returns the events written.
    """
    now = utcnow()
    by_tenant: dict[int, list[tuple[str, str]]] = {}
    for route in message.routes:
        by_tenant.setdefault(route.tenant_id, []).append((route.rcpt, route.outcome))
    written = []
    for tenant_id, routes in by_tenant.items():
        reasons = [outcome for _, outcome in routes if outcome]
        data = {
            "id": message.id,
            "queue_id": message.queue_id,
            "message_id": message.message_id,
            "reason": "; ".join(dict.fromkeys(reasons)) or message.reason,
            "rcpt_to": [rcpt for rcpt, _ in routes],
            "mail_from": message.mail_from,
            "received_at": _time(message.received_at),
            "quarantined_at": _time(message.finished_at or now),
        }
        event = emit(
            session, tenant_id, MESSAGE_QUARANTINED, data, delay_seconds=delay_seconds, now=now
        )
        if event is not None:
            written.append(event)
    return written


# --- the delivery queue -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    """One delivery claimed for one attempt: all the worker needs, detached from any session."""

    delivery_id: int
    attempt: int  # including this one
    event_type: str
    webhook_id: str
    body: str
    endpoint_id: int
    tenant_id: int
    url: str
    secrets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt saw: the status (None without an answer), time taken, the answer."""

    at: datetime
    status: int | None
    latency_ms: int
    response: str = ""
    error: str = ""

    @property
    def delivered(self) -> bool:
        """A 2xx answer: the receiver took the event (Standard Webhooks)."""
        return self.status is not None and 200 <= self.status < 300

    def summary(self) -> str:
        """The attempt in a few words, for the delivery's last error and the logs."""
        if self.status is None:
            return self.error or "no answer"
        text = " ".join(self.response.split())[:200]
        return f"HTTP {self.status}" + (f": {text}" if text else "")


def claim_due(
    session: Session,
    *,
    owner: str,
    lease_seconds: float,
    limit: int,
    max_attempts: int,
    box: SecretBox,
    now: datetime | None = None,
) -> list[Job]:
    """Claim up to ``limit`` due deliveries; call inside ``sessions.begin()``.

    A delivery whose endpoint was disabled meanwhile, or whose attempts a crash used up
    (each claim counts one), is finished here as failed instead of being returned. ``box``
    opens the endpoints' secrets (and seals any still kept in clear).
    """
    now = now or utcnow()
    claimed = leases.claim(
        session,
        leases.WEBHOOKS,
        owner=owner,
        lease_seconds=lease_seconds,
        limit=limit,
        now=now,
        columns=(WebhookDelivery.event_id, WebhookDelivery.endpoint_id),
    )
    if not claimed:
        return []
    events = {
        e.id: e
        for e in session.scalars(
            select(WebhookEvent).where(WebhookEvent.id.in_({c.row.event_id for c in claimed}))
        )
    }
    targets = {
        e.id: e
        for e in session.scalars(
            select(WebhookEndpoint).where(
                WebhookEndpoint.id.in_({c.row.endpoint_id for c in claimed})
            )
        )
    }
    jobs = []
    for lease in claimed:
        event, endpoint = events[lease.row.event_id], targets[lease.row.endpoint_id]
        if endpoint.state is EndpointState.DISABLED:
            _finish(session, lease.id, f"endpoint disabled: {endpoint.state_reason}")
            continue
        if lease.attempts > max_attempts:
            _finish(session, lease.id, "the retry schedule was used up by interrupted attempts")
            _mark_failing(endpoint, lease.id, event.type, "attempts cut short")
            continue
        seal_clear_secrets(endpoint, box)
        try:
            signing = endpoint_secrets(endpoint, box, now)
        except SecretError as error:
            # Nothing can be signed until the key file is put right; `webhook replay` sends
            # the delivery again afterwards.
            _finish(session, lease.id, f"cannot sign: {error}")
            _mark_failing(endpoint, lease.id, event.type, f"cannot sign: {error}")
            log.warning("webhook secret cannot be opened", endpoint=endpoint.id, error=str(error))
            continue
        jobs.append(
            Job(
                delivery_id=lease.id,
                attempt=lease.attempts,
                event_type=event.type,
                webhook_id=event.webhook_id,
                body=event.body,
                endpoint_id=endpoint.id,
                tenant_id=endpoint.tenant_id,
                url=endpoint.url,
                secrets=signing,
            )
        )
    return jobs


def _finish(session: Session, delivery_id: int, error: str) -> None:
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(
            state=WebhookDeliveryState.FAILED,
            last_error=error[:2000],
            finished_at=utcnow(),
            claimed_by=None,
            claim_expires_at=None,
        )
        .execution_options(synchronize_session=False)
    )


def _mark_failing(endpoint: WebhookEndpoint, delivery_id: int, event_type: str, why: str) -> None:
    """The endpoint missed an event for good: say so where operators and admins look.

    An active endpoint turns failing: a new failing spell, whose admins' mail the webhook
    worker queues once (``failing_notice``); one already failing only gets the new reason.
    """
    reason = f"delivery {delivery_id} ({event_type}) failed for good: {why}"
    if endpoint.state is EndpointState.ACTIVE:
        _set_state(endpoint, EndpointState.FAILING, reason)
    else:
        endpoint.state_reason = reason[:2000]
    log.warning(
        "webhook endpoint failing",
        endpoint=endpoint.id,
        tenant_id=endpoint.tenant_id,
        url=endpoint.url,
        reason=reason,
    )


# --- telling the tenant's admins that an endpoint is failing ----------------------------------


@dataclass(frozen=True, slots=True)
class FailingNotice:
    """What the admins' mail about a failing endpoint says, and whom it goes to."""

    endpoint_id: int
    tenant_id: int
    tenant: str
    url: str
    since: datetime  # when this failing spell began
    reason: str  # the last failed delivery and its last answer
    admins: tuple[tuple[int, str], ...]  # (staff id, primary address)


# A failing endpoint whose spell (begun at state_changed_at) has not been mailed about yet.
_UNNOTIFIED = (
    (WebhookEndpoint.state == EndpointState.FAILING)
    & WebhookEndpoint.state_changed_at.is_not(None)
    & or_(
        WebhookEndpoint.failing_notified_at.is_(None),
        WebhookEndpoint.failing_notified_at < WebhookEndpoint.state_changed_at,
    )
)


def _unnotified(endpoint_id: int) -> Any:
    return (WebhookEndpoint.id == endpoint_id) & _UNNOTIFIED


def failing_notices_owed(session: Session) -> list[int]:
    """The failing endpoints whose spell no mail has been queued about yet (any tenant)."""
    return list(
        session.scalars(select(WebhookEndpoint.id).where(_UNNOTIFIED).order_by(WebhookEndpoint.id))
    )


def failing_notice(session: Session, endpoint_id: int) -> FailingNotice | None:
    """The mail owed for the endpoint's failing spell, or None when none is owed.

    Owed once per spell: from the moment the endpoint turned failing until a mail about it
    was queued (``claim_failing_notice``). A tenant without an active admin is owed nothing.
    """
    endpoint = session.scalars(select(WebhookEndpoint).where(_unnotified(endpoint_id))).first()
    if endpoint is None or endpoint.state_changed_at is None:
        return None
    admins = session.execute(
        select(Staff.id, Staff.primary_address)
        .where(
            Staff.tenant_id == endpoint.tenant_id,
            Staff.admin.is_(True),
            Staff.disabled_at.is_(None),
            Staff.removed_at.is_(None),
            Staff.primary_address != "",
        )
        .order_by(Staff.id)
    ).all()
    if not admins:
        return None
    tenant = session.get_one(Tenant, endpoint.tenant_id)
    return FailingNotice(
        endpoint_id=endpoint.id,
        tenant_id=endpoint.tenant_id,
        tenant=tenant.name,
        url=endpoint.url,
        since=endpoint.state_changed_at,
        reason=endpoint.state_reason,
        admins=tuple((int(i), str(a)) for i, a in admins),
    )


def claim_failing_notice(session: Session, notice: FailingNotice) -> bool:
    """Mark the spell's mail as sent; False when another node (or an earlier try) did.

    Call it in the transaction that queues the mail: the conditional update lets one
    transaction only win, so the admins get one mail per spell whatever the number of nodes.
    """
    result = session.execute(
        update(WebhookEndpoint)
        .where(_unnotified(notice.endpoint_id), WebhookEndpoint.state_changed_at == notice.since)
        .values(failing_notified_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0) == 1


def any_due(session_factory: Any, now: datetime | None = None) -> bool:
    """Whether a delivery is due, asked as a reader: an idle poll takes no write lock."""
    return leases.any_waiting(session_factory, leases.WEBHOOKS, now)


def renew(session: Session, ids: Iterable[int], *, owner: str, lease_seconds: float) -> int:
    """Extend this owner's leases on deliveries still in flight."""
    return leases.renew(session, leases.WEBHOOKS, ids, owner=owner, lease_seconds=lease_seconds)


def release(session: Session, ids: Iterable[int], *, owner: str) -> int:
    """Hand deliveries back unfinished (shutdown): due at once; the attempt stays counted."""
    return leases.release(session, leases.WEBHOOKS, ids, owner=owner)


def record_attempt(
    session: Session,
    job: Job,
    result: AttemptResult,
    *,
    owner: str,
    next_attempt_at: datetime | None,
    gone: bool = False,
) -> WebhookDeliveryState | None:
    """Keep the attempt, and move the delivery on: delivered, retried later, or failed.

    ``next_attempt_at`` is when to try again (None: the schedule ran out). ``gone`` (a 410)
    disables the endpoint. The attempt is kept even when this node's lease lapsed meanwhile
    (it happened), but then the delivery is left to the node that holds it: returns None.
    """
    delivery = session.get(WebhookDelivery, job.delivery_id, with_for_update=True)
    if delivery is None:
        return None  # the endpoint was removed meanwhile
    ours = delivery.claimed_by == owner and delivery.state is WebhookDeliveryState.PENDING
    retry = not result.delivered and not gone and next_attempt_at is not None
    session.add(
        WebhookAttempt(
            delivery_id=delivery.id,
            attempt=job.attempt,
            at=result.at,
            status=result.status,
            latency_ms=result.latency_ms,
            response=result.response,
            error=result.error[:2000],
            next_attempt_at=next_attempt_at if retry and ours else None,
        )
    )
    if not ours:
        session.flush()
        return None
    endpoint = session.get_one(WebhookEndpoint, job.endpoint_id)
    delivery.claimed_by = None
    delivery.claim_expires_at = None
    if result.delivered:
        delivery.state = WebhookDeliveryState.DELIVERED
        delivery.last_error = ""
        delivery.finished_at = utcnow()
        if endpoint.state is EndpointState.FAILING:
            _set_state(endpoint, EndpointState.ACTIVE, f"delivered again (delivery {delivery.id})")
    elif gone:
        delivery.state = WebhookDeliveryState.FAILED
        delivery.last_error = result.summary()[:2000]
        delivery.finished_at = utcnow()
        session.flush()
        disable_endpoint(session, endpoint, f"answered 410 Gone at {_stamp(result.at)}")
    elif next_attempt_at is None:
        delivery.state = WebhookDeliveryState.FAILED
        delivery.last_error = result.summary()[:2000]
        delivery.finished_at = utcnow()
        _mark_failing(
            endpoint,
            delivery.id,
            job.event_type,
            f"{job.attempt} attempts, the last: {result.summary()}",
        )
    else:
        delivery.last_error = result.summary()[:2000]
        delivery.retry_after = next_attempt_at
    session.flush()
    return delivery.state


# --- the operator's view and replay -----------------------------------------------------------


def replay(
    session: Session,
    delivery_id: int | str,
    now: datetime | None = None,
    *,
    tenant: Tenant | None = None,
) -> WebhookDelivery:
    """Send a delivery's event to its endpoint again, as a new delivery due now.

    The ``webhook-id`` stays the event's, so a receiver that already has it can tell. A
    delivery still waiting for its next attempt is made due now instead of doubled. With
    ``tenant``, another tenant's delivery is not found, like one that does not exist.
    """
    now = now or utcnow()
    text = str(delivery_id).strip()
    delivery = session.get(WebhookDelivery, int(text)) if text.isdigit() else None
    if delivery is None:
        raise queries.NotFoundError(f"no webhook delivery {delivery_id}")
    endpoint = session.get_one(WebhookEndpoint, delivery.endpoint_id)
    if tenant is not None and endpoint.tenant_id != tenant.id:
        raise queries.NotFoundError(f"no webhook delivery {delivery_id}")
    if endpoint.state is EndpointState.DISABLED:
        raise WebhookError(
            f"endpoint {endpoint.id} is disabled ({endpoint.state_reason}); "
            f"`mailledger webhook enable {endpoint.id}` first"
        )
    if delivery.state is WebhookDeliveryState.PENDING:
        delivery.retry_after = now
        session.flush()
        return delivery
    again = WebhookDelivery(
        event_id=delivery.event_id,
        endpoint_id=delivery.endpoint_id,
        state=WebhookDeliveryState.PENDING,
        attempts=0,
        retry_after=now,
        replay_of=delivery.id,
        created_at=now,
    )
    session.add(again)
    session.flush()
    return again


def deliveries(
    session: Session, endpoint: WebhookEndpoint, *, limit: int = 50
) -> list[dict[str, Any]]:
    """The endpoint's deliveries, newest first, each with every attempt (oldest first)."""
    rows: Sequence[Any] = session.execute(
        select(WebhookDelivery, WebhookEvent.webhook_id, WebhookEvent.type)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.endpoint_id == endpoint.id)
        .order_by(WebhookDelivery.id.desc())
        .limit(limit)
    ).all()
    ids = [row[0].id for row in rows]
    attempts: dict[int, list[dict[str, Any]]] = {}
    if ids:
        for attempt in session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(ids))
            .order_by(WebhookAttempt.id)
        ):
            attempts.setdefault(attempt.delivery_id, []).append(
                {
                    "attempt": attempt.attempt,
                    "at": _time(attempt.at),
                    "status": attempt.status,
                    "latency_ms": attempt.latency_ms,
                    "response": attempt.response,
                    "error": attempt.error,
                    "next_attempt_at": _time(attempt.next_attempt_at),
                }
            )
    return [
        {
            "id": delivery.id,
            "endpoint": endpoint.id,
            "webhook_id": webhook_id,
            "type": event_type,
            "state": delivery.state.value,
            "attempts": attempts.get(delivery.id, []),
            "next_attempt_at": _time(delivery.retry_after)
            if delivery.state is WebhookDeliveryState.PENDING
            else None,
            "last_error": delivery.last_error,
            "replay_of": delivery.replay_of,
            "created_at": _time(delivery.created_at),
            "finished_at": _time(delivery.finished_at),
        }
        for delivery, webhook_id, event_type in rows
    ]


# --- retention: the delivery log of finished events -------------------------------------------


def _finished_before(cutoff: datetime) -> Any:
    """Events older than ``cutoff`` whose every delivery is over (delivered or failed) and
    finished before it: an event still to deliver, or replayed lately, stays."""
    open_or_recent = exists(
        select(WebhookDelivery.id).where(
            WebhookDelivery.event_id == WebhookEvent.id,
            or_(
                WebhookDelivery.state == WebhookDeliveryState.PENDING,
                WebhookDelivery.finished_at.is_(None),
                WebhookDelivery.finished_at >= cutoff,
            ),
        )
    )
    return (WebhookEvent.created_at < cutoff) & ~open_or_recent


def count_finished_events(session: Session, cutoff: datetime) -> int:
    """How many events ``delete_finished_events`` would delete (``retention run --dry-run``)."""
    query = select(func.count()).select_from(WebhookEvent).where(_finished_before(cutoff))
    return int(session.scalar(query) or 0)


def delete_finished_events(
    session: Session, cutoff: datetime, *, limit: int, skip_locked: bool = False
) -> tuple[int, int]:
    """Delete up to ``limit`` finished events older than ``cutoff`` with their deliveries
    and attempts, in the caller's transaction; (events, attempts) deleted.

    The children are deleted first and by name rather than left to ``ON DELETE CASCADE``,
    which SQLite applies only with its foreign keys switched on. ``skip_locked`` (PostgreSQL)
    lets several nodes run the pass at once without handling the same rows.
    """
    query = (
        select(WebhookEvent.id)
        .where(_finished_before(cutoff))
        .order_by(WebhookEvent.id)
        .limit(limit)
    )
    if skip_locked:
        query = query.with_for_update(skip_locked=True)
    ids = list(session.scalars(query))
    if not ids:
        return 0, 0
    deliveries = select(WebhookDelivery.id).where(WebhookDelivery.event_id.in_(ids))
    attempts = session.execute(
        delete(WebhookAttempt)
        .where(WebhookAttempt.delivery_id.in_(deliveries))
        .execution_options(synchronize_session=False)
    )
    session.execute(
        delete(WebhookDelivery)
        .where(WebhookDelivery.event_id.in_(ids))
        .execution_options(synchronize_session=False)
    )
    session.execute(
        delete(WebhookEvent)
        .where(WebhookEvent.id.in_(ids))
        .execution_options(synchronize_session=False)
    )
    return len(ids), int(getattr(attempts, "rowcount", 0) or 0)
