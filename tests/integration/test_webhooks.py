"""Webhooks end to end: events written with what they report, delivered signed over real HTTP.

The receiver is a real HTTP server on 127.0.0.1 (``mailledger.testing.webhookreceiver``); the
worker is the one ``serve()`` runs, in the test's event loop. Every delivery is verified with
the ``standardwebhooks`` library, as a CRM would verify it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
import standardwebhooks
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.capture.processor import process_message
from mailledger.cli.demo import DemoAddresses
from mailledger.config import DNSSettings, Settings, VerifySettings, WebhookSettings
from mailledger.dnsauth.resolver import Resolver
from mailledger.store import directory, queries, webhooks
from mailledger.store.blobs import BlobStore
from mailledger.store.models import (
    Activity,
    EndpointState,
    MessageState,
    ReceivedMessage,
    WebhookAttempt,
    WebhookDelivery,
    WebhookDeliveryState,
    WebhookEndpoint,
    WebhookEvent,
)
from mailledger.store.regarding import Regarding, set_regarding
from mailledger.store.secretbox import SecretBox
from mailledger.testing.mail import make_email, store_received
from mailledger.testing.webhookreceiver import Answer, Request, WebhookReceiver
from mailledger.verify.authenticate import Authenticator
from mailledger.web.webhooks import WebhookWorker

RICHARD = "richard@acme.capture.example"
FAST = [0.0, 0.2, 0.2]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Loopback trusted (the demo), private targets allowed, a fast retry schedule."""
    return settings.model_copy(
        update={
            "verify": VerifySettings(demo_trust_loopback=True),
            "webhooks": WebhookSettings(
                allow_private_targets=True,
                retry_schedule_seconds=FAST,
                timeout_seconds=2.0,
                poll_interval_seconds=0.05,
                lease_seconds=5.0,
            ),
        }
    )


@pytest.fixture
def receiver() -> Any:
    """The tenant's CRM: records every request."""
    with WebhookReceiver() as server:
        yield server


@pytest.fixture
def authenticator(settings: Settings) -> Authenticator:
    """Never asked: loopback trust answers first."""
    unreachable = DNSSettings(nameservers=["127.0.0.1:9"], timeout_seconds=0.2)
    return Authenticator(Resolver(unreachable), settings)


Process = Callable[..., int]


@pytest.fixture
def process(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    authenticator: Authenticator,
    demo: DemoAddresses,
) -> Process:
    """Store raw bytes for Richard's capture address and process them; the message's id."""

    def run(raw: bytes, rcpts: list[str] | None = None) -> int:
        message_id = store_received(sessions, blobs, raw, rcpts or [RICHARD])
        with sessions.begin() as session:
            message = session.get_one(ReceivedMessage, message_id)
            process_message(session, blobs, message, settings, authenticator)
        return message_id

    return run


def add_endpoint(
    sessions: sessionmaker[Session], settings: Settings, url: str, events: list[str] | None = None
) -> tuple[int, str]:
    """An endpoint of the demo tenant; its id and secret (kept sealed with the test's key)."""
    with sessions.begin() as session:
        tenant = directory.find_tenant(session, "acme")
        endpoint, secret = webhooks.add_endpoint(
            session, tenant, url, events or [], box=box_of(settings)
        )
        return endpoint.id, secret


def box_of(settings: Settings) -> SecretBox:
    """The box of the test's ``[secrets] key_file`` (the settings fixture creates it)."""
    return SecretBox.from_file(settings.secrets.key_file)


@contextlib.asynccontextmanager
async def running(
    sessions: sessionmaker[Session], settings: Settings
) -> AsyncIterator[WebhookWorker]:
    """The webhook worker running in this event loop until the block ends."""
    worker = WebhookWorker(sessions, settings, Resolver(settings.dns))
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        await worker.stop()
        await task


