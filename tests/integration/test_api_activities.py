"""The activities API through real HTTP against the server serve() runs (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings, VerifySettings
from mailledger.store import directory
from mailledger.store.blobs import BlobStore
from mailledger.store.models import Activity, Tenant
from mailledger.testing.api import RunningApi, bearer, insert_activity, make_token, running_api
from mailledger.testing.mail import make_email
from mailledger.testing.smtp import send_raw_async

pytestmark = pytest.mark.postgres

PUBLIC_URL = "https://mail-api.acme.test"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\n"


@dataclass
class World:
    api: RunningApi
    client: httpx.AsyncClient
    token: str
    read_only: str
    other_token: str
    activity: int
    raw: bytes
    other_activity: int


async def _wait_for_activity(sessions: sessionmaker[Session], tenant_id: int) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with sessions() as session:
            found = session.scalars(
                select(Activity.id).where(Activity.tenant_id == tenant_id)
            ).first()
        if found is not None:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError("the forwarded email was not recorded")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Loopback senders count as authenticated forwarders, as in the demo; links use PUBLIC_URL."""
    http = settings.http.model_copy(update={"public_url": PUBLIC_URL})
    return settings.model_copy(
        update={"verify": VerifySettings(demo_trust_loopback=True), "http": http}
    )


@pytest.fixture
async def world(
    settings: Settings, sessions: sessionmaker[Session], demo: DemoAddresses, blobs: BlobStore
) -> AsyncIterator[World]:
    """acme with one email recorded through SMTP (a PDF attached), and a second tenant."""
    with sessions.begin() as session:
        acme = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        token = make_token(session, acme)
        read_only = make_token(session, acme, read_only=True)
        other = directory.add_tenant(session, "globex", "globex.capture.example")
        other_token = make_token(session, other)
        other_activity = insert_activity(session, other.id, subject="globex secret")
        acme_id = acme.id
    raw = make_email(
        subject="Quote with the plan",
        attachments=[("plan ü.pdf", "application/pdf", PDF)],
    )
    async with running_api(settings) as api:
        await send_raw_async(api.smtp_port, demo.contact_address, [demo.user_capture], raw)
        activity = await _wait_for_activity(sessions, acme_id)
        async with httpx.AsyncClient(base_url=api.base_url, timeout=20) as client:
            yield World(api, client, token, read_only, other_token, activity, raw, other_activity)


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"] and body["title"] and body["detail"]
    return body


async def test_list_shows_the_recorded_activity_with_every_field(world: World) -> None:
    """A page holds the activity as DESIGN §10/§11 name its fields, with working links."""
    response = await world.client.get("/v1/activities", headers=bearer(world.token))
    assert response.status_code == 200
    page = response.json()
    assert [a["id"] for a in page["data"]] == [world.activity]
    item = page["data"][0]
    for key in (
        "id", "tenant", "direction", "subject", "from", "staff", "contacts", "message_id",
        "occurred_at", "auth", "sources", "thread", "participants", "attachments",
        "regarding", "updated_at",
    ):  # fmt: skip
        assert key in item, key
    assert item["tenant"] == "acme"
    assert item["direction"] == "inbound"
    assert item["from"] == "carol@client.example"
    assert item["staff"] == "richard"
    assert item["regarding"] is None
    assert {"role": "from", "address": "carol@client.example", "kind": "contact"}.items() <= (
        item["participants"][0].items()
    )
    attachment = item["attachments"][0]
    assert attachment["name"] == "plan ü.pdf"
    assert attachment["type"] == "application/pdf"
    assert attachment["size"] == len(PDF)
    assert attachment["inline"] is False
    # Links are built on [http] public_url (the proxy's address), not on the bound port.
    assert attachment["url"] == f"{PUBLIC_URL}/v1/activities/{world.activity}/attachments/1"
    # The next page is empty and hands back the same cursor: the reader polls with it.
    again = await world.client.get(
        "/v1/activities", params={"after": page["next"]}, headers=bearer(world.token)
    )
    assert again.json() == {"data": [], "next": page["next"]}


