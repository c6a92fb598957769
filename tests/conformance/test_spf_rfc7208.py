"""The RFC 7208 SPF test suite (openspf.org, 2014.04) through pyspf and our resolver.

Each scenario's ``zonedata`` is served by a real DNS server on 127.0.0.1 and pyspf asks it
only through ``Resolver.spf_context``; so this proves the adapter returns what pyspf needs
for every record shape the suite uses (multi-string TXT, type 99, MX, PTR, CNAME loops,
timeouts, non-ASCII bytes).

The suite's driver conventions (from its format notes): an SPF record is also published as
TXT unless the name lists TXT itself (``TXT: NONE`` meaning "no TXT"); ``TIMEOUT`` makes
every type not listed before it time out; a test passes when the result is one of the
allowed ones and, where an ``explanation`` is given, the explanation matches exactly
(with ``DEFAULT`` as the default explanation).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import spf

from mailledger.dnsauth.resolver import Resolver
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.vectors import suite_cases

SUITE = "spf/rfc7208-tests.yml"
# Every type pyspf asks for; the ones a TIMEOUT name doesn't list must time out.
QUERIED_TYPES = ("TXT", "SPF", "A", "AAAA", "MX", "PTR")


def publish(server: DNSServer, zonedata: dict[str, list[Any]]) -> None:
    """Serve one scenario's zonedata the way the suite's own driver interprets it."""
    for name, entries in zonedata.items():
        lists_txt = any(isinstance(e, dict) and "TXT" in e for e in entries)
        answered: set[str] = set()
        timed_out = False
        generated: list[Any] = []
        for entry in entries:
            if entry == "TIMEOUT":
                timed_out = True
                break  # the driver stops at TIMEOUT: later records are never served
            for rtype, value in entry.items():
                if value == "TIMEOUT":
                    server.timeout(name, rtype)
                    continue
                if value == "NONE":
                    continue
                if rtype == "SPF" and not lists_txt:
                    generated.append(value)
                answered.add(rtype)
                server.add(name, rtype, tuple(value) if rtype == "MX" else value, ttl=60)
        if timed_out:
            for rtype in QUERIED_TYPES:
                if rtype not in answered:
                    server.timeout(name, rtype)
        else:
            for value in generated:
                server.add(name, "TXT", value, ttl=60)


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[int, DNSServer]]:
    started: dict[int, DNSServer] = {}
    yield started
    for server in started.values():
        server.stop()


@pytest.mark.parametrize("case", suite_cases(SUITE))
def test_rfc7208(
    case: tuple[int, dict[str, Any], dict[str, Any]], servers: dict[int, DNSServer]
) -> None:
    """pyspf, resolving through our adapter, gives one of the suite's allowed results."""
    index, scenario, test = case
    server = servers.get(index)
    if server is None:
        server = servers[index] = DNSServer().start()
        publish(server, scenario["zonedata"])
    resolver = Resolver(server.settings(timeout_seconds=0.3))
    with resolver.spf_context():
        query = spf.query(
            i=test["host"], s=test["mailfrom"], h=test["helo"], strict=test.get("strict", True)
        )
        query.set_default_explanation("DEFAULT")
        result, _code, explanation = query.check()
    allowed = test["result"] if isinstance(test["result"], list) else [test["result"]]
    assert result in allowed
    if "explanation" in test:
        assert explanation == test["explanation"]