async def received(receiver: WebhookReceiver, count: int, path: str | None = None) -> list[Request]:
    """Wait, off the event loop, for ``count`` requests."""
    return await asyncio.to_thread(receiver.wait_for, count, 20.0, path)


async def until(check: Callable[[], bool], seconds: float = 20.0) -> None:
    """Poll ``check`` (a database read) off the event loop until it holds."""
    deadline = time.monotonic() + seconds
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def verify(secret: str, request: Request) -> Any:
    """The payload, verified as a receiver verifies it (raises on a bad signature)."""
    return standardwebhooks.Webhook(secret).verify(request.body, request.headers)


def delivery_states(sessions: sessionmaker[Session]) -> list[WebhookDeliveryState]:
    with sessions() as session:
        return list(session.scalars(select(WebhookDelivery.state).order_by(WebhookDelivery.id)))


def attempts(sessions: sessionmaker[Session]) -> list[WebhookAttempt]:
    with sessions() as session:
        return list(session.scalars(select(WebhookAttempt).order_by(WebhookAttempt.id)))


def endpoint_state(sessions: sessionmaker[Session], ident: int) -> tuple[EndpointState, str]:
    with sessions() as session:
        row = session.get_one(WebhookEndpoint, ident)
        return row.state, row.state_reason


def event_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(WebhookEvent)) or 0)


# --- events, written with what they report --------------------------------------------------


@pytest.mark.postgres
async def test_activity_created_is_delivered_signed_with_the_list_representation(
    process: Process,
    sessions: sessionmaker[Session],
    settings: Settings,
    receiver: WebhookReceiver,
) -> None:
    """A recorded email reaches the CRM once, verifiable, carrying `activities list --json`."""
    _, secret = add_endpoint(sessions, settings, receiver.url())
    process(make_email(message_id="hook-1@client.example"))
    async with running(sessions, settings):
        [request] = await received(receiver, 1)
        await until(lambda: delivery_states(sessions) == [WebhookDeliveryState.DELIVERED])
    payload = verify(secret, request)
    assert payload["type"] == "activity.created"
    assert payload["timestamp"].endswith("Z")
    with sessions() as session:
        [listed] = queries.iter_activities(session, base_url=settings.http.public_url)
    assert payload["data"] == json.loads(json.dumps(listed))
    assert payload["data"]["links"]["self"].startswith(settings.http.public_url)
    assert payload["data"]["message_id"] == "hook-1@client.example"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"].startswith("msg_")
    # A body or a timestamp changed on the way fails verification.
    forged = Request(request.path, request.headers, request.body.replace(b"Quote", b"Quota"), 0)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        verify(secret, forged)
    moved = dict(request.headers)
    moved["webhook-timestamp"] = str(int(moved["webhook-timestamp"]) - 60)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        verify(secret, Request(request.path, moved, request.body, 0))
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        verify(webhooks.new_secret(), request)


@pytest.mark.postgres
async def test_a_merge_is_an_update_with_the_new_source(
    process: Process,
    sessions: sessionmaker[Session],
    settings: Settings,
    receiver: WebhookReceiver,
) -> None:
    """The same email arriving by a second path sends activity.updated with both sources."""
    _, secret = add_endpoint(sessions, settings, receiver.url())
    raw = make_email(message_id="twice@client.example")
    process(raw)
    process(raw)
    async with running(sessions, settings):
        requests = await received(receiver, 2)
    payloads = sorted((verify(secret, r) for r in requests), key=lambda p: p["timestamp"])
    assert [p["type"] for p in payloads] == ["activity.created", "activity.updated"]
    assert payloads[0]["data"]["id"] == payloads[1]["data"]["id"]
    assert len(payloads[0]["data"]["sources"]) == 1
    assert len(payloads[1]["data"]["sources"]) == 2
    assert len({r.headers["webhook-id"] for r in requests}) == 2
    # The merge moved updated_at, so a consumer of the pull API sees the activity changed.
    assert payloads[1]["data"]["updated_at"] > payloads[0]["data"]["updated_at"]


