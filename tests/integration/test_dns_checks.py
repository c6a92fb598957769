"""The last DNS check of each domain is kept in the database: whichever way it ran (the CLI, the
API, the admin DNS page), a fresh server shows it, ``GET /v1/dns/records`` carries it, and each
domain keeps one row, replaced by the next check.

Real parts: a DNS server on 127.0.0.1, the `mailledger` command, the HTTP server on a loopback
port, and Debian's Chromium for the page.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker
from tests.integration.test_web_pages import World, _link, _sign_in, browser, world

from mailledger.cli.demo import DemoAddresses
from mailledger.cli.main import main
from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.domains import keys
from mailledger.domains.check import check_tenant
from mailledger.store.blobs import BlobStore
from mailledger.store.directory import find_tenant
from mailledger.store.dnschecks import CheckedBy, last_checks, record_check
from mailledger.store.models import CustomerDomain, DnsCheck, Staff
from mailledger.store.secretbox import SecretBox
from mailledger.testing.api import bearer, make_token
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.webpages import CHROMIUM, Browser, RunningPages
from mailledger.web.app import build_app
from mailledger.web.serving import HTTPServer

__all__ = ["browser", "world"]  # fixtures used by name

RELAY = "192.0.2.10"
INCLUDE = "_spf.capture.example"
DOMAIN = "acme.example"
CAPTURE = "acme.capture.example"


def _site(settings: Settings, nameserver: str, tmp_path: Path) -> Settings:
    """Our relay, SPF include and MX host; DNS asked only at ``nameserver``."""
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


@pytest.fixture
def settings(settings: Settings, dns_server: DNSServer, tmp_path: Path) -> Settings:
    """Every part of this module (CLI, API, pages) asks the test's DNS server."""
    return _site(settings, dns_server.address, tmp_path)


@pytest.fixture
def config(settings: Settings, tmp_path: Path) -> Path:
    """The same settings as a configuration file, for the `mailledger` command."""
    path = tmp_path / "dns.toml"
    path.write_text(
        f"""
[database]
url = "{settings.database.url}"
[storage]
blob_dir = "{settings.storage.blob_dir}"
[dns]
nameservers = ["{settings.dns.nameservers[0]}"]
timeout_seconds = 0.3
[relay]
dkim_key_dir = "{settings.relay.dkim_key_dir}"
[service]
hostname = "mx.capture.example"
spf_include_domain = "{INCLUDE}"
relay_addresses = ["{RELAY}"]
""",
        encoding="utf-8",
    )
    return path


Check = Callable[[str], int]


@pytest.fixture
def cli(config: Path, capsys: pytest.CaptureFixture[str]) -> Check:
    """`mailledger dns check TARGET`, returning its exit status."""

    def run(target: str) -> int:
        capsys.readouterr()
        code = main(["--config", str(config), "dns", "check", target])
        capsys.readouterr()
        return code

    return run


def _check(
    sessions: sessionmaker[Session],
    site: Settings,
    by: CheckedBy,
    actor: str = "",
    *,
    only: str | None = None,
) -> None:
    """A live check of acme (or of one customer domain), kept as the callers keep it."""
    with sessions.begin() as session:
        tenant = find_tenant(session, "acme")
        results = check_tenant(
            session,
            tenant,
            site,
            Resolver(site.dns),
            domains=None if only is None else [only],
            capture=only is None,
        )
        record_check(session, tenant.id, [r.as_dict() for r in results], by=by, actor=actor)


def _rows(sessions: sessionmaker[Session]) -> dict[str, tuple[str, str]]:
    with sessions() as session:
        rows = session.scalars(select(DnsCheck)).all()
        return {r.domain: (r.checked_by, r.actor) for r in rows}


# --- the store ----------------------------------------------------------------------------------


