"""SPF verdicts are reused only while every DNS answer they came from is still the cached one."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import spf

from mailledger.dnsauth.resolver import Resolver, query_budget
from mailledger.testing.dnsserver import DNSServer

IP = "192.0.2.44"
SENDER = "a@example.test"
HELO = "mx.example.test"


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    with DNSServer(negative_ttl=300) as server:
        server.add("example.test", "TXT", "v=spf1 include:_spf.example.test -all")
        yield server


@pytest.fixture
def computed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Each check pyspf actually computes: its (ip, sender)."""
    seen: list[tuple[str, str]] = []

    class Counting(spf.query):  # type: ignore[misc]  # pyspf reads attributes of spf.query
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen.append((kwargs["i"], kwargs["s"]))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(spf, "query", Counting)
    return seen


def test_the_same_check_again_is_not_computed_again(
    dns_server: DNSServer, resolver: Resolver, computed: list[tuple[str, str]]
) -> None:
    """Same IP, sender and HELO: the kept verdict; another IP or sender: computed."""
    dns_server.add("_spf.example.test", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    first = resolver.spf_check(IP, SENDER, HELO)
    assert first[0] == "pass"
    assert resolver.spf_check(IP, SENDER, HELO) == first
    assert computed == [(IP, SENDER)]
    assert resolver.spf_check("203.0.113.9", SENDER, HELO)[0] == "fail"
    assert resolver.spf_check(IP, "b@example.test", HELO)[0] == "pass"
    assert len(computed) == 3


def test_an_answer_not_cached_is_never_trusted_again(
    dns_server: DNSServer, resolver: Resolver, computed: list[tuple[str, str]]
) -> None:
    """An included record with TTL 0 is asked for every time, so its change shows at once."""
    dns_server.add("_spf.example.test", "TXT", "v=spf1 ip4:192.0.2.0/24 -all", ttl=0)
    assert resolver.spf_check(IP, SENDER, HELO)[0] == "pass"
    dns_server.remove("_spf.example.test", "TXT")
    dns_server.add("_spf.example.test", "TXT", "v=spf1 -all", ttl=0)
    assert resolver.spf_check(IP, SENDER, HELO)[0] == "fail"
    assert len(computed) == 2


def test_a_cleared_cache_forgets_the_verdicts(
    dns_server: DNSServer, resolver: Resolver, computed: list[tuple[str, str]]
) -> None:
    """After ``clear_cache`` (records changed), the check asks DNS again and sees the change."""
    dns_server.add("_spf.example.test", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    assert resolver.spf_check(IP, SENDER, HELO)[0] == "pass"
    dns_server.remove("_spf.example.test", "TXT")
    dns_server.add("_spf.example.test", "TXT", "v=spf1 -all")
    resolver.clear_cache()
    assert resolver.spf_check(IP, SENDER, HELO)[0] == "fail"
    assert len(computed) == 2


def test_an_expired_answer_ends_the_verdict(
    dns_server: DNSServer, resolver: Resolver, computed: list[tuple[str, str]]
) -> None:
    """An included record's TTL running out: the next check asks again and sees the change."""
    dns_server.add("_spf.example.test", "TXT", "v=spf1 ip4:192.0.2.0/24 -all", ttl=1)
    assert resolver.spf_check(IP, SENDER, HELO)[0] == "pass"
    assert resolver.spf_check(IP, SENDER, HELO)[0] == "pass"
    assert len(computed) == 1
    dns_server.remove("_spf.example.test", "TXT")
    dns_server.add("_spf.example.test", "TXT", "v=spf1 -all", ttl=1)
    time.sleep(1.1)
    assert resolver.spf_check(IP, SENDER, HELO)[0] == "fail"
    assert dns_server.query_count("_spf.example.test", "TXT") == 2


def test_a_temporary_error_is_not_kept(
    dns_server: DNSServer, resolver: Resolver, computed: list[tuple[str, str]]
) -> None:
    """temperror is retried: once the server recovers, the check passes."""
    dns_server.add("_spf.example.test", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    dns_server.servfail("_spf.example.test")
    assert resolver.spf_check(IP, SENDER, HELO)[0] == "temperror"
    dns_server.heal("_spf.example.test")
    assert resolver.spf_check(IP, SENDER, HELO)[0] == "pass"


def test_a_check_cut_short_by_the_dns_budget_is_not_kept(
    dns_server: DNSServer, resolver: Resolver, computed: list[tuple[str, str]]
) -> None:
    """A message that ran out of DNS questions got permerror; the next message is checked."""
    dns_server.add("_spf.example.test", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    with query_budget(1):
        assert resolver.spf_check(IP, SENDER, HELO)[0] == "permerror"
    assert resolver.spf_check(IP, SENDER, HELO)[0] == "pass"
    assert resolver.spf_check(IP, SENDER, HELO)[0] == "pass"
    assert len(computed) == 2


def test_an_explanation_with_the_time_is_not_kept(
    dns_server: DNSServer, resolver: Resolver, computed: list[tuple[str, str]]
) -> None:
    """``%{t}`` expands to the time of the check (RFC 7208 §7.3): such a result is recomputed."""
    dns_server.remove("example.test", "TXT")
    dns_server.add("example.test", "TXT", "v=spf1 -all exp=why.example.test")
    dns_server.add("why.example.test", "TXT", "refused at %{t}")
    assert resolver.spf_check(IP, SENDER, HELO)[0] == "fail"
    assert resolver.spf_check(IP, SENDER, HELO)[0] == "fail"
    assert len(computed) == 2