@pytest.mark.postgres
async def test_a_changed_regarding_is_an_update_and_a_repeated_one_is_not(
    process: Process,
    sessions: sessionmaker[Session],
    settings: Settings,
    receiver: WebhookReceiver,
) -> None:
    """Linking an activity to a CRM record sends activity.updated once, in that transaction."""
    _, secret = add_endpoint(sessions, settings, receiver.url())
    process(make_email(message_id="regard@client.example"))
    with sessions() as session:
        activity = session.scalars(select(Activity)).one()
        tenant_id, activity_id = activity.tenant_id, activity.id
    link = Regarding("opportunity", "42", "Spring order")
    for _ in range(2):  # the second time nothing changes: no event
        with sessions.begin() as session:
            set_regarding(session, tenant_id, activity_id, link)
    assert event_count(sessions) == 2
    async with running(sessions, settings):
        requests = await received(receiver, 2)
    payloads = sorted((verify(secret, r) for r in requests), key=lambda p: p["timestamp"])
    assert [p["type"] for p in payloads] == ["activity.created", "activity.updated"]
    assert payloads[1]["data"]["regarding"]["id"] == "42"


@pytest.mark.postgres
async def test_quarantine_sends_message_quarantined(
    process: Process,
    sessions: sessionmaker[Session],
    settings: Settings,
    receiver: WebhookReceiver,
) -> None:
    """Mail from an unknown sender is quarantined, and the CRM hears why."""
    _, secret = add_endpoint(sessions, settings, receiver.url(), ["message.quarantined"])
    message_id = process(make_email(sender="Stranger <who@unknown.example>", message_id="q@x"))
    process(make_email(message_id="not-sent@client.example"))  # recorded: not subscribed
    async with running(sessions, settings):
        [request] = await received(receiver, 1)
        await asyncio.sleep(0.3)
    assert len(receiver.requests) == 1
    payload = verify(secret, request)
    assert payload["type"] == "message.quarantined"
    with sessions() as session:
        message = session.get_one(ReceivedMessage, message_id)
        assert message.state is MessageState.QUARANTINED
        data = payload["data"]
        assert data["id"] == message.id
        assert data["queue_id"] == message.queue_id
        assert data["message_id"] == "q@x"
        assert data["reason"] == message.reason
        assert data["rcpt_to"] == [RICHARD]
        assert data["received_at"] and data["quarantined_at"]


@pytest.mark.postgres
@pytest.mark.usefixtures("demo")
def test_a_rolled_back_processing_step_leaves_no_event(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    authenticator: Authenticator,
    receiver: WebhookReceiver,
) -> None:
    """The event is written in the processing transaction: a rollback takes it away too."""
    add_endpoint(sessions, settings, receiver.url())
    recorded = store_received(
        sessions, blobs, make_email(message_id="rb@client.example"), [RICHARD]
    )
    quarantined = store_received(
        sessions, blobs, make_email(sender="who@unknown.example", message_id="rq@x"), [RICHARD]
    )
    for message_id in (recorded, quarantined):
        session = sessions()
        try:
            session.begin()
            message = session.get_one(ReceivedMessage, message_id)
            process_message(session, blobs, message, settings, authenticator)
            session.flush()
            assert session.scalar(select(func.count()).select_from(WebhookEvent)) == 1
            assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 1
            session.rollback()
        finally:
            session.close()
    assert event_count(sessions) == 0
    # Committed, the same processing leaves one event each.
    for message_id in (recorded, quarantined):
        with sessions.begin() as session:
            message = session.get_one(ReceivedMessage, message_id)
            process_message(session, blobs, message, settings, authenticator)
    with sessions() as session:
        types = sorted(session.scalars(select(WebhookEvent.type)))
    assert types == ["activity.created", "message.quarantined"]


@pytest.mark.postgres
def test_no_endpoint_no_event(process: Process, sessions: sessionmaker[Session]) -> None:
    """A tenant without webhooks gets no outbox rows: the pull API is its record."""
    process(make_email())
    assert event_count(sessions) == 0


