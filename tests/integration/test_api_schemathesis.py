"""Schemathesis against the running server: every operation of /v1/openapi.json, with examples
generated from the description (valid and not), answers only documented status codes and
never a 5xx (a 502 DNS failure excepted, which the description lists for the check)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.store import directory
from mailledger.store.blobs import BlobStore
from mailledger.store.models import Tenant
from mailledger.testing.api import insert_activity, make_token, running_api
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.received import insert_quarantined

# Few examples per operation keep the run under a minute on a busy machine.
EXAMPLES = 5
ST = Path(sys.executable).with_name("st")
# The DNS check's 502 (DNS failed) and 503 (started without the configuration) are documented
# answers about the world outside, not server errors; every other 5xx is.
CONFIG = """
[[operations]]
include-path-regex = "^/v1/dns/"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "502", "503"]
"""


@pytest.fixture
def settings(settings: Settings, dns_server: DNSServer) -> Settings:
    """A rate limit no generated run reaches, so every request tests the operation itself;
    DNS asks the test's own server."""
    http = settings.http.model_copy(update={"rate_limit_per_minute": 1_000_000})
    return settings.model_copy(update={"http": http, "dns": dns_server.settings(0.5)})


async def test_schemathesis_finds_no_undocumented_status_and_no_server_error(
    settings: Settings,
    sessions: sessionmaker[Session],
    demo: DemoAddresses,
    blobs: BlobStore,
    tmp_path: Path,
) -> None:
    """`st run` over every operation: status codes as documented, no server errors."""
    with sessions.begin() as session:
        acme = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        token = make_token(session, acme)
        insert_activity(session, acme.id)
        staff = directory.find_staff(session, acme, "richard")
        insert_quarantined(session, acme, staff, blobs=blobs)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    async with running_api(settings) as api:
        process = await asyncio.create_subprocess_exec(
            str(ST),
            "--config-file",
            str(config),
            "run",
            f"{api.base_url}/v1/openapi.json",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance",
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            "14",
            "--workers",
            "1",
            "--request-timeout",
            "20",
            "--header",
            f"Authorization: Bearer {token}",
            "--no-color",
            cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), timeout=240)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    assert "No issues found" in text or "passed" in text, text
