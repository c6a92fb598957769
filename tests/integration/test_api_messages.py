"""Sending from the CRM through real HTTP against the running server: ``POST /v1/messages``
goes through the relay as a submission would (DKIM-signed at the MX, one outbound activity),
staff signatures, and the tenant's system sender for sign-in mail.

The world: the demo tenant acme (richard, with a signature) and its DKIM key for acme.example
published on the test DNS server; globex with its own staff member and activity; client.example
and acme.example's MX a recording SMTP server on 127.0.0.51.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage, MIMEPart
from pathlib import Path
from typing import Any, TypeVar

import dkim
import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.cli.main import main
from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.domains import keys
from mailledger.domains.systemsender import system_sender
from mailledger.store import directory
from mailledger.store.models import (
    Activity,
    Direction,
    OutboundKind,
    OutboundMessage,
    Staff,
    Tenant,
)
from mailledger.store.secretbox import SecretBox
from mailledger.testing.api import bearer, insert_activity, make_token, running_api
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.recorder import Recorder, Transaction, start_recorders

pytestmark = pytest.mark.postgres

MX = "127.0.0.51"
HOSTNAME = "mx.capture.example"
MAX_MESSAGE_BYTES = 200_000
SIGNATURE = "Richard Smith\nAcme Ltd, sales"
SIGNATURE_HTML = "<p><b>Richard Smith</b><br>Acme Ltd</p>"

T = TypeVar("T")


@dataclass
class World:
    """The running service, its clients, and the rows the tests point at."""

    settings: Settings
    sessions: sessionmaker[Session]
    client: httpx.AsyncClient
    mx: Recorder
    dns: DNSServer
    token: str
    read_only: str
    other_token: str
    acme_id: int
    other_activity: int


@pytest.fixture
def remote() -> Iterator[tuple[DNSServer, int, Recorder]]:
    """client.example's and acme.example's MX: one recorder; the DNS server that says so."""
    port, started = start_recorders([MX])
    with DNSServer(negative_ttl=0) as server:
        for domain in ("client.example", "acme.example", "acme.net"):
            server.add(domain, "MX", f"10 mx.{domain}.")
            server.add(f"mx.{domain}", "A", MX)
        yield server, port, started[0]
    for recorder in started:
        recorder.close()


def configured(settings: Settings, dns: DNSServer, port: int, tmp_path: Path) -> Settings:
    """Delivery to the recorder, DNS from the test server, a small message size limit."""
    return settings.model_copy(
        update={
            "dns": dns.settings(timeout_seconds=1.0),
            "service": settings.service.model_copy(update={"hostname": HOSTNAME}),
            "capture": settings.capture.model_copy(update={"max_message_bytes": MAX_MESSAGE_BYTES}),
            "submission": settings.submission.model_copy(update={"listen": [], "listen_tls": []}),
            "relay": settings.relay.model_copy(
                update={
                    "smtp_port": port,
                    "poll_interval_seconds": 0.05,
                    "retry_schedule_seconds": [0.2],
                    "connect_timeout_seconds": 2.0,
                    "dkim_key_dir": str(tmp_path / "dkim"),
                }
            ),
            "http": settings.http.model_copy(update={"rate_limit_per_minute": 100_000}),
        }
    )


@pytest.fixture
async def world(
    settings: Settings,
    sessions: sessionmaker[Session],
    demo: DemoAddresses,
    remote: tuple[DNSServer, int, Recorder],
    tmp_path: Path,
) -> AsyncIterator[World]:
    """acme (the demo) with tokens, a published DKIM key and richard's signature; globex."""
    dns, port, mx = remote
    site = configured(settings, dns, port, tmp_path)
    with sessions.begin() as session:
        acme = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        token = make_token(session, acme)
        read_only = make_token(session, acme, read_only=True)
        richard = directory.find_staff(session, acme, "richard")
        directory.set_signature(session, richard, text=SIGNATURE, html=SIGNATURE_HTML)
        box = SecretBox.from_file(site.secrets.key_file)
        key = keys.create_key(session, acme, "acme.example", box, selector="s1")
        dns.add(keys.record_name(key.selector, key.domain), "TXT", key.public_record)
        globex = directory.add_tenant(
            session, "globex", "globex.capture.example", ["globex.example"]
        )
        directory.add_staff(session, globex, "wile", ["wile@globex.example"])
        other_token = make_token(session, globex)
        other_activity = insert_activity(session, globex.id, message_id="x@globex.example")
        acme_id = acme.id
    async with (
        running_api(site) as api,
        httpx.AsyncClient(base_url=api.base_url, timeout=20) as client,
    ):
        yield World(
            site,
            sessions,
            client,
            mx,
            dns,
            token,
            read_only,
            other_token,
            acme_id,
            other_activity,
        )


