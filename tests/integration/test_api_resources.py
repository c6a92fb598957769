"""API v1's resources beside activities, through real HTTP against the running server:
contacts, companies, staff, never-log entries, quarantine, received messages, the queue."""

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
from mailledger.store.models import MessageState, ReceivedMessage, Tenant
from mailledger.testing.api import bearer, insert_activity, make_token, running_api
from mailledger.testing.mail import make_email
from mailledger.testing.received import insert_quarantined
from mailledger.testing.smtp import send_raw_async

pytestmark = pytest.mark.postgres


@dataclass
class World:
    client: httpx.AsyncClient
    smtp_port: int
    token: str
    read_only: str
    other_token: str
    acme_id: int
    other: dict[str, Any]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Loopback senders count as authenticated forwarders, as in the demo."""
    return settings.model_copy(update={"verify": VerifySettings(demo_trust_loopback=True)})


@pytest.fixture
async def world(
    settings: Settings, sessions: sessionmaker[Session], demo: DemoAddresses, blobs: BlobStore
) -> AsyncIterator[World]:
    """acme (the demo) with tokens, and globex with one row of every kind."""
    with sessions.begin() as session:
        acme = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        token = make_token(session, acme)
        read_only = make_token(session, acme, read_only=True)
        globex = directory.add_tenant(session, "globex", "globex.capture.example")
        other_token = make_token(session, globex)
        wile = directory.add_staff(session, globex, "wile", ["wile@globex.example"])
        other = {
            "contact": directory.add_contact(session, globex, ["road@runner.example"]).id,
            "company": directory.create_company(session, globex, "Acme Rockets", []).id,
            "never_log": directory.add_never_log(session, globex, "secret.example").id,
            "message": insert_quarantined(session, globex, wile),
            "staff": "wile",
            "activity": insert_activity(session, globex.id),
        }
        acme_id = acme.id
    async with (
        running_api(settings) as api,
        httpx.AsyncClient(base_url=api.base_url, timeout=20) as client,
    ):
        yield World(client, api.smtp_port, token, read_only, other_token, acme_id, other)


def _problem(response: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    if field is not None:
        assert body.get("field") == field, body
    return body


async def test_contacts_crud_with_paging_and_the_history_rule(world: World) -> None:
    """Create, page, get, change, refuse bad input by field, and remove only with ?history=."""
    c, h = world.client, bearer(world.token)
    made = await c.post(
        "/v1/contacts",
        json={"addresses": ["Dana@Client.example"], "name": "Dana", "company": "Client Co"},
        headers=h,
    )
    assert made.status_code == 201, made.text
    dana = made.json()
    assert dana["addresses"] == ["dana@client.example"] and dana["company"] == "Client Co"
    assert made.headers["location"] == f"/v1/contacts/{dana['id']}"
    taken = await c.post("/v1/contacts", json={"addresses": ["dana@client.example"]}, headers=h)
    assert "already a contact" in _problem(taken, 422, "addresses")["detail"]
    _problem(await c.post("/v1/contacts", json={"name": "x"}, headers=h), 422, "addresses")
    _problem(await c.post("/v1/contacts", json={"addresses": "a@b.example"}, headers=h), 422)
    _problem(
        await c.post(
            "/v1/contacts", content=b"{", headers=h | {"content-type": "application/json"}
        ),
        400,
    )
    _problem(await c.post("/v1/contacts", content=b"{}", headers=h), 415)

    # The demo's carol and Dana, one per page; `next` carries on, and stays put at the end.
    first = (await c.get("/v1/contacts?limit=1", headers=h)).json()
    assert len(first["data"]) == 1
    second = (await c.get(f"/v1/contacts?limit=1&after={first['next']}", headers=h)).json()
    assert [r["id"] for r in second["data"]] == [dana["id"]]
    end = (await c.get(f"/v1/contacts?after={second['next']}", headers=h)).json()
    assert end == {"data": [], "next": second["next"]}
    _problem(await c.get("/v1/contacts?limit=0", headers=h), 422, "limit")
    _problem(await c.get("/v1/contacts?after=x", headers=h), 422, "after")
    _problem(await c.get("/v1/contacts?sort=name", headers=h), 422, "sort")

    url = f"/v1/contacts/{dana['id']}"
    changed = await c.patch(
        url,
        json={"name": "Dana C.", "company": "", "add_addresses": ["dana@home.example"]},
        headers=h,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["name"] == "Dana C." and changed.json()["company"] is None
    assert sorted(changed.json()["addresses"]) == ["dana@client.example", "dana@home.example"]
    last = await c.patch(
        url, json={"remove_addresses": ["dana@client.example", "dana@home.example"]}, headers=h
    )
    _problem(last, 422, "remove_addresses")
    assert len((await c.get(url, headers=h)).json()["addresses"]) == 2  # nothing half-done
    _problem(await c.patch(url, json={"colour": "red"}, headers=h), 422, "colour")
    _problem(await c.patch(url, json={}, headers=h), 422)

    _problem(await c.delete(url, headers=h), 422, "history")
    _problem(await c.delete(url + "?history=maybe", headers=h), 422, "history")
    removed = await c.delete(url + "?history=keep", headers=h)
    assert removed.status_code == 200 and removed.json()["history"] == "keep"
    _problem(await c.get(url, headers=h), 404)


async def test_companies_crud_refuses_free_mail_and_duplicates(world: World) -> None:
    """A company is made, renamed and given domains; free mail and a second one of a name fail."""
    c, h = world.client, bearer(world.token)
    made = await c.post(
        "/v1/companies", json={"name": "Initech", "domains": ["initech.example"]}, headers=h
    )
    assert made.status_code == 201, made.text
    initech = made.json()
    assert initech["domains"] == ["initech.example"]
    _problem(await c.post("/v1/companies", json={"name": "Initech"}, headers=h), 409, "name")
    free = await c.post("/v1/companies", json={"name": "G", "domains": ["gmail.com"]}, headers=h)
    assert "free-mail" in _problem(free, 422, "domains")["detail"]
    _problem(await c.post("/v1/companies", json={"domains": []}, headers=h), 422, "name")
    url = f"/v1/companies/{initech['id']}"
    changed = await c.patch(
        url, json={"name": "Initrode", "add_domains": ["initrode.example"]}, headers=h
    )
    assert changed.json()["name"] == "Initrode"
    assert changed.json()["domains"] == ["initech.example", "initrode.example"]
    bad = await c.patch(url, json={"remove_domains": ["nowhere.example"]}, headers=h)
    _problem(bad, 422, "remove_domains")
    listed = (await c.get("/v1/companies", headers=h)).json()["data"]
    assert "Initrode" in [row["name"] for row in listed]
    gone = await c.delete(url, headers=h)
    assert gone.json() == {
        "id": initech["id"],
        "name": "Initrode",
        "removed": True,
        "contacts_kept": 0,
    }
    _problem(await c.get(url, headers=h), 404)


async def test_staff_crud_disable_and_removal_with_history(world: World) -> None:
    """Staff are added with their capture address, changed, disabled, and removed as asked."""
    c, h = world.client, bearer(world.token)
    body = {"username": "bob", "addresses": ["bob@acme.example"], "name": "Bob"}
    made = await c.post("/v1/staff", json=body, headers=h)
    assert made.status_code == 201, made.text
    assert made.json()["capture_address"] == "bob@acme.capture.example"
    _problem(await c.post("/v1/staff", json=body, headers=h), 409, "username")
    taken = {"username": "bobby", "addresses": ["bob@acme.example"]}
    _problem(await c.post("/v1/staff", json=taken, headers=h), 422, "addresses")
    reserved = {"username": "postmaster", "addresses": ["pm@acme.example"]}
    _problem(await c.post("/v1/staff", json=reserved, headers=h), 422, "username")
    changed = await c.patch(
        "/v1/staff/bob", json={"name": "Robert", "admin": True, "disabled": True}, headers=h
    )
    assert changed.status_code == 200, changed.text
    record = changed.json()
    assert (record["name"], record["admin"], record["state"]) == ("Robert", True, "disabled")
    last = await c.patch(
        "/v1/staff/bob", json={"remove_addresses": ["bob@acme.example"]}, headers=h
    )
    _problem(last, 422, "remove_addresses")
    _problem(await c.patch("/v1/staff/bob", json={"admin": "yes"}, headers=h), 422, "admin")
    assert {"bob", "richard"} <= {
        s["username"] for s in (await c.get("/v1/staff", headers=h)).json()["data"]
    }
    _problem(await c.delete("/v1/staff/bob", headers=h), 422, "history")
    removed = await c.delete("/v1/staff/bob?history=remove", headers=h)
    assert removed.status_code == 200 and removed.json()["history"] == "remove"
    assert removed.json()["addresses_freed"] == 1
    _problem(await c.get("/v1/staff/bob", headers=h), 404)
    carl = {"username": "carl", "addresses": ["carl@acme.example"]}
    assert (await c.post("/v1/staff", json=carl, headers=h)).status_code == 201
    kept = await c.delete("/v1/staff/carl?history=keep", headers=h)
    assert kept.status_code == 200 and kept.json()["history"] == "keep"
    # Kept as the name on history: shown, but nothing more can be done to him.
    assert (await c.get("/v1/staff/carl", headers=h)).json()["removed_at"]
    _problem(await c.delete("/v1/staff/carl?history=keep", headers=h), 404)
    _problem(await c.patch("/v1/staff/carl", json={"name": "x"}, headers=h), 404)


async def test_never_log_entries(world: World) -> None:
    """Entries tenant-wide and per staff member are added, listed, found and removed."""
    c, h = world.client, bearer(world.token)
    wide = await c.post("/v1/never-log", json={"pattern": "@HR.example"}, headers=h)
    assert wide.status_code == 201, wide.text
    assert wide.json() | {"id": 0} == {
        "id": 0,
        "pattern": "hr.example",
        "kind": "domain",
        "staff": None,
    }
    own = await c.post(
        "/v1/never-log", json={"pattern": "doctor@clinic.example", "staff": "richard"}, headers=h
    )
    assert own.json()["staff"] == "richard" and own.json()["kind"] == "address"
    again = await c.post("/v1/never-log", json={"pattern": "hr.example"}, headers=h)
    _problem(again, 422, "pattern")
    _problem(
        await c.post("/v1/never-log", json={"pattern": "x.example", "staff": "nobody"}, headers=h),
        422,
        "staff",
    )
    everything = (await c.get("/v1/never-log", headers=h)).json()["data"]
    assert {e["pattern"] for e in everything} == {"hr.example", "doctor@clinic.example"}
    mine = (await c.get("/v1/never-log?staff=richard", headers=h)).json()["data"]
    assert [e["pattern"] for e in mine] == ["doctor@clinic.example"]
    url = f"/v1/never-log/{own.json()['id']}"
    assert (await c.get(url, headers=h)).json()["pattern"] == "doctor@clinic.example"
    assert (await c.delete(url, headers=h)).json()["removed"] is True
    _problem(await c.get(url, headers=h), 404)


async def _wait_for(check: Any, what: str) -> Any:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} did not happen")


async def test_release_from_quarantine_records_the_activity(
    world: World, demo: DemoAddresses, sessions: sessionmaker[Session]
) -> None:
    """Mail from an unknown sender is quarantined with its reason and trace; once the sender is
    a contact, a release processes it and the activity appears in GET /v1/activities."""
    c, h = world.client, bearer(world.token)
    raw = make_email(sender="Newt <newt@prospect.example>", subject="Quote for Newt")
    await send_raw_async(world.smtp_port, "newt@prospect.example", [demo.user_capture], raw)

    async def held() -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = (await c.get("/v1/quarantine", headers=h)).json()["data"]
        return listed

    (message,) = await _wait_for(held, "the quarantine")
    assert message["reason"].startswith("unknown-sender: newt@prospect.example")
    shown = (await c.get(f"/v1/quarantine/{message['queue_id']}", headers=h)).json()
    assert shown["trace"] and shown["routes"][0]["tenant"] == "acme"
    by_mid = await c.get(f"/v1/messages/{shown['message_id']}", headers=h)
    assert by_mid.json()["id"] == message["id"]
    trace = (await c.get(f"/v1/messages/{message['id']}/trace", headers=h)).json()["data"]
    assert [t["step"] for t in trace] == [t["step"] for t in shown["trace"]]

    await c.post("/v1/contacts", json={"addresses": ["newt@prospect.example"]}, headers=h)
    _problem(
        await c.post(f"/v1/quarantine/{message['id']}/release?force=perhaps", headers=h),
        422,
        "force",
    )
    released = await c.post(f"/v1/quarantine/{message['id']}/release", headers=h)
    assert released.status_code == 202, released.text
    assert released.json()["state"] == "received"
    again = await c.post(f"/v1/quarantine/{message['id']}/release", headers=h)
    assert "not quarantined" in _problem(again, 409)["detail"]

    async def recorded() -> list[dict[str, Any]]:
        page = (await c.get("/v1/activities", headers=h)).json()["data"]
        return [a for a in page if a["subject"] == "Quote for Newt"]

    (activity,) = await _wait_for(recorded, "the activity")
    assert activity["from"] == "newt@prospect.example"
    assert (await c.get(f"/v1/messages/{message['id']}", headers=h)).json()["state"] == "processed"
    _problem(await c.get(f"/v1/quarantine/{message['id']}", headers=h), 404)


async def test_quarantine_delete_and_the_outbound_queue(
    world: World, sessions: sessionmaker[Session], blobs: BlobStore
) -> None:
    """A quarantined message is deleted with its bytes; the queue lists the tenant's rows only."""
    c, h = world.client, bearer(world.token)
    with sessions.begin() as session:
        acme = session.get_one(Tenant, world.acme_id)
        staff = directory.find_staff(session, acme, "richard")
        held = insert_quarantined(session, acme, staff, blobs=blobs, raw=b"Subject: x\r\n\r\nx\r\n")
        digest = session.get_one(ReceivedMessage, held).blob
    deleted = await c.delete(f"/v1/quarantine/{held}", headers=h)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted"] is True and deleted.json()["raw_deleted"] is True
    assert not blobs.path(digest).exists()
    with sessions() as session:
        assert session.get(ReceivedMessage, held) is None
    assert (await c.get("/v1/queue", headers=h)).json() == {"data": []}
    _problem(await c.get("/v1/queue?state=lost", headers=h), 422, "state")


