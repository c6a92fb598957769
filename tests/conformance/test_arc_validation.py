"""The ValiMail ARC validation suite through dkimpy, with keys served by our DNS server.

Each scenario's ``txt-records`` are published on a real DNS server on 127.0.0.1 and fetched
only through ``Resolver.dkim_dnsfunc``. Both dkimpy's own ``arc_verify`` and our
``verify_arc`` (dkimpy with the body hashed by ``bodyhash``) must reach the suite's status.
The expected chain validation status ``cv`` is Pass, Fail or None; an empty ``cv`` is a chain
that an earlier sealer already reported as failed, which dkimpy returns as ``None`` (no status
to seal) and ``verify_arc`` as fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dkim
import pytest

from mailledger.dnsauth.resolver import Resolver
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.vectors import suite_cases
from mailledger.verify.signatures import verify_arc

SUITE = "arc/arc-draft-validation-tests.yml"


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[int, DNSServer]]:
    started: dict[int, DNSServer] = {}
    yield started
    for server in started.values():
        server.stop()


def _cv_text(cv: bytes | None) -> str:
    return "" if cv is None else cv.decode("ascii").lower()


@pytest.mark.parametrize("case", suite_cases(SUITE))
def test_arc_validation(
    case: tuple[int, dict[str, Any], dict[str, Any]], servers: dict[int, DNSServer]
) -> None:
    """dkimpy and verify_arc, fetching keys through our resolver, reach the suite's status."""
    index, scenario, test = case
    server = servers.get(index)
    if server is None:
        server = servers[index] = DNSServer().start()
        for name, record in scenario["txt-records"].items():
            server.add(name, "TXT", record, ttl=60)
    resolver = Resolver(server.settings(timeout_seconds=0.5))
    message = test["message"].encode("utf-8")
    cv, _results, reason = dkim.arc_verify(message, dnsfunc=resolver.dkim_dnsfunc)
    expected = str(test["cv"]).strip().lower()
    assert _cv_text(cv) == expected, reason
    ours = verify_arc(message, resolver.dkim_dnsfunc)
    assert ours.result == (expected or "fail"), ours.reason