async def eventually(probe: Callable[[], T | None], seconds: float = 10.0) -> T:
    """Poll ``probe`` (in a thread) until it returns something."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(probe)
        if value is not None:
            return value
        await asyncio.sleep(0.05)
    raise TimeoutError("condition not met")


def _problem(response: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    if field is not None:
        assert body.get("field") == field, body
    return body


async def delivered(world: World, message_id: str) -> Transaction:
    """The transaction at the MX that carried the message with this Message-ID."""
    needle = f"Message-ID: <{message_id}>".encode()

    def found(ts: list[Transaction]) -> bool:
        return any(t.accepted and needle in t.data for t in ts)

    transactions = await world.mx.wait_for_async(found)
    return next(t for t in transactions if t.accepted and needle in t.data)


def content(part: MIMEPart | None) -> str:
    """A text part's content with one kind of line end, as it was given."""
    assert part is not None
    value = part.get_content()
    assert isinstance(value, str)
    return value.replace("\r\n", "\n")


def parsed(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def outbound_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(OutboundMessage)) or 0)


# --- sending ------------------------------------------------------------------------------------


async def test_text_html_and_attachment_go_out_signed_with_the_signature(world: World) -> None:
    """202 with a queue id; the MX gets one DKIM-signed message with our Message-ID, both
    parts with the signature, the attachment, no Bcc header; one outbound activity."""
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 8
    answer = await world.client.post(
        "/v1/messages",
        json={
            "staff": "richard",
            "to": ["Carol Client <carol@client.example>"],
            "cc": ["dave@client.example"],
            "bcc": ["erin@client.example"],
            "subject": "Angebot für Köln",
            "text": "Hello Carol,\n\nthe quote is attached.\n",
            "html": "<html><body><p>Hello Carol,</p><p>the quote is attached.</p></body></html>",
            "attachments": [
                {
                    "name": "Angebot Köln.pdf",
                    "content_type": "application/pdf",
                    "content": base64.b64encode(pdf).decode(),
                }
            ],
        },
        headers=bearer(world.token),
    )
    assert answer.status_code == 202, answer.text
    queue_id, message_id = answer.json()["queue_id"], answer.json()["message_id"]
    assert re.fullmatch(r"[0-9a-f]{32}@acme\.example", message_id)
    location = answer.headers["location"]
    assert location == f"/v1/queue/{queue_id}"

    transaction = await delivered(world, message_id)
    assert transaction.mail_from == "richard@acme.example"
    assert sorted(transaction.rcpt_tos) == [
        "carol@client.example",
        "dave@client.example",
        "erin@client.example",
    ]
    data = transaction.data
    assert data.startswith(b"DKIM-Signature:")
    assert b"d=acme.example" in data.split(b"\r\n\r\n", 1)[0]
    assert dkim.verify(data, dnsfunc=Resolver(world.settings.dns).dkim_dnsfunc)
    message = parsed(data)
    assert message["Message-ID"] == f"<{message_id}>"
    assert message["From"] == "Richard Smith <richard@acme.example>"
    assert message["Subject"] == "Angebot für Köln"
    assert message["Date"]
    assert message["Bcc"] is None and b"erin@" not in data.split(b"\r\n\r\n", 1)[0]
    assert "with HTTP" in message["Received"]
    assert message.get_content_type() == "multipart/mixed"
    text = content(message.get_body(("plain",)))
    html = content(message.get_body(("html",)))
    assert text.endswith("attached.\n-- \n" + SIGNATURE + "\n")
    assert f'<div class="signature">-- <br>\n{SIGNATURE_HTML}</div>' in html
    assert html.rstrip().endswith("</body></html>")
    (attached,) = list(message.iter_attachments())
    assert attached.get_filename() == "Angebot Köln.pdf"
    assert attached.get_content() == pdf

    # The queue entry the Location names, read through the API.
    state = await world.client.get(location, headers=bearer(world.token))
    assert state.status_code == 200, state.text
    assert state.json()["queue_id"] == queue_id
    assert {row["domain"] for row in state.json()["data"]} == {"client.example"}

    def activity() -> Activity | None:
        with world.sessions() as session:
            return session.scalars(
                select(Activity).where(Activity.message_id == message_id)
            ).first()

    recorded = await eventually(activity)
    with world.sessions() as session:
        richard = session.scalars(select(Staff).where(Staff.username == "richard")).one()
        assert recorded.direction is Direction.OUTBOUND
        assert recorded.staff_id == richard.id
        assert recorded.auth["trust"] == "submission"
        acme_activities = select(func.count()).where(Activity.tenant_id == world.acme_id)
        assert session.scalar(acme_activities.select_from(Activity)) == 1
        rows = session.scalars(select(OutboundMessage)).all()
        assert {(r.kind, r.queue_id) for r in rows} == {(OutboundKind.RELAY, queue_id)}
        assert rows[0].signing == "signed d=acme.example s=s1"