# --- delivery rules -------------------------------------------------------------------------


async def test_a_500_is_retried_with_the_same_id_and_a_fresh_timestamp(
    process: Process,
    sessions: sessionmaker[Session],
    settings: Settings,
    receiver: WebhookReceiver,
) -> None:
    """A failed attempt is retried on the schedule; every attempt is kept and listed."""
    schedule = [0.0, 1.2]
    settings = settings.model_copy(
        update={
            "webhooks": settings.webhooks.model_copy(update={"retry_schedule_seconds": schedule})
        }
    )
    ident, secret = add_endpoint(sessions, settings, receiver.url())
    receiver.script("/hook", Answer(500, body=b"database down"))
    process(make_email())
    async with running(sessions, settings):
        first, second = await received(receiver, 2)
        await until(lambda: delivery_states(sessions) == [WebhookDeliveryState.DELIVERED])
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.headers["webhook-timestamp"] != second.headers["webhook-timestamp"]
    assert first.body == second.body
    verify(secret, first)
    verify(secret, second)
    assert second.at - first.at >= 1.2 * 0.9
    with sessions() as session:
        [delivery] = webhooks.deliveries(session, session.get_one(WebhookEndpoint, ident))
    assert [a["status"] for a in delivery["attempts"]] == [500, 200]
    assert delivery["attempts"][0]["response"] == "database down"
    assert delivery["attempts"][0]["next_attempt_at"] is not None
    assert all(a["latency_ms"] >= 0 for a in delivery["attempts"])


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured(
    status: int,
    process: Process,
    sessions: sessionmaker[Session],
    settings: Settings,
    receiver: WebhookReceiver,
) -> None:
    """A 429 or 503 with Retry-After is not tried again before the time it asked for."""
    add_endpoint(sessions, settings, receiver.url())
    receiver.script("/hook", Answer(status, {"Retry-After": "2"}, b"slow down"))
    process(make_email())
    async with running(sessions, settings):
        first, second = await received(receiver, 2)
    assert second.at - first.at >= 1.9  # the schedule alone says 0.2 s


async def test_410_disables_the_endpoint(
    process: Process,
    sessions: sessionmaker[Session],
    settings: Settings,
    receiver: WebhookReceiver,
) -> None:
    """410 Gone: the delivery fails, the endpoint is disabled, and nothing more goes there."""
    ident, _ = add_endpoint(sessions, settings, receiver.url())
    receiver.script("/hook", Answer(410, body=b"no such hook"))
    process(make_email())
    async with running(sessions, settings):
        await received(receiver, 1)
        await until(lambda: endpoint_state(sessions, ident)[0] is EndpointState.DISABLED)
        process(make_email())  # no endpoint to send it to
        await asyncio.sleep(0.3)
    assert len(receiver.requests) == 1
    assert delivery_states(sessions) == [WebhookDeliveryState.FAILED]
    assert "410" in endpoint_state(sessions, ident)[1]
    with sessions.begin() as session, pytest.raises(webhooks.WebhookError, match="enable"):
        webhooks.replay(session, session.scalars(select(WebhookDelivery.id)).one())


async def test_redirects_are_not_followed(
    process: Process,
    sessions: sessionmaker[Session],
    settings: Settings,
    receiver: WebhookReceiver,
) -> None:
    """A 3xx is a failed attempt: the Location is never requested."""
    add_endpoint(sessions, settings, receiver.url())
    receiver.script("/hook", Answer(307, {"Location": receiver.url("/elsewhere")}))
    process(make_email())
    async with running(sessions, settings):
        await received(receiver, 2, "/hook")
    assert receiver.to("/elsewhere") == []
    assert [a.status for a in attempts(sessions)][:2] == [307, 200]


