"""DKIM keys: generated, the private half sealed in the database, checked against the record."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.domains import keys
from mailledger.domains.keys import DkimKeyError
from mailledger.store.directory import add_tenant, find_tenant
from mailledger.store.models import DkimKey
from mailledger.store.secretbox import SecretBox, ensure_key_file
from mailledger.testing.dnsserver import DNSServer

MESSAGE = (
    b"From: Richard <richard@acme.example>\r\nTo: carol@client.example\r\n"
    b"Subject: Quote\r\nMessage-ID: <1@acme.example>\r\n\r\nHello Carol\r\n"
)


@pytest.fixture
def box(settings: Settings) -> SecretBox:
    return SecretBox.from_file(settings.secrets.key_file)


def _create(
    sessions: sessionmaker[Session], box: SecretBox, selector: str | None = "s1", **kw: str
) -> DkimKey:
    with sessions.begin() as session:
        tenant = find_tenant(session, "acme")
        domain = kw.pop("domain", "acme.example")
        key = keys.create_key(session, tenant, domain, box, selector=selector, **kw)  # type: ignore[arg-type]
        session.expunge(key)
    return key


def _publish(server: DNSServer, key: DkimKey, text: str | list[str] | None = None) -> None:
    name = keys.record_name(key.selector, key.domain)
    server.remove(name, "TXT")
    server.add(name, "TXT", key.public_record if text is None else text)


@pytest.mark.usefixtures("demo")
@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_keys_are_sealed_in_the_database_and_sign_what_the_record_verifies(
    *,
    sessions: sessionmaker[Session],
    box: SecretBox,
    settings: Settings,
    dns_server: DNSServer,
    resolver: Resolver,
    algorithm: str,
) -> None:
    """The sealed private key signs with dkimpy; the printed record verifies it through DNS.

    Nothing is written to disk: the row alone, opened with the secrets key, signs.
    """
    key = _create(sessions, box, algorithm=algorithm)
    assert key.private_key is not None and key.private_key.startswith("fernet:")
    assert key.private_key_path is None
    assert not Path(settings.relay.dkim_key_dir).exists()
    private = keys.load_private_key(key, box)
    assert private.decode() not in key.private_key  # sealed, not merely encoded
    assert key.public_record.startswith(f"v=DKIM1; k={algorithm}; p=")
    assert key.active and key.verified_at is None and key.retired_at is None
    assert key.activated_at == key.created_at
    if algorithm == "ed25519":
        # RFC 8463 §4.2: p= is the raw 32-byte public key; dkimpy's private form is the raw seed.
        assert len(base64.b64decode(key.public_record.split("p=")[1])) == 32
        assert len(base64.b64decode(private)) == 32
    else:
        rsa_key = serialization.load_pem_private_key(private, None)
        assert rsa_key.key_size == 2048  # type: ignore[union-attr]
    assert keys.public_key_b64(algorithm, private) == keys.our_public_key(key)
    signature = dkim.sign(
        MESSAGE,
        key.selector.encode(),
        key.domain.encode(),
        private,
        signature_algorithm=b"rsa-sha256" if algorithm == "rsa" else b"ed25519-sha256",
        include_headers=[b"from", b"to", b"subject"],
    )
    _publish(dns_server, key)
    assert dkim.verify(signature + MESSAGE, dnsfunc=resolver.dkim_dnsfunc)
    check = keys.verify_key_published(resolver, key)
    assert check.matches, check.reason
    assert check.fix == ""


def test_the_domain_must_be_a_verified_customer_domain_of_the_tenant(
    sessions: sessionmaker[Session], demo: DemoAddresses, box: SecretBox
) -> None:
    """Keys are only made for the tenant's own, verified customer domains."""
    with sessions.begin() as session:
        add_tenant(session, "other", "other.capture.example", ["other.example"])
    with pytest.raises(DkimKeyError, match="not a customer domain of tenant 'acme'"):
        _create(sessions, box, domain="other.example")
    with pytest.raises(DkimKeyError, match="not a customer domain"):
        _create(sessions, box, domain="acme.capture.example")
    with sessions() as session:
        assert session.scalar(select(DkimKey.id)) is None


