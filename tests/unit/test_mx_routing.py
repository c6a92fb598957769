"""Routing decisions over DNS answers (RFC 5321 §5.1, RFC 7505), without sockets."""

from __future__ import annotations

import itertools
import random

import pytest

from mailledger.dnsauth.resolver import DNSResult, Status
from mailledger.mail.replies import Reply
from mailledger.relay.mx import (
    NO_ADDRESS,
    NO_DOMAIN,
    NULL_MX,
    MXHosts,
    address_literal,
    by_preference,
    mx_hosts,
    without_addresses,
)
from mailledger.relay.outcomes import Deferred, Failed, Target


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([], []),
        ([(10, "mx.example")], ["mx.example"]),
        ([(20, "backup.example"), (10, "primary.example")], ["primary.example", "backup.example"]),
        (
            [(5, "a.example"), (50, "c.example"), (10, "b.example")],
            ["a.example", "b.example", "c.example"],
        ),
        # A host listed twice is tried once, at its best preference.
        ([(20, "a.example"), (10, "a.example"), (10, "a.example")], ["a.example"]),
        ([(10, "a.example"), (20, "b.example"), (30, "a.example")], ["a.example", "b.example"]),
    ],
)
def test_hosts_come_in_preference_order(
    records: list[tuple[int, str]], expected: list[str]
) -> None:
    """Lower preference first, whatever order the answer came in; duplicates once."""
    assert by_preference(records, rng=random.Random(0)) == expected


def test_equal_preferences_are_shuffled_and_never_cross_groups() -> None:
    """Equal preferences come in every order over many attempts; a worse one always comes last."""
    records = [(10, "a.example"), (10, "b.example"), (10, "c.example"), (20, "z.example")]
    seen: set[tuple[str, ...]] = set()
    for seed in range(200):
        hosts = by_preference(records, rng=random.Random(seed))
        assert hosts[3] == "z.example"
        assert sorted(hosts[:3]) == ["a.example", "b.example", "c.example"]
        seen.add(tuple(hosts[:3]))
    assert seen == set(itertools.permutations(["a.example", "b.example", "c.example"]))


def _mx(status: Status, *records: tuple[int, str], detail: str = "") -> DNSResult:
    return DNSResult("dest.example", "MX", status, records=records, detail=detail)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            _mx("ok", (20, "mx2.dest.example"), (10, "mx1.dest.example")),
            MXHosts(("mx1.dest.example", "mx2.dest.example"), implicit=False),
        ),
        # RFC 7505: a null MX fails at once; the domain itself is never tried.
        (_mx("ok", (0, ".")), Failed(NULL_MX)),
        # RFC 5321 §5.1: no MX records, so the domain is its own mail host (implicit MX).
        (_mx("nodata"), MXHosts(("dest.example",), implicit=True)),
        (_mx("nxdomain"), Failed(NO_DOMAIN)),
        (
            _mx("temperror", detail="timed out"),
            Deferred(None, Reply(451, "4.4.3", "MX lookup for dest.example: temperror timed out")),
        ),
        (
            _mx("permerror", detail="bad answer"),
            Deferred(None, Reply(451, "4.4.3", "MX lookup for dest.example: permerror bad answer")),
        ),
    ],
)
def test_mx_answer_decides_the_hosts(
    answer: DNSResult, expected: MXHosts | Failed | Deferred
) -> None:
    """Each kind of MX answer becomes the hosts to look up, a permanent failure or a retry."""
    assert mx_hosts("dest.example", answer) == expected


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("dest.example", None),
        ("[192.0.2.7]", Target("[192.0.2.7]", "192.0.2.7", 2525)),
        ("[IPv6:2001:db8::7]", Target("[IPv6:2001:db8::7]", "2001:db8::7", 2525)),
        ("[ipv6:::1]", Target("[ipv6:::1]", "::1", 2525)),
        (
            "[mail.dest.example]",
            Failed(Reply(550, "5.1.2", "bad address literal [mail.dest.example]")),
        ),
        ("[192.0.2.300]", Failed(Reply(550, "5.1.2", "bad address literal [192.0.2.300]"))),
    ],
)
def test_address_literals_are_dialled_as_written(
    domain: str, expected: Target | Failed | None
) -> None:
    """An address literal is its own target, a malformed one fails, a domain name is routed."""
    assert address_literal(domain, 2525) == expected


@pytest.mark.parametrize(
    ("hosts", "implicit", "missing", "problems", "expected"),
    [
        # An implicit MX without addresses: the domain names no mail host at all.
        (["dest.example"], True, 2, [], Failed(NO_ADDRESS)),
        # An MX host without addresses may be fixed before the schedule runs out.
        (
            ["mx1.dest.example"],
            False,
            2,
            [],
            Deferred(None, Reply(451, "4.4.3", "no address records for mx1.dest.example")),
        ),
        # A failed lookup is never proof that no address exists.
        (
            ["dest.example"],
            True,
            1,
            ["dest.example/AAAA: temperror"],
            Deferred(None, Reply(451, "4.4.3", "dest.example/AAAA: temperror")),
        ),
    ],
)
def test_no_address_is_permanent_only_for_an_implicit_mx(
    hosts: list[str],
    implicit: bool,
    missing: int,
    problems: list[str],
    expected: Failed | Deferred,
) -> None:
    """Which "no address" results bounce at once and which are tried again."""
    assert (
        without_addresses(hosts, implicit=implicit, missing=missing, problems=problems) == expected
    )