async def test_rotation_signs_with_both_secrets_until_the_old_expires(
    process: Process,
    sessions: sessionmaker[Session],
    settings: Settings,
    receiver: WebhookReceiver,
) -> None:
    """During a rotation each secret's signature is present, so either verifies."""
    ident, old = add_endpoint(sessions, settings, receiver.url())
    with sessions.begin() as session:
        new = webhooks.rotate_secret(
            session, session.get_one(WebhookEndpoint, ident), box=box_of(settings)
        )
    process(make_email())
    async with running(sessions, settings):
        [request] = await received(receiver, 1)
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert verify(old, request) == verify(new, request)
    # Once the overlap is over only the new secret signs.
    with sessions.begin() as session:
        endpoint = session.get_one(WebhookEndpoint, ident)
        newest = webhooks.rotate_secret(
            session, endpoint, box=box_of(settings), overlap=timedelta(0)
        )
    process(make_email())
    async with running(sessions, settings):
        [_, request] = await received(receiver, 2)
    assert len(request.headers["webhook-signature"].split(" ")) == 1
    verify(newest, request)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        verify(new, request)


async def test_a_used_up_schedule_marks_the_endpoint_failing(
    process: Process,
    sessions: sessionmaker[Session],
    settings: Settings,
    receiver: WebhookReceiver,
) -> None:
    """Every attempt fails: the delivery fails, the endpoint is failing; a success clears it."""
    ident, _ = add_endpoint(sessions, settings, receiver.url())
    receiver.script("/hook", *[Answer(500)] * len(FAST))
    process(make_email())
    async with running(sessions, settings):
        await received(receiver, len(FAST))
        await until(lambda: endpoint_state(sessions, ident)[0] is EndpointState.FAILING)
        assert delivery_states(sessions) == [WebhookDeliveryState.FAILED]
        with sessions() as session:
            [listed] = webhooks.endpoints(session)
        assert listed["state"] == "failing"
        assert "3 attempts" in listed["state_reason"]
        # The operator replays it once the CRM is back: delivered, and the endpoint is active.
        with sessions.begin() as session:
            again = webhooks.replay(session, session.scalars(select(WebhookDelivery.id)).one())
            assert again.replay_of is not None
        await received(receiver, len(FAST) + 1)
        await until(lambda: endpoint_state(sessions, ident)[0] is EndpointState.ACTIVE)
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert len(ids) == 1  # a replay carries the event's webhook-id


async def test_a_slow_receiver_times_out(
    process: Process,
    sessions: sessionmaker[Session],
    settings: Settings,
    receiver: WebhookReceiver,
) -> None:
    """An answer slower than timeout_seconds is a failed attempt, kept with its error."""
    settings = settings.model_copy(
        update={"webhooks": settings.webhooks.model_copy(update={"timeout_seconds": 0.5})}
    )
    add_endpoint(sessions, settings, receiver.url())
    receiver.script("/hook", Answer(200, delay_seconds=1.5))
    process(make_email())
    async with running(sessions, settings):
        await received(receiver, 2)
        await until(lambda: WebhookDeliveryState.DELIVERED in delivery_states(sessions))
    first = attempts(sessions)[0]
    assert first.status is None
    assert "timed out after 0.5 s" in first.error


async def test_private_targets_are_refused_without_the_setting(
    process: Process,
    sessions: sessionmaker[Session],
    settings: Settings,
    receiver: WebhookReceiver,
) -> None:
    """Without allow_private_targets nothing is sent to 127.0.0.1; the attempt says why."""
    strict = settings.model_copy(
        update={"webhooks": settings.webhooks.model_copy(update={"allow_private_targets": False})}
    )
    add_endpoint(sessions, settings, receiver.url())
    process(make_email())
    async with running(sessions, strict):
        await until(lambda: len(attempts(sessions)) >= 1)
    await asyncio.sleep(0.2)
    assert receiver.requests == []
    first = attempts(sessions)[0]
    assert "127.0.0.1 is a loopback address" in first.error
    assert "allow_private_targets" in first.error
