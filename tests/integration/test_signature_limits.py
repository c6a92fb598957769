"""Signature work per message is bounded (issue 16, point 3).

A message may carry any number of DKIM-Signature headers; each costs a key lookup and a
public-key operation. At most ``[verify] max_signatures`` are checked, the relevant ones first
(aligned with the From domain, then with the forwarder's envelope domain), the rest are kept
as "not checked (limit)", and the DNS questions one message can cause are capped by
``[verify] max_dns_queries``. The queries are counted at the test's own DNS server.
"""

from __future__ import annotations

import dataclasses

import pytest

from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.forwarding import SigningKey, dkim_sign, make_key
from mailledger.testing.mail import make_email
from mailledger.verify.authenticate import Authenticator
from mailledger.verify.results import PASS

NOT_CHECKED = "not checked (limit)"


def _key(base: SigningKey, domain: str) -> SigningKey:
    """The same RSA key published for another domain (generating 50 keys would be slow)."""
    return dataclasses.replace(base, domain=domain)


def _many_signatures(dns_server: DNSServer, count: int) -> bytes:
    """Carol's email signed first by client.example, then by ``count`` other domains on top."""
    base = make_key("client.example")
    raw = make_email(sender="carol@client.example", to="richard@acme.example")
    raw = dkim_sign(raw, base)
    dns_server.add(base.record_name, "TXT", base.txt)
    dns_server.add("_dmarc.client.example", "TXT", "v=DMARC1; p=reject")
    for i in range(count):
        key = _key(base, f"noise{i}.example")
        dns_server.add(key.record_name, "TXT", key.txt)
        raw = dkim_sign(raw, key)
    return raw


def _authenticator(settings: Settings, dns_server: DNSServer, **verify: int) -> Authenticator:
    settings = settings.model_copy(
        update={"verify": settings.verify.model_copy(update=verify)}, deep=True
    )
    return Authenticator(Resolver(dns_server.settings(timeout_seconds=0.5)), settings)


def _check(auth: Authenticator, raw: bytes, mail_from: str = "carol@client.example"):  # type: ignore[no-untyped-def]
    return auth.authenticate(
        raw,
        peer="127.0.0.66:2525",
        helo="mail.client.example",
        mail_from=mail_from,
        from_domain="client.example",
    )


def test_fifty_signatures_cost_at_most_the_configured_key_lookups(
    settings: Settings, dns_server: DNSServer
) -> None:
    """50 signatures on top of the author's: 5 checked, the From-aligned one among them."""
    raw = _many_signatures(dns_server, 50)
    dns_server.reset_queries()
    outcome = _check(_authenticator(settings, dns_server, max_signatures=5), raw)
    key_queries = sum(1 for q in dns_server.queries if "._domainkey." in q.name)
    assert key_queries == 5
    assert len(outcome.dkim) == 51
    checked = [r for r in outcome.dkim if r.reason != NOT_CHECKED]
    assert len(checked) == 5
    by_domain = {r.domain: r for r in outcome.dkim}
    assert by_domain["client.example"].result == PASS  # the bottom one, checked first
    # After it, the rest in header order: the four topmost.
    assert {r.domain for r in checked} == {"client.example"} | {
        f"noise{i}.example" for i in (49, 48, 47, 46)
    }
    assert sum(1 for r in outcome.dkim if r.reason == NOT_CHECKED) == 46
    assert outcome.dmarc.result == PASS  # the aligned signature was among those checked
    assert len(dns_server.queries) <= 50


def test_the_forwarders_signature_comes_before_the_rest(
    settings: Settings, dns_server: DNSServer
) -> None:
    """After the From-aligned signature, the envelope sender's domain is checked next."""
    raw = _many_signatures(dns_server, 10)
    forwarder = _key(make_key("client.example"), "forwarder.example")
    dns_server.add(forwarder.record_name, "TXT", forwarder.txt)
    raw = dkim_sign(raw, forwarder)  # on top, but it is the envelope sender's domain
    outcome = _check(
        _authenticator(settings, dns_server, max_signatures=2), raw, "fwd@forwarder.example"
    )
    checked = {r.domain for r in outcome.dkim if r.reason != NOT_CHECKED}
    assert checked == {"client.example", "forwarder.example"}


def test_dns_questions_per_message_are_capped(settings: Settings, dns_server: DNSServer) -> None:
    """With a small query budget, a signature-heavy message stops asking, without an error."""
    raw = _many_signatures(dns_server, 20)
    dns_server.reset_queries()
    outcome = _check(
        _authenticator(settings, dns_server, max_signatures=20, max_dns_queries=12), raw
    )
    assert len(dns_server.queries) <= 12
    assert len(outcome.dkim) == 21
    assert any(r.reason == NOT_CHECKED for r in outcome.dkim)


def test_the_limits_are_validated(settings: Settings) -> None:
    """max_signatures outside 1..50 is a configuration error, not a silent default."""
    fields = settings.verify.model_dump()
    for accepted in (1, 50):
        assert type(settings.verify).model_validate({**fields, "max_signatures": accepted})
    for refused in (0, 51):
        with pytest.raises(ValueError, match=r"max_signatures\n  Input should be"):
            type(settings.verify).model_validate({**fields, "max_signatures": refused})


def test_a_body_hash_that_is_not_base64_is_a_failed_signature(
    settings: Settings, dns_server: DNSServer
) -> None:
    """``bh=`` with a non-base64 character (length still a multiple of 4) fails the signature.

    dkimpy checks the form of ``b=`` where it means ``bh=``, so such a value reached the body
    hash comparison and raised ``binascii.Error`` out of verification: the message was
    "processing failed" instead of carrying ``dkim=fail``.
    """
    key = make_key("client.example")
    dns_server.add(key.record_name, "TXT", key.txt)
    raw = dkim_sign(make_email(sender="carol@client.example", to="richard@acme.example"), key)
    head, _, tail = raw.partition(b" bh=")
    broken = head + b" bh=)" + tail[1:]
    assert len(tail.split(b";")[0].strip()) % 4 == 0
    outcome = _check(_authenticator(settings, dns_server), broken)
    (result,) = outcome.dkim
    assert result.domain == "client.example"
    assert result.result != PASS