@pytest.mark.parametrize("selector", ["", "-bad", "a_b", "a..b", "x" * 64, "sp ace"])
def test_bad_selectors_are_refused(
    sessions: sessionmaker[Session], demo: DemoAddresses, selector: str
) -> None:
    """A selector must be a sub-domain (RFC 6376 §3.1): it names the DNS record."""
    with pytest.raises(DkimKeyError, match="selector"):
        keys.check_selector(selector)


def test_first_key_is_active_later_ones_wait_and_selectors_are_unique(
    sessions: sessionmaker[Session], demo: DemoAddresses, box: SecretBox
) -> None:
    """A domain's first key is active; the next is not; a used selector is refused."""
    first = _create(sessions, box, selector=None)
    assert first.selector == f"ml{datetime.now(UTC):%Y%m}"
    second = _create(sessions, box, selector=None)
    assert second.selector == f"{first.selector}-2"
    assert first.active and not second.active
    assert second.activated_at is None
    with pytest.raises(DkimKeyError, match="already has a key"):
        _create(sessions, box, selector=first.selector.upper())
    with sessions() as session:
        assert session.scalar(select(DkimKey.id).where(DkimKey.selector == "S1")) is None


def test_verify_reports_missing_wrong_split_and_timeout(
    sessions: sessionmaker[Session],
    demo: DemoAddresses,
    box: SecretBox,
    dns_server: DNSServer,
    resolver: Resolver,
) -> None:
    """Each way a record can be wrong gets its own reason and the record that fixes it."""
    key = _create(sessions, box)
    name = keys.record_name(key.selector, key.domain)

    def check() -> keys.KeyCheck:
        resolver.clear_cache()
        return keys.verify_key_published(resolver, key)

    result = check()
    assert (result.status, result.reason) == ("missing", f"no DKIM key record at {name}")
    assert result.fix.startswith(f'{name}.\t3600\tIN\tTXT\t"v=DKIM1; k=rsa; p=')

    other = keys.generate_key_material("rsa")
    _publish(dns_server, key, keys.key_record("rsa", other.public_b64))
    assert check().status == "wrong"
    assert check().reason == f"the key at {name} does not match our private key"

    ours = key.public_record
    _publish(dns_server, key, ours[:255])  # the second string was dropped
    result = check()
    assert result.status == "wrong" and "split badly: p= stops after" in result.reason

    dns_server.remove(name, "TXT")
    dns_server.add(name, "TXT", ours[:200])  # split into two records instead of two strings
    dns_server.add(name, "TXT", ours[200:])
    result = check()
    assert result.status == "wrong" and "2 TXT records" in result.reason

    _publish(dns_server, key, [ours[:254] + '"', '"' + ours[254:]])  # pasted with quotes
    result = check()
    assert result.status == "wrong" and "split badly: quote marks" in result.reason
    assert "(published as 2 strings: 255+" in result.reason

    _publish(dns_server, key, ours.replace("k=rsa", "k=ed25519"))
    assert "publishes a k=ed25519 key; ours is rsa" in check().reason
    _publish(dns_server, key, ours.split("p=")[0] + "p=")
    assert "revoked" in check().reason

    _publish(dns_server, key, [ours[:255], ours[255:]])
    result = check()
    assert result.matches and "published as 2 strings: 255+" in result.reason

    dns_server.timeout(name)
    result = check()
    assert result.status == "error"
    assert result.reason.startswith(f"could not look up {name}: timeout")


def test_rsa_key_published_as_pkcs1_still_matches(
    sessions: sessionmaker[Session],
    demo: DemoAddresses,
    box: SecretBox,
    dns_server: DNSServer,
    resolver: Resolver,
) -> None:
    """Some tools publish RSAPublicKey instead of SubjectPublicKeyInfo; the key is the same."""
    key = _create(sessions, box)
    private = serialization.load_pem_private_key(keys.load_private_key(key, box), None)
    pkcs1 = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1
    )
    _publish(dns_server, key, "v=DKIM1; p=" + base64.b64encode(pkcs1).decode())
    assert keys.verify_key_published(resolver, key).matches


