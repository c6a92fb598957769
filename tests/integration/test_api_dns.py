"""``/v1/dns``: the records to publish and the live check, through real HTTP, asking a real DNS
server on loopback; a DNS failure is a 502, apart from "a record is wrong"."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.store.blobs import BlobStore
from mailledger.store.models import Tenant
from mailledger.testing.api import bearer, make_token
from mailledger.testing.dnsserver import DNSServer
from mailledger.web.app import build_app
from mailledger.web.serving import HTTPServer

RELAY = "192.0.2.10"
INCLUDE = "_spf.capture.example"
DOMAIN = "acme.example"
CAPTURE = "acme.capture.example"


def _site(settings: Settings, nameserver: str, tmp_path: Path) -> Settings:
    service = settings.service.model_copy(
        update={
            "relay_addresses": [RELAY],
            "spf_include_domain": INCLUDE,
            "hostname": "mx.capture.example",
        }
    )
    relay = settings.relay.model_copy(update={"dkim_key_dir": str(tmp_path / "dkim")})
    dns = settings.dns.model_copy(update={"nameservers": [nameserver], "timeout_seconds": 0.3})
    return settings.model_copy(update={"service": service, "relay": relay, "dns": dns})


Serve = Callable[[Settings | None], AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def serve(sessions: sessionmaker[Session], blobs: BlobStore, settings: Settings) -> Serve:
    """Run the app built with ``site`` (the whole configuration, or None) on a loopback port."""

    @asynccontextmanager
    async def serving(site: Settings | None) -> AsyncIterator[httpx.AsyncClient]:
        server = HTTPServer(
            build_app(sessions, blobs, settings.http, site=site),
            "127.0.0.1:0",
            trusted_proxies=[],
            grace_seconds=1,
        )
        host, port = await server.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=30) as client:
                yield client
        finally:
            await server.stop()

    return serving


@pytest.fixture
def token(sessions: sessionmaker[Session], demo: DemoAddresses) -> str:
    """A token of the demo tenant, acme (customer domain acme.example)."""
    with sessions.begin() as session:
        return make_token(
            session, session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        )


async def test_records_and_a_check_that_finds_them_wrong(
    settings: Settings,
    serve: Serve,
    dns_server: DNSServer,
    token: str,
    tmp_path: Path,
) -> None:
    """The records merge our include into the published SPF; the check says what is wrong (200,
    ok false), then, with the MX right, that record is ok."""
    site = _site(settings, dns_server.address, tmp_path)
    dns_server.add(DOMAIN, "TXT", "v=spf1 mx -all")
    async with serve(site) as client:
        records = await client.get("/v1/dns/records", headers=bearer(token))
        assert records.status_code == 200, records.text
        spf = [r for r in records.json()["data"] if r["kind"] == "spf"]
        assert spf[0]["name"] == DOMAIN
        assert f"include:{INCLUDE}" in spf[0]["value"] and "mx" in spf[0]["value"]
        assert spf[0]["zone"].startswith(DOMAIN)

        checked = await client.post("/v1/dns/check", headers=bearer(token))
        assert checked.status_code == 200, checked.text
        body = checked.json()
        assert body["ok"] is False
        verdicts = {(r["kind"], r["name"]): r for r in body["data"]}
        assert verdicts[("spf", DOMAIN)]["status"] == "wrong"
        assert verdicts[("mx", CAPTURE)]["status"] == "missing"
        assert not any(r["lookup_failed"] for r in body["data"])

        dns_server.add(CAPTURE, "MX", (10, "mx.capture.example"))
        only = await client.post(f"/v1/dns/check?domain={DOMAIN}", headers=bearer(token))
        assert {r["kind"] for r in only.json()["data"]} <= {"spf", "dkim", "dmarc"}
        again = (await client.post("/v1/dns/check", headers=bearer(token))).json()
        assert {(r["kind"], r["status"]) for r in again["data"]} >= {("mx", "ok")}

        other = await client.post("/v1/dns/check?domain=globex.example", headers=bearer(token))
        assert other.status_code == 422 and other.json()["field"] == "domain"


async def test_dns_failure_is_a_502_not_a_wrong_record(
    settings: Settings, serve: Serve, token: str, tmp_path: Path
) -> None:
    """With a name server that never answers, the check is a 502 problem listing each record
    as not looked up: nothing is known to be wrong."""
    site = _site(settings, "127.0.0.1:9", tmp_path)
    async with serve(site) as client:
        response = await client.post("/v1/dns/check", headers=bearer(token))
    assert response.status_code == 502, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == 502 and "DNS failed" in body["detail"]
    assert body["results"] and all(
        r["lookup_failed"] for r in body["results"] if r["status"] == "error"
    )


async def test_without_the_configuration_dns_is_a_503(serve: Serve, token: str) -> None:
    """An app built without the whole configuration says so instead of guessing."""
    async with serve(None) as client:
        for method, path in (("GET", "/v1/dns/records"), ("POST", "/v1/dns/check")):
            response = await client.request(method, path, headers=bearer(token))
            assert response.status_code == 503, response.text
