"""The webhook rules as plain functions: signatures, retry timing, URLs and refused addresses."""

from __future__ import annotations

import base64
import ipaddress
import random
import time
from datetime import UTC, datetime, timedelta

import pytest
import standardwebhooks

from mailledger.store import webhooks
from mailledger.web.webhookretry import next_attempt_at, parse_retry_after
from mailledger.web.webhooksign import secret_key, sign, webhook_headers
from mailledger.web.webhooktargets import Target, refusal

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def test_a_new_secret_is_whsec_and_32_random_bytes() -> None:
    """The secret has the Standard Webhooks form and is never the same twice."""
    secret = webhooks.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert secret != webhooks.new_secret()
    assert len(secret_key(secret)) == 32


def test_our_signature_is_what_the_reference_library_computes() -> None:
    """sign() agrees with standardwebhooks' own signer, byte for byte."""
    secret = webhooks.new_secret()
    stamp = int(time.time())
    body = b'{"type":"activity.created","data":{"subject":"caf\xc3\xa9"}}'
    reference = standardwebhooks.Webhook(secret).sign(
        "msg_1", datetime.fromtimestamp(stamp, UTC), body.decode()
    )
    assert sign(secret, "msg_1", stamp, body) == reference


def test_headers_with_two_secrets_verify_under_either() -> None:
    """During a rotation the signature header carries one v1 value per secret."""
    old, new = webhooks.new_secret(), webhooks.new_secret()
    body = b'{"type":"message.quarantined"}'
    headers = webhook_headers([new, old], "msg_2", int(time.time()), body)
    assert headers["webhook-id"] == "msg_2"
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        standardwebhooks.Webhook(secret).verify(body, headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(webhooks.new_secret()).verify(body, headers)


def test_signing_secrets_follow_the_overlap() -> None:
    """The previous secret signs until it expires, not after."""
    later = NOW + timedelta(hours=1)
    assert webhooks.signing_secrets("a", "b", later, NOW) == ("a", "b")
    assert webhooks.signing_secrets("a", "b", NOW, NOW) == ("a",)
    assert webhooks.signing_secrets("a", "", later, NOW) == ("a",)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("120", 120.0),
        ("0", 0.0),
        ("9999999", 86400.0),
        ("Wed, 02 Dec 2026 12:00:30 GMT", 30.0),
        ("Wed, 02 Dec 2026 11:00:00 GMT", 0.0),
        ("soon", None),
        ("-5", None),
    ],
)
def test_retry_after_seconds_and_dates(value: str | None, seconds: float | None) -> None:
    """Retry-After as delay-seconds or an HTTP-date (RFC 9110 §10.2.3), capped at a day."""
    assert parse_retry_after(value, NOW) == seconds


def test_the_schedule_gives_len_attempts_with_jitter() -> None:
    """After attempt n the wait is schedule[n] ±10 %; after the last there is none."""
    schedule = [0.0, 5.0, 300.0]
    rng = random.Random(7)
    for attempt, delay in ((1, 5.0), (2, 300.0)):
        at = next_attempt_at(schedule, attempt, NOW, rng=rng)
        assert at is not None
        assert delay * 0.9 <= (at - NOW).total_seconds() <= delay * 1.1
    assert next_attempt_at(schedule, 3, NOW, rng=rng) is None


def test_retry_after_is_a_floor_not_a_ceiling() -> None:
    """A Retry-After longer than the schedule's wait wins; a shorter one changes nothing."""
    rng = random.Random(1)
    longer = next_attempt_at([0.0, 5.0], 1, NOW, retry_after_seconds=60.0, rng=rng)
    assert longer == NOW + timedelta(seconds=60)
    shorter = next_attempt_at([0.0, 5.0], 1, NOW, retry_after_seconds=1.0, rng=rng)
    assert shorter is not None
    assert (shorter - NOW).total_seconds() >= 4.5


@pytest.mark.parametrize(
    ("address", "word"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fd00::1", "unique-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),
        ("100.64.0.1", "not a public address"),
    ],
)
def test_non_public_addresses_are_refused(address: str, word: str) -> None:
    """Every non-global address is refused, named by what it is."""
    reason = refusal(ipaddress.ip_address(address))
    assert reason is not None
    assert word in reason


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
def test_public_addresses_pass(address: str) -> None:
    """A global address is fine."""
    assert refusal(ipaddress.ip_address(address)) is None


def test_a_pinned_target_keeps_the_name_for_host_and_sni() -> None:
    """The request goes to the checked address; the Host header names the URL's host."""
    target = Target("https", "crm.example", 443, "2001:db8::1", "/hooks?t=1")
    assert target.pinned_url == "https://[2001:db8::1]:443/hooks?t=1"
    assert target.host_header == "crm.example"
    assert Target("http", "crm.example", 8080, "192.0.2.1", "/").host_header == "crm.example:8080"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://crm.example/x", "not an http"),
        ("https:///path", "names no host"),
        ("https://user:pw@crm.example/", "user name or password"),
        ("https://crm.example:99999/", "bad port"),
        ("https://crm.example/a b", "space"),
        ("https://crm.example/#frag", "fragment"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(url: str, words: str) -> None:
    """A URL we cannot deliver to is refused when it is added, saying why."""
    with pytest.raises(webhooks.WebhookError, match=words):
        webhooks.check_url(url)


def test_event_types_are_checked() -> None:
    """Only the types we send can be subscribed to; none means all."""
    assert webhooks.check_events([]) == []
    assert webhooks.check_events(["activity.created", "activity.created"]) == ["activity.created"]
    with pytest.raises(webhooks.WebhookError, match=r"activity\.deleted"):
        webhooks.check_events(["activity.deleted"])