async def test_an_answer_carries_in_reply_to_and_references(world: World) -> None:
    """Answering an activity threads the mail: its Message-ID, after its References."""
    with world.sessions.begin() as session:
        answered = insert_activity(
            session,
            world.acme_id,
            message_id="question@client.example",
            in_reply_to="first@acme.example",
            references="root@client.example first@acme.example",
        )
    answer = await world.client.post(
        "/v1/messages",
        json={
            "staff": "richard",
            "to": ["carol@client.example"],
            "subject": "Re: your question",
            "text": "Yes.",
            "in_reply_to": answered,
        },
        headers=bearer(world.token),
    )
    assert answer.status_code == 202, answer.text
    message = parsed((await delivered(world, answer.json()["message_id"])).data)
    assert message["In-Reply-To"] == "<question@client.example>"
    assert message["References"].split() == [
        "<root@client.example>",
        "<first@acme.example>",
        "<question@client.example>",
    ]
    assert message.get_content_type() == "text/plain"
    assert content(message) == "Yes.\n-- \n" + SIGNATURE + "\n"


async def test_refusals_are_problems_and_queue_nothing(world: World) -> None:
    """Someone else's or an unowned From 422, read-only 403, another tenant's staff or
    activity 404, too large 413; none of them queues anything."""
    c, h = world.client, bearer(world.token)
    base = {"staff": "richard", "to": ["carol@client.example"], "subject": "x", "text": "x"}

    async def post(token: str = world.token, **fields: Any) -> httpx.Response:
        return await c.post("/v1/messages", json=base | fields, headers=bearer(token))

    # richard.smith@gmail.com is richard's own, but gmail.com is no domain acme owns.
    gmail = await post(**{"from": "richard.smith@gmail.com"})
    assert "not a verified customer domain" in _problem(gmail, 422, "from")["detail"]
    _problem(await post(**{"from": "wile@globex.example"}), 422, "from")
    with world.sessions.begin() as session:
        acme = session.get_one(Tenant, world.acme_id)
        directory.add_staff(session, acme, "alice", ["alice@acme.example"])
    colleague = await post(**{"from": "alice@acme.example"})
    assert "not an address of richard" in _problem(colleague, 422, "from")["detail"]

    _problem(await post(world.read_only), 403)
    _problem(await post(staff="wile"), 404, "staff")
    _problem(await post(world.other_token), 404, "staff")
    _problem(await post(in_reply_to=world.other_activity), 404, "in_reply_to")

    def attachment(size: int, content_type: str = "application/octet-stream") -> dict[str, str]:
        content = base64.b64encode(b"\x00" * size).decode()
        return {"name": "big.bin", "content_type": content_type, "content": content}

    # Over the limit decoded; under it decoded but over it once base64-encoded in the message.
    _problem(await post(attachments=[attachment(MAX_MESSAGE_BYTES + 1)]), 413)
    grown = await post(attachments=[attachment(160_000)])
    assert "base64" in _problem(grown, 413)["detail"]
    huge = b'{"staff": "richard", "text": "' + b"x" * (3 * MAX_MESSAGE_BYTES) + b'"}'
    json_type = {"content-type": "application/json"}
    _problem(await c.post("/v1/messages", content=huge, headers=h | json_type), 413)

    _problem(await post(to=[]), 422, "to")
    _problem(await post(to=["a@b.example, c@d.example"]), 422, "to")
    _problem(await post(subject="a\r\nBcc: x@y.example"), 422, "subject")
    _problem(await post(text=None), 422, "text")
    _problem(await post(colour="red"), 422, "colour")
    multipart = attachment(10, "multipart/mixed")
    _problem(await post(attachments=[multipart]), 422, "attachments[0].content_type")
    _problem(await c.post("/v1/messages", content=b"{}", headers=h), 415)
    assert outbound_count(world.sessions) == 0

    # Another tenant's queue entry is not found either.
    sent = await post()
    assert sent.status_code == 202, sent.text
    _problem(await c.get(sent.headers["location"], headers=bearer(world.other_token)), 404)
    _problem(await c.get("/v1/queue/99999999999999999999", headers=h), 404)