async def test_async_twin_gives_the_same_answer(
    sessions: sessionmaker[Session],
    demo: DemoAddresses,
    box: SecretBox,
    dns_server: DNSServer,
    resolver: Resolver,
) -> None:
    """verify_key_published_async looks up on the event loop and judges alike."""
    key = _create(sessions, box, algorithm="ed25519")
    assert (await keys.verify_key_published_async(resolver, key)).status == "missing"
    _publish(dns_server, key)
    resolver.clear_cache()
    assert (await keys.verify_key_published_async(resolver, key)).matches


def test_record_check_and_rotation(
    sessions: sessionmaker[Session],
    demo: DemoAddresses,
    box: SecretBox,
    dns_server: DNSServer,
    resolver: Resolver,
) -> None:
    """verified_at follows the check; signing moves to a new key only once it is verified."""
    with sessions.begin() as session:
        tenant = find_tenant(session, "acme")
        old = keys.create_key(session, tenant, "acme.example", box, selector="old")
        assert keys.signing_key(session, "acme.example") is None  # not verified yet
        _publish(dns_server, old)
        keys.record_check(old, keys.verify_key_published(resolver, old))
        assert keys.signing_key(session, "acme.example") is old

        new = keys.create_key(session, tenant, "acme.example", box, selector="new")
        keys.record_check(new, keys.verify_key_published(resolver, new))
        assert new.verified_at is None
        assert keys.settle_active(session, tenant, "acme.example") is old
        with pytest.raises(DkimKeyError, match="active key"):
            keys.retire_key(session, tenant, "acme.example", "old")

        _publish(dns_server, new)
        resolver.clear_cache()
        keys.record_check(new, keys.verify_key_published(resolver, new))
        assert keys.settle_active(session, tenant, "acme.example") is new
        assert not old.active and old.verified_at is not None  # still verifies old signatures
        assert new.activated_at is not None and new.activated_at >= new.created_at
        keys.retire_key(session, tenant, "acme.example", "old")
        assert old.retired_at is not None
        assert keys.domain_keys(session, tenant, "acme.example") == [new]

        dns_server.timeout(keys.record_name("new", "acme.example"))
        resolver.clear_cache()
        keys.record_check(new, keys.verify_key_published(resolver, new))
        assert new.verified_at is not None  # a timeout proves nothing either way
        dns_server.heal()
        dns_server.remove(keys.record_name("new", "acme.example"))
        resolver.clear_cache()
        keys.record_check(new, keys.verify_key_published(resolver, new))
        assert new.verified_at is None
        assert keys.signing_key(session, "acme.example") is None


def test_a_key_sealed_under_another_secrets_key_is_a_clear_error(
    sessions: sessionmaker[Session], demo: DemoAddresses, box: SecretBox, tmp_path: Path
) -> None:
    """A node with the wrong [secrets] key_file is told so, not given a traceback."""
    key = _create(sessions, box)
    other = tmp_path / "other.key"
    ensure_key_file(other)
    with pytest.raises(DkimKeyError, match=r"cannot open the private key of s1\._domainkey"):
        keys.load_private_key(key, SecretBox.from_file(other))


def test_a_key_still_in_a_file_is_named_with_the_fix(
    sessions: sessionmaker[Session], demo: DemoAddresses, box: SecretBox, resolver: Resolver
) -> None:
    """A key made before keys moved into the database says to run `dkim import`."""
    key = _create(sessions, box)
    key.private_key, key.private_key_path = None, "/var/lib/mailledger/dkim/s1.key"
    expected = r"s1\._domainkey\.acme\.example is still a file \(/var/lib/mailledger/dkim/s1\.key\)"
    with pytest.raises(DkimKeyError, match=expected + r": run `mailledger dkim import`"):
        keys.load_private_key(key, box)
    with pytest.raises(DkimKeyError, match=expected):
        keys.verify_key_published(resolver, key)
