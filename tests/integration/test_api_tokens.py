"""API tokens through the real CLI, used over real HTTP; the per-token rate limit."""

from __future__ import annotations

import json

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.store.models import ApiToken, Tenant
from mailledger.testing.api import bearer, make_token, running_api
from mailledger.testing.cli import InProcessCli

pytestmark = pytest.mark.postgres


@pytest.fixture
def cli(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> InProcessCli:
    """The CLI on the test's database, migrated by `db upgrade` (so 0007 runs for real)."""
    monkeypatch.setenv("MAILLEDGER_DATABASE__URL", settings.database.url)
    monkeypatch.setenv("MAILLEDGER_STORAGE__BLOB_DIR", settings.storage.blob_dir)
    run = InProcessCli(capsys)
    run("db", "upgrade")
    run("tenant", "add", "acme", "--capture-domain", "acme.capture.example")
    return run


async def test_token_made_by_the_cli_reads_the_api_until_revoked(
    cli: InProcessCli, settings: Settings
) -> None:
    """create prints the token once (stdout alone); list never shows it; revoke ends it."""
    token = cli("api-token", "create", "acme", "--name", "crm sync").strip()
    assert token.startswith("mlt_") and len(token) > 40
    assert "shown only now" in cli.err
    listed = json.loads(cli("api-token", "list", "acme", "--json"))
    assert [(t["name"], t["read_only"], t["state"]) for t in listed] == [
        ("crm sync", False, "active")
    ]
    assert token not in json.dumps(listed)
    assert listed[0]["prefix"] == token[:12]
    assert listed[0]["last_used_at"] is None
    async with (
        running_api(settings) as api,
        httpx.AsyncClient(base_url=api.base_url, timeout=20) as client,
    ):
        response = await client.get("/v1/activities", headers=bearer(token))
        assert response.status_code == 200
        assert response.json()["data"] == []
        listed = json.loads(cli("api-token", "list", "acme", "--json"))
        assert listed[0]["last_used_at"] is not None
        assert cli("api-token", "revoke", str(listed[0]["id"])).strip().endswith("revoked")
        response = await client.get("/v1/activities", headers=bearer(token))
        assert response.status_code == 401
    assert json.loads(cli("api-token", "list", "acme", "--json"))[0]["state"] == "revoked"


def test_cli_token_errors_name_what_to_fix(cli: InProcessCli) -> None:
    """An unknown tenant or token id is exit 1 with a message; a read-only token says so."""
    cli("api-token", "create", "nobody", expect=1)
    cli("api-token", "revoke", "999", expect=1)
    assert "api-token list" in cli.err
    cli("api-token", "create", "acme", "--read-only")
    assert "read-only" in cli.err
    assert json.loads(cli("api-token", "list", "acme", "--json"))[0]["read_only"] is True
    assert cli("api-token", "list", "acme").splitlines()[0].split()[:3] == [
        "ID",
        "NAME",
        "PREFIX",
    ]


@pytest.fixture
def limited(settings: Settings) -> Settings:
    """A rate limit of 3 requests a minute per token."""
    http = settings.http.model_copy(update={"rate_limit_per_minute": 3})
    return settings.model_copy(update={"http": http})


async def test_rate_limit_is_per_token_with_retry_after(
    limited: Settings, sessions: sessionmaker[Session], demo: DemoAddresses
) -> None:
    """The fourth request in a minute is 429 with Retry-After; another token is unaffected."""
    with sessions.begin() as session:
        acme = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        first, second = make_token(session, acme), make_token(session, acme)
    async with (
        running_api(limited) as api,
        httpx.AsyncClient(base_url=api.base_url, timeout=20) as client,
    ):
        for _ in range(3):
            response = await client.get("/v1/activities", headers=bearer(first))
            assert response.status_code == 200
        response = await client.get("/v1/activities", headers=bearer(first))
        assert response.status_code == 429
        assert response.headers["content-type"].startswith("application/problem+json")
        assert 1 <= int(response.headers["retry-after"]) <= 20
        response = await client.get("/v1/activities", headers=bearer(second))
        assert response.status_code == 200
    with sessions() as session:
        assert session.scalar(select(ApiToken.last_used_at).where(ApiToken.id == 1)) is not None