def _every_endpoint(other: dict[str, Any]) -> list[tuple[str, str, dict[str, Any] | None]]:
    contact, company, entry = other["contact"], other["company"], other["never_log"]
    message, staff = other["message"], other["staff"]
    return [
        ("GET", f"/v1/contacts/{contact}", None),
        ("PATCH", f"/v1/contacts/{contact}", {"name": "x"}),
        ("DELETE", f"/v1/contacts/{contact}?history=remove", None),
        ("GET", f"/v1/companies/{company}", None),
        ("PATCH", f"/v1/companies/{company}", {"name": "x"}),
        ("DELETE", f"/v1/companies/{company}", None),
        ("GET", f"/v1/staff/{staff}", None),
        ("PATCH", f"/v1/staff/{staff}", {"name": "x"}),
        ("DELETE", f"/v1/staff/{staff}?history=remove", None),
        ("GET", f"/v1/never-log/{entry}", None),
        ("DELETE", f"/v1/never-log/{entry}", None),
        ("GET", f"/v1/quarantine/{message}", None),
        ("POST", f"/v1/quarantine/{message}/release?force=true", None),
        ("DELETE", f"/v1/quarantine/{message}", None),
        ("GET", f"/v1/messages/{message}", None),
        ("GET", f"/v1/messages/{message}/trace", None),
    ]