@pytest.mark.postgres
def test_each_domain_keeps_one_check_replaced_by_the_next(
    sessions: sessionmaker[Session], demo: DemoAddresses, settings: Settings, dns_server: DNSServer
) -> None:
    """Two checks leave one row per domain, the later one's; a check of one domain replaces
    only that domain's row; a domain the tenant gave up loses its row."""
    dns_server.add(DOMAIN, "TXT", "v=spf1 mx -all")
    _check(sessions, settings, CheckedBy.CLI)
    assert _rows(sessions) == {DOMAIN: ("cli", ""), CAPTURE: ("cli", "")}

    dns_server.add(CAPTURE, "MX", (10, "mx.capture.example"))
    _check(sessions, settings, CheckedBy.API, "crm")
    assert _rows(sessions) == {DOMAIN: ("api", "crm"), CAPTURE: ("api", "crm")}
    with sessions() as session:
        tenant_id = find_tenant(session, "acme").id
        last = last_checks(session, tenant_id)
    assert [r["status"] for r in last[CAPTURE].results] == ["ok"]
    assert last[CAPTURE].outcome == "ok"
    spf = next(r for r in last[DOMAIN].results if r["kind"] == "spf")
    assert spf["status"] == "wrong" and f"include:{INCLUDE}" in spf["fix"]
    assert last[DOMAIN].outcome == "wrong"
    assert {r["kind"] for r in last[DOMAIN].results} == {"spf", "dkim", "dmarc"}

    _check(sessions, settings, CheckedBy.PAGE, "richard", only=DOMAIN)
    assert _rows(sessions) == {DOMAIN: ("page", "richard"), CAPTURE: ("api", "crm")}
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(DnsCheck)) == 2

    with sessions.begin() as session:
        session.execute(delete(CustomerDomain).where(CustomerDomain.domain == DOMAIN))
    _check(sessions, settings, CheckedBy.CLI)
    assert _rows(sessions) == {CAPTURE: ("cli", "")}


def test_a_dns_failure_is_kept_as_unanswered_not_wrong(
    sessions: sessionmaker[Session], demo: DemoAddresses, settings: Settings, tmp_path: Path
) -> None:
    """With a name server that never answers, every verdict is kept as a failed lookup
    (status error, lookup_failed), and the domain's outcome is "unanswered", never "wrong"."""
    with sessions.begin() as session:  # a key, so DKIM is looked up too (not "no key yet")
        box = SecretBox.from_file(settings.secrets.key_file)
        keys.create_key(session, find_tenant(session, "acme"), DOMAIN, box)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        dead = _site(settings, f"127.0.0.1:{silent.getsockname()[1]}", tmp_path)
        _check(sessions, dead, CheckedBy.CLI)
    with sessions() as session:
        last = last_checks(session, find_tenant(session, "acme").id)
    for domain in (DOMAIN, CAPTURE):
        kept = last[domain]
        assert kept.outcome == "unanswered"
        statuses = {(r["status"], r["lookup_failed"]) for r in kept.results}
        assert statuses == {("error", True)}, kept.results
        assert kept.as_dict()["outcome"] == "unanswered"


# --- the API ------------------------------------------------------------------------------------