async def test_raw_and_attachment_downloads_are_byte_exact(world: World) -> None:
    """The raw message is what SMTP received; the attachment is the PDF's exact bytes."""
    raw = await world.client.get(
        f"/v1/activities/{world.activity}/raw", headers=bearer(world.token)
    )
    assert raw.status_code == 200
    assert raw.headers["content-type"] == "message/rfc822"
    assert raw.content.endswith(world.raw)  # our Received/Authentication-Results may lead
    item = (
        await world.client.get(f"/v1/activities/{world.activity}", headers=bearer(world.token))
    ).json()
    url = item["attachments"][0]["url"].replace(PUBLIC_URL, world.api.base_url)
    pdf = await world.client.get(url, headers=bearer(world.token))
    assert pdf.status_code == 200
    assert pdf.content == PDF
    assert pdf.headers["content-type"] == "application/pdf"
    assert "filename*=UTF-8''plan%20%C3%BC.pdf" in pdf.headers["content-disposition"]
    assert "Quote" in item["subject"]
    assert "please send the quote" in item["text_body"]
    _problem(
        await world.client.get(
            f"/v1/activities/{world.activity}/attachments/2", headers=bearer(world.token)
        ),
        404,
    )


async def test_patch_regarding_sets_and_clears_and_moves_updated_at(world: World) -> None:
    """PATCH links the activity to a CRM record; null unlinks it; updated_at moves."""
    url = f"/v1/activities/{world.activity}"
    before = (await world.client.get(url, headers=bearer(world.token))).json()
    await asyncio.sleep(0.01)
    regarding = {"type": "opportunity", "id": "42", "label": "Spring order"}
    response = await world.client.patch(
        url, json={"regarding": regarding}, headers=bearer(world.token)
    )
    assert response.status_code == 200, response.text
    assert response.json()["regarding"] == regarding
    assert response.json()["updated_at"] > before["updated_at"]
    listed = (await world.client.get("/v1/activities", headers=bearer(world.token))).json()
    assert listed["data"][0]["regarding"] == regarding
    cleared = await world.client.patch(url, json={"regarding": None}, headers=bearer(world.token))
    assert cleared.json()["regarding"] is None


async def test_bad_patch_bodies_name_the_field(world: World) -> None:
    """Wrong bodies are problem documents naming what to fix."""
    url = f"/v1/activities/{world.activity}"
    headers = bearer(world.token)
    body = _problem(
        await world.client.patch(url, json={"regarding": {"id": "1"}}, headers=headers), 422
    )
    assert body["field"] == "regarding.type"
    body = _problem(
        await world.client.patch(
            url, json={"regarding": {"type": "Bad Type!", "id": "1"}}, headers=headers
        ),
        422,
    )
    assert body["field"] == "regarding.type"
    body = _problem(await world.client.patch(url, json={"subject": "x"}, headers=headers), 422)
    assert body["field"] == "subject"
    _problem(
        await world.client.patch(
            url, content=b"{not json", headers={**headers, "content-type": "application/json"}
        ),
        400,
    )
    _problem(
        await world.client.patch(
            url, content=b"regarding", headers={**headers, "content-type": "text/plain"}
        ),
        415,
    )


async def test_read_only_token_cannot_patch(world: World) -> None:
    """A read-only token reads, and its PATCH is 403 with nothing changed."""
    url = f"/v1/activities/{world.activity}"
    assert (await world.client.get(url, headers=bearer(world.read_only))).status_code == 200
    body = {"regarding": {"type": "ticket", "id": "7"}}
    _problem(await world.client.patch(url, json=body, headers=bearer(world.read_only)), 403)
    assert (await world.client.get(url, headers=bearer(world.token))).json()["regarding"] is None


def _every_endpoint(activity: int) -> list[tuple[str, str, dict[str, Any] | None]]:
    return [
        ("GET", f"/v1/activities/{activity}", None),
        ("GET", f"/v1/activities/{activity}/raw", None),
        ("GET", f"/v1/activities/{activity}/attachments/1", None),
        ("PATCH", f"/v1/activities/{activity}", {"regarding": {"type": "x", "id": "1"}}),
    ]


async def test_another_tenants_ids_are_not_found(world: World) -> None:
    """Every endpoint answers 404 for the other tenant's activity, never 403, in both ways."""
    for token, foreign in (
        (world.token, world.other_activity),
        (world.other_token, world.activity),
    ):
        for method, path, body in _every_endpoint(foreign):
            response = await world.client.request(method, path, json=body, headers=bearer(token))
            _problem(response, 404)
    # And the other tenant's feed holds only its own activity.
    page = (await world.client.get("/v1/activities", headers=bearer(world.other_token))).json()
    assert [a["id"] for a in page["data"]] == [world.other_activity]


