"""Held mail: relayed mail waits for its DKIM key, then goes out signed; or unsigned on order."""

from __future__ import annotations

import dkim
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.domains.keys import create_key
from mailledger.relay.held import RELEASED_UNSIGNED, release_held
from mailledger.store import directory, outbox
from mailledger.store.blobs import BlobStore
from mailledger.store.models import DkimKey, OutboundKind, OutboundMessage, OutboundState
from mailledger.store.secretbox import SecretBox
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.mail import make_email

pytestmark = pytest.mark.postgres


def _hold(sessions: sessionmaker[Session], blobs: BlobStore, settings: Settings) -> tuple[str, str]:
    """A key for acme.example and one held message from Richard; (queue id, TXT name)."""
    with sessions.begin() as session:
        tenant = directory.find_tenant(session, "acme")
        box = SecretBox.from_file(settings.secrets.key_file)
        key = create_key(session, tenant, "acme.example", box)
        raw = make_email(sender="richard@acme.example", to="carol@client.example")
        rows = outbox.enqueue(
            session,
            blobs,
            raw=raw,
            mail_from="richard@acme.example",
            rcpt_to=["carol@client.example"],
            kind=OutboundKind.RELAY,
            tenant_id=tenant.id,
            signing="held: no verified key",
            held=True,
        )
        return rows[0].queue_id, f"{key.selector}._domainkey.acme.example"


async def test_held_mail_is_signed_and_queued_once_the_key_is_published(
    *,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
    dns_server: DNSServer,
    resolver: Resolver,
) -> None:
    """Before the record is published the mail stays held; after, it is signed and queued."""
    queue_id, name = _hold(sessions, blobs, settings)
    [first] = await release_held(sessions, blobs, resolver, settings)
    assert not first.released
    assert "not verified" in first.signing
    with sessions() as session:
        key = session.scalars(select(DkimKey)).one()
        dns_server.add(name, "TXT", key.public_record)
    resolver.clear_cache()
    [second] = await release_held(sessions, blobs, resolver, settings)
    assert second.released, second.signing
    assert second.signing.startswith("signed d=acme.example")
    with sessions() as session:
        row = session.scalars(select(OutboundMessage)).one()
        assert row.state is OutboundState.QUEUED
        assert row.queue_id == queue_id
        signed = blobs.get(row.blob)
    assert signed.startswith(b"DKIM-Signature:")
    assert dkim.verify(signed, dnsfunc=resolver.dkim_dnsfunc)


async def test_operator_can_release_held_mail_unsigned(
    *,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
    resolver: Resolver,
) -> None:
    """`queue release --unsigned` sends it without a signature, and says so on the row."""
    queue_id, _ = _hold(sessions, blobs, settings)
    [result] = await release_held(
        sessions, blobs, resolver, settings, ident=queue_id, unsigned=True
    )
    assert result.released
    with sessions() as session:
        row = session.scalars(select(OutboundMessage)).one()
        assert (row.state, row.signing) == (OutboundState.QUEUED, RELEASED_UNSIGNED)
    with pytest.raises(outbox.OutboxError, match="is not held"):
        await release_held(sessions, blobs, resolver, settings, ident=queue_id)