async def test_another_tenants_ids_are_not_found(
    world: World, sessions: sessionmaker[Session]
) -> None:
    """Every operation on globex's rows with acme's token is a 404, and changes nothing."""
    for method, path, body in _every_endpoint(world.other):
        response = await world.client.request(method, path, json=body, headers=bearer(world.token))
        _problem(response, 404)
    # The lists hold only acme's rows; and globex's token still sees every one of its own.
    h = bearer(world.token)
    assert world.other["contact"] not in [
        r["id"] for r in (await world.client.get("/v1/contacts", headers=h)).json()["data"]
    ]
    assert (await world.client.get("/v1/quarantine", headers=h)).json()["total"] == 0
    assert "wile" not in [
        r["username"] for r in (await world.client.get("/v1/staff", headers=h)).json()["data"]
    ]
    theirs = bearer(world.other_token)
    for method, path, _ in _every_endpoint(world.other):
        if method == "GET":
            assert (await world.client.get(path, headers=theirs)).status_code == 200, path
    with sessions() as session:
        message = session.get_one(ReceivedMessage, world.other["message"])
        assert message.state is MessageState.QUARANTINED


async def test_read_only_token_cannot_change_anything(world: World) -> None:
    """Every write answers 403 to a read-only token; reads work."""
    ro = bearer(world.read_only)
    writes = [
        ("POST", "/v1/contacts", {"addresses": ["ro@client.example"]}),
        ("POST", "/v1/companies", {"name": "RO"}),
        ("POST", "/v1/staff", {"username": "ro", "addresses": ["ro@acme.example"]}),
        ("POST", "/v1/never-log", {"pattern": "ro.example"}),
        ("PATCH", "/v1/staff/richard", {"name": "x"}),
        ("DELETE", "/v1/staff/richard?history=keep", None),
        ("PATCH", "/v1/contacts/1", {"name": "x"}),
        ("DELETE", "/v1/contacts/1?history=keep", None),
        ("PATCH", "/v1/companies/1", {"name": "x"}),
        ("DELETE", "/v1/companies/1", None),
        ("DELETE", "/v1/never-log/1", None),
        ("POST", "/v1/quarantine/1/release", None),
        ("DELETE", "/v1/quarantine/1", None),
    ]
    for method, path, body in writes:
        _problem(await world.client.request(method, path, json=body, headers=ro), 403)
    for path in (
        "/v1/contacts",
        "/v1/companies",
        "/v1/staff",
        "/v1/never-log",
        "/v1/quarantine",
        "/v1/queue",
    ):
        assert (await world.client.get(path, headers=ro)).status_code == 200, path
    assert (await world.client.get("/v1/staff/richard", headers=ro)).json()["name"] != "x"
