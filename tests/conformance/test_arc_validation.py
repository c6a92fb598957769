"""The ValiMail ARC validation suite through dkimpy, with keys served by our DNS server.

Each scenario's ``txt-records`` are published on a real DNS server on 127.0.0.1 and
``dkim.arc_verify`` fetches them only through ``Resolver.dkim_dnsfunc``. The expected chain
validation status ``cv`` is Pass, Fail or None; an empty ``cv`` is a chain that an earlier
sealer already reported as failed, which dkimpy returns as ``None`` (no status to seal).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest
import yaml

from mailledger.dns.resolver import Resolver
from mailledger.testing.dnsserver import DNSServer

# The suites sit in shared/vectors beside the repository; they are not copied into it.
VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
SUITE = "arc/arc-draft-validation-tests.yml"


def load_suite(relative: str) -> list[dict[str, Any]] | None:
    """Every YAML document of one suite file, or None when the vectors aren't there."""
    path = VECTORS / relative
    if not path.is_file():
        return None
    with path.open("rb") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def _cases() -> list[Any]:
    documents = load_suite(SUITE)
    if documents is None:
        reason = f"test vectors not found: {VECTORS / SUITE}"
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="vectors-missing")]
    params = []
    for index, scenario in enumerate(documents):
        for test_id, case in scenario["tests"].items():
            params.append(pytest.param((index, scenario, case), id=test_id))
    return params


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[int, DNSServer]]:
    started: dict[int, DNSServer] = {}
    yield started
    for server in started.values():
        server.stop()


def _cv_text(cv: bytes | None) -> str:
    return "" if cv is None else cv.decode("ascii").lower()


@pytest.mark.parametrize("case", _cases())
def test_arc_validation(
    case: tuple[int, dict[str, Any], dict[str, Any]], servers: dict[int, DNSServer]
) -> None:
    """dkimpy, fetching keys through our resolver, reaches the suite's chain status."""
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