async def test_without_or_with_a_bad_token_is_401(world: World) -> None:
    """No token, a wrong scheme, an unknown token: 401 with WWW-Authenticate: Bearer."""
    endpoints = [("GET", "/v1/activities", None), *_every_endpoint(world.activity)]
    for headers in ({}, {"Authorization": f"Basic {world.token}"}, bearer("mlt_nope")):
        for method, path, body in endpoints:
            response = await world.client.request(method, path, json=body, headers=headers)
            _problem(response, 401)
            assert response.headers["www-authenticate"].startswith("Bearer")


async def test_revoked_token_stops_working(world: World, sessions: sessionmaker[Session]) -> None:
    """Revoking takes effect on the next request."""
    from mailledger.store.apitokens import revoke_token, token_hash
    from mailledger.store.models import ApiToken

    with sessions.begin() as session:
        row = session.scalars(
            select(ApiToken).where(ApiToken.token_hash == token_hash(world.token))
        ).one()
        revoke_token(session, row.id)
    response = await world.client.get("/v1/activities", headers=bearer(world.token))
    _problem(response, 401)


async def test_bad_parameters_are_422_naming_them_and_routes_405(world: World) -> None:
    """Cursor, limit, filters and unknown parameters are checked; wrong methods are 405."""
    headers = bearer(world.token)
    for params, field in (
        ({"after": "garbage"}, "after"),
        ({"limit": "0"}, "limit"),
        ({"limit": "100000"}, "limit"),
        ({"direction": "sideways"}, "direction"),
        ({"since": "yesterday"}, "since"),
        ({"contact": "not an address"}, "contact"),
        ({"thread": "x"}, "thread"),
        ({"colour": "red"}, "colour"),
    ):
        response = await world.client.get("/v1/activities", params=params, headers=headers)
        assert _problem(response, 422)["field"] == field
    response = await world.client.delete(f"/v1/activities/{world.activity}", headers=headers)
    _problem(response, 405)
    assert "PATCH" in response.headers["allow"]
    _problem(await world.client.get("/v1/nothing", headers=headers), 404)


async def test_filters_narrow_the_feed(world: World, sessions: sessionmaker[Session]) -> None:
    """contact, staff, company, direction, since and thread each select what they name."""
    with sessions.begin() as session:
        acme = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        outbound = insert_activity(session, acme.id, direction="outbound", subject="out")
    headers = bearer(world.token)

    async def ids(**params: str) -> list[int]:
        response = await world.client.get("/v1/activities", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return [a["id"] for a in response.json()["data"]]

    assert await ids() == [world.activity, outbound]
    assert await ids(direction="outbound") == [outbound]
    assert await ids(direction="inbound") == [world.activity]
    assert await ids(contact="Carol@Client.Example") == [world.activity]
    assert await ids(contact="nobody@client.example") == []
    assert await ids(staff="richard") == [world.activity]
    assert await ids(staff="nobody") == []
    assert await ids(company="Client Co") == [world.activity]
    assert await ids(company="Nobody Inc") == []
    assert await ids(since="2999-01-01T00:00:00Z") == []
    assert world.activity in await ids(since="2000-01-01")
    thread = (await world.client.get(f"/v1/activities/{world.activity}", headers=headers)).json()[
        "thread"
    ]
    assert await ids(thread=str(thread)) == [world.activity]


async def test_cli_regard_is_the_same_rule(
    world: World, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`activities regard` sets what the API shows, and refuses a bad type as the API does."""
    from mailledger.cli.main import main

    monkeypatch.setenv("MAILLEDGER_DATABASE__URL", settings.database.url)
    regard = ["activities", "regard", str(world.activity)]
    assert main([*regard, "ticket", "T-9", "--label", "Fix"]) == 0
    assert main([*regard, "Bad Type!", "1"]) == 1
    assert main(["activities", "regard", "999999", "ticket", "1"]) == 1
    item = (
        await world.client.get(f"/v1/activities/{world.activity}", headers=bearer(world.token))
    ).json()
    assert item["regarding"] == {"type": "ticket", "id": "T-9", "label": "Fix"}