async def test_the_staff_api_sets_the_signature(world: World) -> None:
    """PATCH /v1/staff/{username} changes the signature the next mail carries."""
    c, h = world.client, bearer(world.token)
    changed = await c.patch(
        "/v1/staff/richard", json={"signature_text": "R.\r\nAcme", "signature_html": ""}, headers=h
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["signature_text"] == "R.\nAcme"
    assert changed.json()["signature_html"] == ""
    too_long = await c.patch("/v1/staff/richard", json={"signature_text": "x" * 10_001}, headers=h)
    _problem(too_long, 422, "signature_text")
    answer = await c.post(
        "/v1/messages",
        json={
            "staff": "richard",
            "to": ["carol@client.example"],
            "subject": "s",
            "html": "<p>Hi</p>",
        },
        headers=h,
    )
    assert answer.status_code == 202, answer.text
    message = parsed((await delivered(world, answer.json()["message_id"])).data)
    assert message.get_content_type() == "text/html"
    # Without an HTML signature, the text one is shown, escaped, line by line.
    signed = '<p>Hi</p>\n<div class="signature">-- <br>\nR.<br>\nAcme</div>\n'
    assert content(message) == signed


# --- the CLI ------------------------------------------------------------------------------------


async def cli(world: World, monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    """``mailledger`` in-process (off the server's loop), configured like the running server."""
    settings = world.settings
    env = {
        "DATABASE__URL": settings.database.url,
        "STORAGE__BLOB_DIR": settings.storage.blob_dir,
        "DNS__NAMESERVERS": "[" + ",".join(f'"{s}"' for s in settings.dns.nameservers) + "]",
        "DNS__TIMEOUT_SECONDS": str(settings.dns.timeout_seconds),
        "RELAY__DKIM_KEY_DIR": settings.relay.dkim_key_dir,
        "SERVICE__HOSTNAME": settings.service.hostname,
    }
    monkeypatch.delenv("MAILLEDGER_CONFIG", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(f"MAILLEDGER_{key}", value)
    return await asyncio.to_thread(main, list(argv))


async def test_signature_cli_sets_text_and_html(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """`staff set --signature-file/--signature-html-file` stores both; an empty file clears;
    an unreadable file is refused naming it."""
    text, markup = tmp_path / "sig.txt", tmp_path / "sig.html"
    text.write_text("Richard\r\nAcme Köln\n", encoding="utf-8")
    markup.write_text("<p>Richard</p>", encoding="utf-8")
    args = ("staff", "set", "acme", "richard")
    both = ("--signature-file", str(text), "--signature-html-file", str(markup))
    assert await cli(world, monkeypatch, *args, *both) == 0, capsys.readouterr()
    assert re.search(r"signature +text 2 line\(s\), HTML 1 line\(s\)", capsys.readouterr().out)
    with world.sessions() as session:
        richard = session.scalars(select(Staff).where(Staff.username == "richard")).one()
        assert (richard.signature_text, richard.signature_html) == (
            "Richard\nAcme Köln",
            "<p>Richard</p>",
        )
    text.write_text("")
    assert await cli(world, monkeypatch, *args, "--signature-file", str(text)) == 0
    missing = tmp_path / "nowhere.txt"
    assert await cli(world, monkeypatch, *args, "--signature-file", str(missing)) == 1
    assert f"cannot read the signature file {missing}" in capsys.readouterr().err
    with world.sessions() as session:
        richard = session.scalars(select(Staff).where(Staff.username == "richard")).one()
        assert (richard.signature_text, richard.signature_html) == ("", "<p>Richard</p>")


# --- the system sender --------------------------------------------------------------------------


async def test_system_sender_needs_a_verified_key_and_signs_the_signin_mail(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An address whose domain's key is not published is refused with the fix; once it is,
    the sign-in link comes from it, DKIM-signed as that domain; `default` goes back."""
    with world.sessions.begin() as session:
        acme = session.get_one(Tenant, world.acme_id)
        directory.add_customer_domain(session, acme, "acme.net")
        directory.add_staff(session, acme, "office", ["office@acme.net"])
        box = SecretBox.from_file(world.settings.secrets.key_file)
        key = keys.create_key(session, acme, "acme.net", box, selector="sys")
        record = (keys.record_name(key.selector, key.domain), key.public_record)
    args = ("tenant", "set", "acme", "--system-sender")

    assert await cli(world, monkeypatch, *args, "office@acme.net") == 1
    refusal = capsys.readouterr().err
    assert "refused: the DKIM key of acme.net is not published and verified" in refusal
    assert "sys._domainkey.acme.net" in refusal and "dns check acme" in refusal
    assert await cli(world, monkeypatch, *args, "richard.smith@gmail.com") == 1
    assert "not a verified customer domain" in capsys.readouterr().err
    with world.sessions() as session:
        assert system_sender(session, world.acme_id, world.settings.service).chosen is False

    world.dns.add(record[0], "TXT", record[1])
    assert await cli(world, monkeypatch, *args, "office@acme.net") == 0
    assert "system-sender: office@acme.net (the tenant's choice, DKIM-signed) (changed)" in (
        capsys.readouterr().out
    )

    # The sign-in form, as a browser posts it: the link goes to richard from office@acme.net.
    page = await world.client.get("/signin")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token is not None, page.text
    posted = await world.client.post(
        "/signin", data={"address": "richard@acme.example", "csrf": token.group(1)}
    )
    assert posted.status_code == 200, posted.text

    def signin(ts: list[Transaction]) -> bool:
        return any(t.accepted and b"sign-in link" in t.data for t in ts)

    (mail,) = [t for t in await world.mx.wait_for_async(signin) if b"sign-in link" in t.data]
    assert mail.mail_from == "office@acme.net" and mail.rcpt_tos == ["richard@acme.example"]
    assert parsed(mail.data)["From"] == "mailledger <office@acme.net>"
    assert b"d=acme.net" in mail.data.split(b"\r\n\r\n", 1)[0]
    assert dkim.verify(mail.data, dnsfunc=Resolver(world.settings.dns).dkim_dnsfunc)

    assert await cli(world, monkeypatch, *args, "default") == 0
    assert (
        f"system-sender: noreply@{HOSTNAME} ([service] system_address)" in capsys.readouterr().out
    )
