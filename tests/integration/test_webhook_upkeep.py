"""Webhook upkeep: secrets sealed at rest, admins told of a failing endpoint, the log kept short.

Deliveries go over real HTTP to the tests' receiver on 127.0.0.1 and are verified with the
``standardwebhooks`` library, as a CRM verifies them; the admins' mail is read back from the
relay's outbound queue and the blob store, exactly the bytes the relay would send.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from email import policy
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import standardwebhooks
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.cli.main import main
from mailledger.config import RetentionSettings, Settings, WebhookSettings
from mailledger.dnsauth.resolver import Resolver
from mailledger.service.retention import run_retention
from mailledger.store import directory, migrate, webhooks
from mailledger.store.blobs import BlobStore
from mailledger.store.engine import make_engine
from mailledger.store.models import (
    EndpointState,
    OutboundKind,
    OutboundMessage,
    Staff,
    WebhookAttempt,
    WebhookDelivery,
    WebhookDeliveryState,
    WebhookEndpoint,
    WebhookEvent,
    utcnow,
)
from mailledger.store.secretbox import SecretBox, ensure_key_file, is_sealed
from mailledger.testing.webhookreceiver import Answer, Request, WebhookReceiver
from mailledger.web.webhooks import WebhookWorker

FAST = [0.0, 0.2, 0.2]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Private targets allowed (the receiver is on 127.0.0.1), a fast retry schedule."""
    return settings.model_copy(
        update={
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
def box(settings: Settings) -> SecretBox:
    """The box of the test's ``[secrets] key_file``."""
    return SecretBox.from_file(settings.secrets.key_file)


@pytest.fixture
def receiver() -> Any:
    """The tenant's CRM: records every request."""
    with WebhookReceiver() as server:
        yield server


def add_endpoint(sessions: sessionmaker[Session], box: SecretBox, url: str) -> tuple[int, str]:
    """An endpoint of the demo tenant; its id and its secret as `webhook add` prints it."""
    with sessions.begin() as session:
        tenant = directory.find_tenant(session, "acme")
        endpoint, secret = webhooks.add_endpoint(session, tenant, url, box=box)
        return endpoint.id, secret


def emit(sessions: sessionmaker[Session], n: int) -> None:
    """One message.quarantined event of the demo tenant."""
    with sessions.begin() as session:
        tenant = directory.find_tenant(session, "acme")
        webhooks.emit(session, tenant.id, webhooks.MESSAGE_QUARANTINED, {"n": n})


@contextlib.asynccontextmanager
async def running(
    sessions: sessionmaker[Session], settings: Settings, blobs: BlobStore
) -> AsyncIterator[WebhookWorker]:
    """The webhook worker running in this event loop until the block ends."""
    worker = WebhookWorker(sessions, settings, Resolver(settings.dns), blobs=blobs)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        await worker.stop()
        await task


async def received(receiver: WebhookReceiver, count: int) -> list[Request]:
    """Wait, off the event loop, for ``count`` requests."""
    return await asyncio.to_thread(receiver.wait_for, count, 20.0, None)


async def until(check: Callable[[], bool], seconds: float = 20.0) -> None:
    """Poll ``check`` (a database read) off the event loop until it holds."""
    deadline = time.monotonic() + seconds
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def verify(secret: str, request: Request) -> Any:
    """The payload, verified as a receiver verifies it (raises on a bad signature)."""
    return standardwebhooks.Webhook(secret).verify(request.body, request.headers)


def stored_secrets(engine: sa.Engine) -> list[str]:
    """Every secret column of every endpoint, read as the database holds it."""
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT secret, previous_secret FROM webhook_endpoints"))
        return [value for row in rows for value in row if value]


# --- secrets sealed at rest -------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.usefixtures("demo")
async def test_the_database_holds_no_secret_in_clear_and_deliveries_still_verify(
    sessions: sessionmaker[Session],
    settings: Settings,
    blobs: BlobStore,
    receiver: WebhookReceiver,
) -> None:
    """Added and rotated secrets are stored sealed; both secrets of a rotation still sign."""
    box = SecretBox.from_file(settings.secrets.key_file)
    ident, old = add_endpoint(sessions, box, receiver.url())
    with sessions.begin() as session:
        new = webhooks.rotate_secret(session, session.get_one(WebhookEndpoint, ident), box=box)
    engine = sessions.kw["bind"]
    kept = stored_secrets(engine)
    assert len(kept) == 2
    assert all(is_sealed(value) for value in kept)
    assert not any(secret in value for value in kept for secret in (old, new, "whsec_"))
    # The key opens them; another key does not.
    assert {box.open(value) for value in kept} == {old, new}
    emit(sessions, 1)
    async with running(sessions, settings, blobs):
        [request] = await received(receiver, 1)
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert verify(old, request) == verify(new, request) == json.loads(request.body)


@pytest.mark.usefixtures("demo")
async def test_a_secret_kept_in_clear_still_signs_and_is_sealed_on_first_use(
    sessions: sessionmaker[Session],
    settings: Settings,
    blobs: BlobStore,
    receiver: WebhookReceiver,
) -> None:
    """A row from before sealing (a database upgraded without the key) keeps working."""
    box = SecretBox.from_file(settings.secrets.key_file)
    ident, secret = add_endpoint(sessions, box, receiver.url())
    with sessions.begin() as session:
        session.get_one(WebhookEndpoint, ident).secret = secret  # as 0009 kept it
    emit(sessions, 1)
    async with running(sessions, settings, blobs):
        [request] = await received(receiver, 1)
    verify(secret, request)
    [kept] = stored_secrets(sessions.kw["bind"])
    assert is_sealed(kept)
    assert box.open(kept) == secret


@pytest.mark.usefixtures("demo")
async def test_a_wrong_key_fails_the_delivery_and_says_why(
    sessions: sessionmaker[Session],
    settings: Settings,
    blobs: BlobStore,
    receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    """A secret sealed under another key is never sent unsigned: the delivery fails, replayably."""
    other = tmp_path / "other.key"
    ensure_key_file(other)
    ident, _ = add_endpoint(sessions, SecretBox.from_file(other), receiver.url())
    emit(sessions, 1)

    def failed() -> bool:
        with sessions() as session:
            return session.get_one(WebhookEndpoint, ident).state is EndpointState.FAILING

    async with running(sessions, settings, blobs):
        await until(failed)
    assert receiver.requests == []
    with sessions() as session:
        delivery = session.scalars(select(WebhookDelivery)).one()
        assert delivery.state is WebhookDeliveryState.FAILED
        assert "cannot sign" in delivery.last_error
        assert "key_file" in delivery.last_error


def _fill_required(connection: sa.Connection, table: str, given: dict[str, Any]) -> None:
    """Insert a row with ``given`` and a plain value for every other required column."""
    columns = sa.inspect(connection).get_columns(table)
    row = dict(given)
    for column in columns:
        if column["name"] in row or column["nullable"] or column.get("autoincrement") is True:
            continue
        if column["name"] == "id":
            continue
        kind = column["type"].python_type if hasattr(column["type"], "python_type") else str
        row[column["name"]] = {bool: False, int: 0, dict: {}, list: []}.get(kind, "x")
        if "DATETIME" in str(column["type"]).upper() or "TIMESTAMP" in str(column["type"]):
            row[column["name"]] = utcnow()
    metadata = sa.MetaData()
    sa_table = sa.Table(table, metadata, autoload_with=connection)
    connection.execute(sa.insert(sa_table), [row])


def test_db_upgrade_seals_secrets_written_in_clear_and_downgrade_opens_them(
    tmp_path: Path,
) -> None:
    """Migration 0010 seals existing rows with the key `db upgrade` passes it, and loses no
    delivery on the way (SQLite copies the table); downgrading with the key gives the clear
    secrets back, and without it refuses rather than leave secrets nothing can read."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    key_file = tmp_path / "secret.key"
    ensure_key_file(key_file)
    migrate.upgrade(url, revision="0009")
    secret, previous = webhooks.new_secret(), webhooks.new_secret()
    engine = make_engine(url)

    def deliveries() -> int:
        with engine.connect() as connection:
            return int(connection.scalar(text("SELECT count(*) FROM webhook_deliveries")) or 0)

    try:
        with engine.begin() as connection:
            _fill_required(
                connection,
                "tenants",
                {"id": 1, "name": "acme", "capture_domain": "acme.capture.example"},
            )
            _fill_required(
                connection,
                "webhook_endpoints",
                {
                    "id": 1,
                    "tenant_id": 1,
                    "url": "https://crm.example/hook",
                    "events": [],
                    "secret": secret,
                    "previous_secret": previous,
                    "state": "active",
                    "state_reason": "",
                },
            )
            _fill_required(
                connection,
                "webhook_events",
                {"id": 1, "tenant_id": 1, "webhook_id": "msg_1", "type": "t", "body": "{}"},
            )
            _fill_required(
                connection,
                "webhook_deliveries",
                {"event_id": 1, "endpoint_id": 1, "state": "pending", "last_error": ""},
            )
        migrate.upgrade(url, revision="0010", secrets_key_file=str(key_file))
        kept = stored_secrets(engine)
        assert all(is_sealed(value) for value in kept)
        box = SecretBox.from_file(key_file)
        assert [box.open(value) for value in kept] == [secret, previous]
        assert deliveries() == 1
        with pytest.raises(RuntimeError, match="key_file"):
            migrate.downgrade(url, "0009")
        migrate.downgrade(url, "0009", secrets_key_file=str(key_file))
        assert stored_secrets(engine) == [secret, previous]
        assert deliveries() == 1
        # Upgraded without the key (a programmatic upgrade): the rows stay readable as they
        # are, and the worker seals them on first use.
        migrate.upgrade(url, revision="0010")
        assert stored_secrets(engine) == [secret, previous]
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_db_upgrade_command_creates_the_key_and_seals(tmp_path: Path) -> None:
    """`mailledger db upgrade` makes the key file first, so the migration can seal with it."""
    key_file = tmp_path / "keys" / "secret.key"
    config = tmp_path / "mailledger.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "db.sqlite"}"\n'
        f'[secrets]\nkey_file = "{key_file}"\n',
        encoding="utf-8",
    )
    assert main(["--config", str(config), "db", "upgrade"]) == 0
    assert key_file.stat().st_mode & 0o777 == 0o600


# --- a failing endpoint is told to the tenant's admins ---------------------------------------


def _make_admins(sessions: sessionmaker[Session]) -> list[str]:
    """Richard and a second admin; a third member who is not an admin, and a disabled admin."""
    with sessions.begin() as session:
        tenant = directory.find_tenant(session, "acme")
        richard = session.scalars(select(Staff).where(Staff.username == "richard")).one()
        richard.admin = True
        ann = directory.add_staff(session, tenant, "ann", ["ann@acme.example"])
        ann.admin = True
        directory.add_staff(session, tenant, "bob", ["bob@acme.example"])
        gone = directory.add_staff(session, tenant, "gone", ["gone@acme.example"])
        gone.admin = True
        gone.disabled_at = utcnow()
        return sorted([richard.primary_address, ann.primary_address])


def _admin_mail(sessions: sessionmaker[Session], blobs: BlobStore) -> list[Any]:
    with sessions() as session:
        rows = session.scalars(
            select(OutboundMessage)
            .where(OutboundMessage.kind == OutboundKind.SYSTEM)
            .order_by(OutboundMessage.id)
        ).all()
        return [
            (row.rcpt_to, email.message_from_bytes(blobs.get(row.blob), policy=policy.default))
            for row in rows
        ]


@pytest.mark.usefixtures("demo")
async def test_admins_are_mailed_once_per_failing_spell(
    sessions: sessionmaker[Session],
    settings: Settings,
    blobs: BlobStore,
    receiver: WebhookReceiver,
) -> None:
    """The endpoint turns failing: each active admin gets one mail saying which URL, since
    when, the last answer and how to fix it; more failures in that spell mail nobody again;
    a success ends the spell, and the next failing spell is mailed again."""
    box = SecretBox.from_file(settings.secrets.key_file)
    admins = _make_admins(sessions)
    ident, _ = add_endpoint(sessions, box, receiver.url())
    receiver.script("/hook", *[Answer(500, body=b"database down")] * (2 * len(FAST)))

    def state() -> EndpointState:
        with sessions() as session:
            return session.get_one(WebhookEndpoint, ident).state

    def mails() -> int:
        return len(_admin_mail(sessions, blobs))

    def finished(count: int) -> Callable[[], bool]:
        def check() -> bool:
            with sessions() as session:
                return (
                    session.scalar(
                        select(sa.func.count())
                        .select_from(WebhookDelivery)
                        .where(WebhookDelivery.state != WebhookDeliveryState.PENDING)
                    )
                    == count
                )

        return check

    async with running(sessions, settings, blobs):
        emit(sessions, 1)
        await until(lambda: mails() == len(admins))
        assert state() is EndpointState.FAILING
        emit(sessions, 2)  # fails for good too, in the same spell
        await until(finished(2))
    assert mails() == len(admins)
    sent = _admin_mail(sessions, blobs)
    assert sorted(rcpt for rcpts, _ in sent for rcpt in rcpts) == admins
    with sessions() as session:
        since = session.get_one(WebhookEndpoint, ident).state_changed_at
    assert since is not None
    for _, message in sent:
        body = message.get_body(("plain",)).get_content()
        assert message["From"].addresses[0].addr_spec == settings.service.system_sender
        assert message["Subject"] == f"Webhook endpoint failing: {receiver.url()}"
        assert receiver.url() in body
        assert since.isoformat(timespec="seconds").replace("+00:00", "Z") in body
        assert "HTTP 500: database down" in body
        assert "mailledger webhook list acme" in body
        assert f"mailledger webhook deliveries {ident}" in body
    # The receiver is back: a delivery succeeds and clears the spell; the next one is mailed.
    async with running(sessions, settings, blobs):
        emit(sessions, 3)
        await until(lambda: state() is EndpointState.ACTIVE)
        receiver.script("/hook", *[Answer(503)] * len(FAST))
        emit(sessions, 4)
        await until(lambda: mails() == 2 * len(admins))
    [*_, (_, last)] = _admin_mail(sessions, blobs)
    assert "HTTP 503" in last.get_body(("plain",)).get_content()


def test_no_admin_no_mail_and_the_notice_is_claimed_once(
    sessions: sessionmaker[Session], box: SecretBox, demo: DemoAddresses
) -> None:
    """A tenant without an active admin is owed no mail; a spell's mail is claimed only once."""
    ident, _ = add_endpoint(sessions, box, "https://crm.example/hook")
    with sessions.begin() as session:
        endpoint = session.get_one(WebhookEndpoint, ident)
        endpoint.state = EndpointState.FAILING
        endpoint.state_changed_at = utcnow()
    with sessions() as session:
        assert webhooks.failing_notice(session, ident) is None
        assert webhooks.failing_notices_owed(session) == [ident]
    with sessions.begin() as session:
        session.scalars(select(Staff)).first().admin = True  # type: ignore[union-attr]
    with sessions.begin() as session:
        notice = webhooks.failing_notice(session, ident)
        assert notice is not None
        assert webhooks.claim_failing_notice(session, notice)
    with sessions.begin() as session:
        assert not webhooks.claim_failing_notice(session, notice)
        assert webhooks.failing_notice(session, ident) is None
        assert webhooks.failing_notices_owed(session) == []


# --- retention of the delivery log ------------------------------------------------------------


def _event(
    session: Session,
    endpoint_id: int,
    tenant_id: int,
    *,
    days: float,
    states: list[tuple[WebhookDeliveryState, float | None]],
) -> int:
    """An event created ``days`` ago, with a delivery (and an attempt) per (state, finished
    so many days ago) pair."""
    at = utcnow() - timedelta(days=days)
    event = WebhookEvent(
        tenant_id=tenant_id,
        webhook_id=webhooks.new_webhook_id(),
        type=webhooks.MESSAGE_QUARANTINED,
        body="{}",
        created_at=at,
    )
    session.add(event)
    session.flush()
    for state, finished in states:
        delivery = WebhookDelivery(
            event_id=event.id,
            endpoint_id=endpoint_id,
            state=state,
            attempts=1,
            retry_after=at,
            created_at=at,
            finished_at=None if finished is None else utcnow() - timedelta(days=finished),
        )
        session.add(delivery)
        session.flush()
        session.add(WebhookAttempt(delivery_id=delivery.id, attempt=1, at=at, status=500))
    session.flush()
    return event.id


def _ids(sessions: sessionmaker[Session], model: Any) -> set[int]:
    with sessions() as session:
        return set(session.scalars(select(model.id)))


@pytest.mark.postgres
def test_retention_deletes_finished_events_past_webhook_days_and_never_an_undelivered_one(
    sessions: sessionmaker[Session], blobs: BlobStore, box: SecretBox, demo: DemoAddresses
) -> None:
    """Delivered and failed events past webhook_days go with their deliveries and attempts, in
    batches; pending ones, recent ones and lately replayed ones stay; 0 days keeps all."""
    ident, _ = add_endpoint(sessions, box, "https://crm.example/hook")
    done, failed, pending = (
        WebhookDeliveryState.DELIVERED,
        WebhookDeliveryState.FAILED,
        WebhookDeliveryState.PENDING,
    )
    with sessions.begin() as session:
        tenant_id = directory.find_tenant(session, "acme").id
        old = [
            _event(session, ident, tenant_id, days=40, states=[(done, 40)]),
            _event(session, ident, tenant_id, days=45, states=[(failed, 44)]),
            _event(session, ident, tenant_id, days=50, states=[(failed, 49), (done, 48)]),
        ]
        kept = [
            _event(session, ident, tenant_id, days=40, states=[(pending, None)]),
            _event(session, ident, tenant_id, days=40, states=[(failed, 39), (pending, None)]),
            _event(session, ident, tenant_id, days=40, states=[(failed, 39), (done, 1)]),
            _event(session, ident, tenant_id, days=5, states=[(done, 5)]),
        ]
    assert run_retention(sessions, blobs, RetentionSettings(webhook_days=0)).webhook_events == 0
    assert _ids(sessions, WebhookEvent) == set(old + kept)
    dry = run_retention(sessions, blobs, RetentionSettings(webhook_days=30), dry_run=True)
    assert dry.webhook_events == len(old)
    assert _ids(sessions, WebhookEvent) == set(old + kept)
    report = run_retention(sessions, blobs, RetentionSettings(webhook_days=30, batch_size=1))
    assert (report.webhook_events, report.webhook_attempts) == (3, 4)
    assert _ids(sessions, WebhookEvent) == set(kept)
    with sessions() as session:
        left = set(session.scalars(select(WebhookDelivery.event_id)))
        assert left == set(kept)
        attempts = session.scalar(select(sa.func.count()).select_from(WebhookAttempt))
        assert attempts == 6  # one per remaining delivery
    again = run_retention(sessions, blobs, RetentionSettings(webhook_days=30))
    assert again.webhook_events == 0


def test_retention_run_reports_webhook_events(
    settings: Settings,
    sessions: sessionmaker[Session],
    box: SecretBox,
    demo: DemoAddresses,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`retention run` counts and deletes the old delivery log by the default 30 days."""
    ident, _ = add_endpoint(sessions, box, "https://crm.example/hook")
    with sessions.begin() as session:
        tenant_id = directory.find_tenant(session, "acme").id
        _event(session, ident, tenant_id, days=31, states=[(WebhookDeliveryState.DELIVERED, 31)])
    config = Path(settings.storage.blob_dir).parent / "retention.toml"
    config.write_text(
        f'[database]\nurl = "{settings.database.url}"\n'
        f'[storage]\nblob_dir = "{settings.storage.blob_dir}"\n',
        encoding="utf-8",
    )
    assert main(["--config", str(config), "retention", "run", "--dry-run", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["enabled"], row["webhook_events"]) == (True, 1)
    assert main(["--config", str(config), "retention", "run"]) == 0
    assert "1 finished webhook event(s) (1 attempt(s))" in capsys.readouterr().out
    assert _ids(sessions, WebhookEvent) == set()


def test_every_feed_index_exists(engine: sa.Engine) -> None:
    """The indexes this revision adds are in the models (and so in every new database)."""
    inspector = sa.inspect(engine)
    found = {
        (table, tuple(index["column_names"]))
        for table in ("attachments", "contacts", "activities")
        for index in inspector.get_indexes(table)
    }
    assert ("attachments", ("activity_id",)) in found
    assert ("contacts", ("company_id",)) in found
    assert ("activities", ("tenant_id", "occurred_at", "id")) in found


def test_a_fresh_database_upgrade_builds_the_same_indexes(tmp_path: Path) -> None:
    """`db upgrade` (migration 0010) creates the indexes the models declare."""
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        names = {
            index["name"]
            for table in ("attachments", "contacts", "activities")
            for index in sa.inspect(engine).get_indexes(table)
        }
    finally:
        engine.dispose()
    assert {
        "ix_attachments_activity_id",
        "ix_contacts_company_id",
        "ix_activities_tenant_id_occurred_at_id",
    } <= names