Serve = Callable[[], AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def serve(sessions: sessionmaker[Session], blobs: BlobStore, settings: Settings) -> Serve:
    """A new app on a loopback port each time: nothing carried from one to the next."""

    @asynccontextmanager
    async def serving() -> AsyncIterator[httpx.AsyncClient]:
        server = HTTPServer(
            build_app(sessions, blobs, settings.http, site=settings),
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
    """An API token of acme named "test"."""
    with sessions.begin() as session:
        return make_token(session, find_tenant(session, "acme"))


async def test_the_records_carry_each_domains_last_check(
    serve: Serve, token: str, dns_server: DNSServer, cli: Check
) -> None:
    """`last_check` is null before any check, the API's own check after POST /v1/dns/check
    (by api, the token's name), and the CLI's after `dns check`, in a server started later."""
    dns_server.add(DOMAIN, "TXT", "v=spf1 mx -all")
    async with serve() as client:
        before = await client.get("/v1/dns/records", headers=bearer(token))
        assert before.status_code == 200, before.text
        assert before.json()["domains"] == [
            {"domain": DOMAIN, "role": "customer", "last_check": None},
            {"domain": CAPTURE, "role": "capture", "last_check": None},
        ]
        assert before.json()["data"]
        checked = await client.post("/v1/dns/check", headers=bearer(token))
        assert checked.status_code == 200, checked.text
        after = (await client.get("/v1/dns/records", headers=bearer(token))).json()
    by_domain = {d["domain"]: d["last_check"] for d in after["domains"]}
    assert by_domain[DOMAIN]["checked_by"] == "api" and by_domain[DOMAIN]["actor"] == "test"
    assert by_domain[DOMAIN]["outcome"] == "wrong"
    assert {r["kind"] for r in by_domain[DOMAIN]["results"]} == {"spf", "dkim", "dmarc"}
    assert [r["status"] for r in by_domain[CAPTURE]["results"]] == ["missing"]
    assert by_domain[CAPTURE]["results"][0]["fix"].startswith(f"{CAPTURE}.")

    dns_server.add(CAPTURE, "MX", (10, "mx.capture.example"))
    assert cli(CAPTURE) == 0
    async with serve() as client:
        later = (await client.get("/v1/dns/records", headers=bearer(token))).json()
    by_domain = {d["domain"]: d["last_check"] for d in later["domains"]}
    assert by_domain[CAPTURE]["checked_by"] == "cli" and by_domain[CAPTURE]["outcome"] == "ok"
    assert by_domain[DOMAIN]["checked_by"] == "api"  # not part of that check: left as it was


# --- the page -----------------------------------------------------------------------------------


@pytest.fixture
def admin(world: World) -> Iterator[World]:
    """Richard, acme's staff member, made a tenant admin."""
    with world.sessions.begin() as session:
        session.execute(update(Staff).where(Staff.id == world.richard).values(admin=True))
    yield world


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_a_cli_check_shows_on_the_page_and_a_page_check_on_a_fresh_server(
    admin: World, browser: Browser, dns_server: DNSServer, cli: Check
) -> None:
    """`dns check` run from the command line shows on the DNS page, record by record, with when
    and by what; the page's own check shows on a second server that never ran it."""
    world, page = admin, browser.page
    dns_server.add(DOMAIN, "TXT", "v=spf1 mx -all")
    assert cli("acme") == 1
    _sign_in(browser, _link(world))
    page.goto(f"{world.pages.url}/admin/dns")
    top = page.text_content("#checked-at") or ""
    assert "Last checked" in top and "by the command line" in top and "to fix" in top
    customer = page.locator(f'[id="domain-{DOMAIN}"]')
    assert "by the command line" in (customer.locator(".checked").text_content() or "")
    spf = customer.locator("li.check").filter(has_text="SPF").first
    assert f"our include:{INCLUDE} is missing" in (spf.text_content() or "")
    assert f"include:{INCLUDE}" in (spf.locator("code[id$=-fix]").text_content() or "")
    capture = page.locator(f'[id="domain-{CAPTURE}"]')
    assert "missing" in (capture.locator("li.check").text_content() or "")
    browser.shot("dns-from-cli")

    dns_server.add(CAPTURE, "MX", (10, "mx.capture.example"))
    with page.expect_navigation():
        page.click("#check-now")
    assert "by richard on this page" in (page.text_content("#checked-at") or "")

    with RunningPages(world.sessions, world.blobs, world.pages.settings) as second:
        page.goto(f"{second.url}/admin/dns")
        if page.url.endswith("/signin"):  # the session cookie is per host, so it usually goes
            link = _link(world).replace(world.pages.url, second.url)
            _sign_in(browser, link)
            page.goto(f"{second.url}/admin/dns")
        assert "Last checked" in (page.text_content("#checked-at") or "")
        capture = page.locator(f'[id="domain-{CAPTURE}"]')
        assert "by richard on this page" in (capture.locator(".checked").text_content() or "")
        assert "MX points at mx.capture.example" in (
            capture.locator("li.check-ok").text_content() or ""
        )
