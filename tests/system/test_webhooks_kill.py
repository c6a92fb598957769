"""The webhook outbox outlives a server killed with SIGKILL in the middle of a delivery.

The server runs as a subprocess, as an operator runs it. The CRM (a recording HTTP server on
127.0.0.1) holds every answer back for a moment; once a few requests have arrived, and so
while others are in flight, the server is killed with SIGKILL. After a restart every event
must reach the CRM at least once (receivers deduplicate on ``webhook-id``), and a mail
captured after the restart is announced too, through the processing pipeline.
"""

from __future__ import annotations

import smtplib
import time
from collections import Counter
from pathlib import Path

import pytest
import standardwebhooks
from sqlalchemy import select

from mailledger.cli.demo import seed_demo
from mailledger.store import directory, webhooks
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.models import Base, WebhookDelivery, WebhookDeliveryState, WebhookEvent
from mailledger.store.secretbox import SecretBox, ensure_key_file
from mailledger.testing.mail import make_email
from mailledger.testing.ports import free_port
from mailledger.testing.servers import ServerProcess, write_config
from mailledger.testing.webhookreceiver import WebhookReceiver

pytestmark = pytest.mark.slow

EVENTS = 12
LEASE_SECONDS = 1.5


def test_every_event_arrives_after_a_sigkill_mid_delivery(tmp_path: Path) -> None:
    """SIGKILL while the CRM holds its answers: after a restart nothing is missing."""
    database = f"sqlite:///{tmp_path / 'hooks.db'}"
    engine = make_engine(database)
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    port = free_port()
    key_file = tmp_path / "secret.key"
    ensure_key_file(key_file)
    config = write_config(
        tmp_path / "hooks.toml",
        database_url=database,
        blob_dir=tmp_path / "blobs",
        capture_port=port,
        verify={"demo_trust_loopback": True},
        processing={"poll_interval_seconds": 0.05},
        webhooks={
            "allow_private_targets": True,
            "retry_schedule_seconds": [0.0, 0.2, 0.2, 0.5, 1.0, 1.0, 1.0, 1.0],
            "lease_seconds": LEASE_SECONDS,
            "poll_interval_seconds": 0.05,
            "max_concurrent": 2,
            "timeout_seconds": 5.0,
        },
        secrets={"key_file": str(key_file)},
    )
    with WebhookReceiver(hold_seconds=0.3) as crm:
        with sessions.begin() as session:
            seed_demo(session)
            tenant = directory.find_tenant(session, "acme")
            box = SecretBox.from_file(key_file)
            _, secret = webhooks.add_endpoint(session, tenant, crm.url(), box=box)
            for n in range(EVENTS):
                webhooks.emit(session, tenant.id, webhooks.MESSAGE_QUARANTINED, {"n": n})
        with sessions() as session:
            expected = set(session.scalars(select(WebhookEvent.webhook_id)))
        assert len(expected) == EVENTS
        server = ServerProcess.for_config(config, port=port, log=tmp_path / "server.log")
        try:
            server.start()
            crm.wait_for(3, timeout_seconds=30)
            server.kill()  # two requests are being held by the CRM right now
            killed_at = len(crm.requests)
            assert killed_at < EVENTS, "everything was delivered before the kill"
            server.start()
            deadline = time.monotonic() + 60
            while expected - {r.headers["webhook-id"] for r in crm.requests}:
                assert time.monotonic() < deadline, server.log_tail()
                time.sleep(0.05)
            # Mail captured after the restart is announced through the processing pipeline.
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                smtp.sendmail(
                    "richard.smith@gmail.com",
                    ["richard@acme.capture.example"],
                    make_email(message_id="after-kill@client.example"),
                )
            deadline = time.monotonic() + 30
            while not any(b"activity.created" in r.body for r in crm.requests):
                assert time.monotonic() < deadline, server.log_tail()
                time.sleep(0.05)
            server.stop()
        finally:
            server.kill()
    seen = Counter(r.headers["webhook-id"] for r in crm.requests)
    assert expected <= set(seen)
    # Only what was in flight at the kill (two at most, max_concurrent) may arrive twice.
    assert sum(count - 1 for count in seen.values()) <= 2
    for request in crm.requests:
        standardwebhooks.Webhook(secret).verify(request.body, request.headers)
    with sessions() as session:
        states = set(session.scalars(select(WebhookDelivery.state)))
    assert states == {WebhookDeliveryState.DELIVERED}
    engine.dispose()
