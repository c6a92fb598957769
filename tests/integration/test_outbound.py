"""The outbound queue and MX delivery, against real SMTP servers and a real DNS server.

Recording SMTP servers on 127.0.0.5x stand in for remote MX hosts; the test DNS server's MX
and A records point at them, and ``[relay] smtp_port`` is the port they share. The delivery
worker runs in the test's event loop, the recorders in their own threads.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.relay.worker import DeliveryWorker
from mailledger.store import outbox
from mailledger.store.blobs import BlobStore
from mailledger.store.models import OutboundKind, OutboundMessage, OutboundState
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.mail import make_email
from mailledger.testing.recorder import Recorder, start_recorders
from mailledger.testing.tls import self_signed_context, trusting_client_context

SENDER = "richard@acme.example"
HOSTNAME = "relay.mailledger.test"
MX1, MX2, SENDER_MX, IMPLICIT, SMART = (
    "127.0.0.51",
    "127.0.0.52",
    "127.0.0.53",
    "127.0.0.54",
    "127.0.0.60",
)


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    """example.net: MX 10 mx1, MX 20 mx2; acme.example (the sender's domain) MX → 127.0.0.53."""
    with DNSServer(negative_ttl=0) as server:
        server.add("example.net", "MX", (10, "mx1.example.net"))
        server.add("example.net", "MX", (20, "mx2.example.net"))
        server.add("mx1.example.net", "A", MX1)
        server.add("mx2.example.net", "A", MX2)
        server.add("acme.example", "MX", (10, "mx.acme.example"))
        server.add("mx.acme.example", "A", SENDER_MX)
        server.add("nullmx.example", "MX", (0, ""))
        server.add("nullmx.example", "A", MX1)  # must never be dialled: the null MX says so
        server.add("implicit.example", "A", IMPLICIT)
        server.add("smarthost.test", "A", SMART)
        yield server


@pytest.fixture
def recorders() -> Iterator[tuple[int, dict[str, Recorder]]]:
    """One recorder per address, all on one port: (port, address → recorder)."""
    port, started = start_recorders([MX1, MX2, SENDER_MX, IMPLICIT])
    yield port, {r.host: r for r in started}
    for recorder in started:
        recorder.close()


def relay_settings(settings: Settings, dns: DNSServer, port: int, **relay: Any) -> Settings:
    """The test settings with delivery pointed at the recorders, fast retries and leases."""
    values: dict[str, Any] = {
        "smtp_port": port,
        "retry_schedule_seconds": [0.2, 0.2],
        "connect_timeout_seconds": 2.0,
        "command_timeout_seconds": 5.0,
        "lease_seconds": 2.0,
        "poll_interval_seconds": 0.05,
        **relay,
    }
    return settings.model_copy(
        update={
            "relay": settings.relay.model_copy(update=values),
            "dns": dns.settings(timeout_seconds=1.0),
            "service": settings.service.model_copy(update={"hostname": HOSTNAME}),
        }
    )


class Relay:
    """The worker running in the test's loop, and helpers to queue and wait."""

    def __init__(self, sessions: sessionmaker[Session], blobs: BlobStore, settings: Settings):
        self.sessions = sessions
        self.blobs = blobs
        self.settings = settings
        self.worker: DeliveryWorker | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self, **kwargs: Any) -> None:
        self.worker = DeliveryWorker(
            self.sessions, self.blobs, self.settings, Resolver(self.settings.dns), **kwargs
        )
        self.task = asyncio.create_task(self.worker.run())

    async def stop(self) -> None:
        if self.worker is not None and self.task is not None:
            await self.worker.stop()
            await self.task
            self.worker = self.task = None

    def send(
        self,
        raw: bytes,
        rcpt_to: list[str],
        *,
        mail_from: str = SENDER,
        kind: OutboundKind = OutboundKind.RELAY,
    ) -> str:
        with self.sessions.begin() as session:
            rows = outbox.enqueue(
                session, self.blobs, raw=raw, mail_from=mail_from, rcpt_to=rcpt_to, kind=kind
            )
            queue_id = rows[0].queue_id
        if self.worker is not None:
            self.worker.wake()
        return queue_id

    def rows(self, **where: Any) -> list[OutboundMessage]:
        with self.sessions() as session:
            query = select(OutboundMessage).order_by(OutboundMessage.id)
            for key, value in where.items():
                query = query.where(getattr(OutboundMessage, key) == value)
            return list(session.scalars(query))

    async def until(
        self, predicate: Callable[[], bool], seconds: float = 10.0, what: str = ""
    ) -> None:
        deadline = time.monotonic() + seconds
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or predicate}")
            await asyncio.sleep(0.02)

    async def settled(self, queue_id: str, seconds: float = 10.0) -> list[OutboundMessage]:
        """Wait until every row of ``queue_id`` has reached a final state."""
        await self.until(
            lambda: all(r.state in outbox.FINAL_STATES for r in self.rows(queue_id=queue_id)),
            seconds,
            f"queue id {queue_id} to settle",
        )
        return self.rows(queue_id=queue_id)


MakeRelay = Callable[..., Relay]


@pytest.fixture
async def make_relay(
    settings: Settings, sessions: sessionmaker[Session], blobs: BlobStore, dns: DNSServer
) -> AsyncIterator[MakeRelay]:
    """``make_relay(port, **relay_settings)``: a worker (not started) stopped at teardown."""
    made: list[Relay] = []

    def make(port: int, **relay: Any) -> Relay:
        made.append(Relay(sessions, blobs, relay_settings(settings, dns, port, **relay)))
        return made[-1]

    yield make
    for running in made:
        await running.stop()


@pytest.fixture
async def relay(make_relay: MakeRelay, recorders: tuple[int, dict[str, Recorder]]) -> Relay:
    """A started delivery worker with the default test settings."""
    running = make_relay(recorders[0])
    running.start()
    return running


def message(subject: str = "Quote", body: str | None = None, **kwargs: Any) -> bytes:
    """An outgoing email from richard@acme.example."""
    return make_email(
        sender=f"Richard Smith <{SENDER}>",
        to="Bob <bob@example.net>",
        subject=subject,
        body=body or "Hello Bob,\r\nthe quote is attached.\r\nRichard\r\n",
        **kwargs,
    )


def dsns(recorder: Recorder) -> list[email.message.EmailMessage]:
    """The DSNs the sender's MX received, parsed."""
    found = []
    for transaction in recorder.accepted:
        assert transaction.mail_from == ""
        parsed = email.message_from_bytes(transaction.data, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        found.append(parsed)
    return found


def delivery_status(report: email.message.EmailMessage) -> list[dict[str, str]]:
    """The message/delivery-status part as field groups (per-message first)."""
    parts = list(report.iter_parts())
    status = parts[1]
    assert status.get_content_type() == "message/delivery-status"
    groups = []
    for block in status.get_payload():
        groups.append({k.lower(): str(v) for k, v in block.items()})
    return groups


def no_bare_line_ends(data: bytes) -> bool:
    """Whether every CR and LF in ``data`` is part of a CRLF."""
    return data.replace(b"\r\n", b"").count(b"\r") == 0 and b"\n" not in data.replace(b"\r\n", b"")


# --- delivery -----------------------------------------------------------------------------------


async def test_delivers_exact_bytes_to_the_preferred_mx(
    relay: Relay, recorders: tuple[int, dict[str, Recorder]]
) -> None:
    """The first MX gets the envelope and exactly the queued bytes, dot lines and 8-bit intact."""
    _, hosts = recorders
    body = ".leading dot\r\n..two dots\r\n.\r\nnot the end\r\nna\xefve caf\xe9\r\n"
    raw = message(body=body)
    raw = raw.replace(b"\r\n\r\n", b"\r\nX-Trailing-Space: yes \r\n\r\n", 1)
    queue_id = relay.send(raw, ["bob@example.net", "Alice@Example.NET"])
    rows = await relay.settled(queue_id)
    assert [r.state for r in rows] == [OutboundState.DELIVERED]
    (transaction,) = hosts[MX1].transactions
    assert transaction.data == raw
    assert transaction.mail_from == SENDER
    assert transaction.rcpt_tos == ["bob@example.net", "Alice@Example.NET"]
    assert transaction.helo == HOSTNAME
    assert not transaction.tls
    assert any(o.startswith("SIZE=") for o in transaction.mail_options)
    assert "BODY=8BITMIME" in transaction.mail_options
    assert hosts[MX2].transactions == []
    assert rows[0].attempts == 1
    assert rows[0].results["bob@example.net"]["code"] == 250
    assert rows[0].results["bob@example.net"]["host"].startswith("mx1.example.net[127.0.0.51]")


async def test_one_row_per_recipient_domain(
    relay: Relay, recorders: tuple[int, dict[str, Recorder]]
) -> None:
    """Recipients in two domains make two rows with one queue id, each delivered to its MX."""
    _, hosts = recorders
    raw = message()
    queue_id = relay.send(raw, ["bob@example.net", "ops@implicit.example"])
    rows = await relay.settled(queue_id)
    assert sorted(r.domain for r in rows) == ["example.net", "implicit.example"]
    assert all(r.state is OutboundState.DELIVERED for r in rows)
    assert len({r.blob for r in rows}) == 1
    assert [t.rcpt_tos for t in hosts[MX1].transactions] == [["bob@example.net"]]
    # implicit.example has no MX records: its A record is the implicit MX (RFC 5321 §5.1).
    assert [t.rcpt_tos for t in hosts[IMPLICIT].transactions] == [["ops@implicit.example"]]
    assert hosts[IMPLICIT].transactions[0].data == raw


async def test_opportunistic_starttls(
    make_relay: MakeRelay,
    tmp_path: Path,
) -> None:
    """A host that offers STARTTLS gets the message over TLS, self-signed certificate or not."""
    context, _, _ = self_signed_context("mx1.example.net", tmp_path)
    port, started = start_recorders([MX1], tls_context=context)
    relay = make_relay(port)
    relay.start()
    try:
        raw = message()
        rows = await relay.settled(relay.send(raw, ["bob@example.net"]))
        assert rows[0].state is OutboundState.DELIVERED
        (transaction,) = started[0].transactions
        assert transaction.tls
        assert transaction.data == raw
    finally:
        await relay.stop()
        started[0].close()


async def test_failed_tls_handshake_is_retried_in_clear(
    make_relay: MakeRelay,
) -> None:
    """A host whose TLS handshake fails is dialled again without STARTTLS and gets the mail."""
    broken = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # no certificate: every handshake fails
    port, started = start_recorders([MX1], tls_context=broken)
    relay = make_relay(port)
    relay.start()
    try:
        rows = await relay.settled(relay.send(message(), ["bob@example.net"]))
        assert rows[0].state is OutboundState.DELIVERED
        assert rows[0].attempts == 1
        (transaction,) = started[0].transactions
        assert not transaction.tls
        assert started[0].connections == 2
    finally:
        await relay.stop()
        started[0].close()


@pytest.mark.postgres
async def test_temporary_failure_then_success(
    relay: Relay, recorders: tuple[int, dict[str, Recorder]]
) -> None:
    """A 451 after DATA is retried on the schedule, and the second attempt delivers."""
    _, hosts = recorders
    hosts[MX1].script("DATA", "451 4.3.0 try again later")
    raw = message()
    queue_id = relay.send(raw, ["bob@example.net"])
    rows = await relay.settled(queue_id)
    assert rows[0].state is OutboundState.DELIVERED
    assert rows[0].attempts == 2
    assert [t.reply.split()[0] for t in hosts[MX1].transactions] == ["451", "250"]
    assert all(t.data == raw for t in hosts[MX1].transactions)
    assert hosts[SENDER_MX].transactions == []  # no DSN for a delivered message


@pytest.mark.postgres
async def test_permanent_failure_bounces_with_a_dsn(
    relay: Relay, recorders: tuple[int, dict[str, Recorder]]
) -> None:
    """A 550 at RCPT bounces that recipient; its sender gets an RFC 3464 report from <>."""
    _, hosts = recorders
    hosts[MX1].rcpt_replies["nobody@example.net"] = "550 5.1.1 <nobody@example.net>: no such user"
    raw = message(subject="Quote for the spring order")
    queue_id = relay.send(raw, ["nobody@example.net", "bob@example.net"])
    rows = await relay.settled(queue_id)
    assert rows[0].state is OutboundState.BOUNCED
    assert rows[0].results["bob@example.net"]["status"] == "delivered"
    assert rows[0].results["nobody@example.net"]["status"] == "failed"
    assert [t.rcpt_tos for t in hosts[MX1].transactions] == [["bob@example.net"]]

    await hosts[SENDER_MX].wait_for_async(lambda ts: any(t.accepted for t in ts))
    (dsn_transaction,) = hosts[SENDER_MX].accepted
    assert dsn_transaction.rcpt_tos == [SENDER]
    assert no_bare_line_ends(dsn_transaction.data)
    (report,) = dsns(hosts[SENDER_MX])
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["To"].addresses[0].addr_spec == SENDER
    assert report["Auto-Submitted"] == "auto-replied"
    human, _, headers = report.iter_parts()
    assert "nobody@example.net" in human.get_content()
    per_message, *per_recipient = delivery_status(report)
    assert per_message["reporting-mta"] == f"dns; {HOSTNAME}"
    assert "arrival-date" in per_message
    assert per_recipient == [
        {
            "final-recipient": "rfc822; nobody@example.net",
            "action": "failed",
            "status": "5.1.1",
            "remote-mta": "dns; mx1.example.net",
            "diagnostic-code": "smtp; 550 5.1.1 <nobody@example.net>: no such user",
            "last-attempt-date": per_recipient[0]["last-attempt-date"],
        }
    ]
    assert headers.get_content_type() == "text/rfc822-headers"
    assert b"Subject: Quote for the spring order" in dsn_transaction.data
    assert b"the quote is attached" not in dsn_transaction.data  # headers only
    (dsn_row,) = relay.rows(kind=OutboundKind.DSN)
    dsn_rows = await relay.settled(dsn_row.queue_id)
    assert [(r.mail_from, r.rcpt_to, r.state) for r in dsn_rows] == [
        ("", [SENDER], OutboundState.DELIVERED)
    ]


async def test_data_5xx_bounces_every_accepted_recipient(
    relay: Relay, recorders: tuple[int, dict[str, Recorder]]
) -> None:
    """A 554 after DATA fails the whole transaction: one DSN listing both recipients."""
    _, hosts = recorders
    hosts[MX1].script("DATA", "554 5.6.0 content rejected")
    queue_id = relay.send(message(), ["bob@example.net", "carol@example.net"])
    rows = await relay.settled(queue_id)
    assert rows[0].state is OutboundState.BOUNCED
    assert rows[0].attempts == 1
    await hosts[SENDER_MX].wait_for_async(lambda ts: any(t.accepted for t in ts))
    (report,) = dsns(hosts[SENDER_MX])
    _, *per_recipient = delivery_status(report)
    assert [g["final-recipient"] for g in per_recipient] == [
        "rfc822; bob@example.net",
        "rfc822; carol@example.net",
    ]
    assert {g["status"] for g in per_recipient} == {"5.6.0"}


async def test_no_dsn_for_a_dsn_or_a_null_sender(
    relay: Relay, recorders: tuple[int, dict[str, Recorder]]
) -> None:
    """Failures of mail from <> (a DSN included) are recorded but never reported (RFC 3461)."""
    _, hosts = recorders
    hosts[MX1].rcpt_replies["nobody@example.net"] = "550 5.1.1 no such user"
    first = relay.send(message(), ["nobody@example.net"], mail_from="", kind=OutboundKind.DSN)
    second = relay.send(message(), ["nobody@example.net"], mail_from="")
    for queue_id in (first, second):
        rows = await relay.settled(queue_id)
        assert rows[0].state is OutboundState.BOUNCED
        assert rows[0].results["nobody@example.net"]["reported"] is True
    await asyncio.sleep(0.3)
    assert len(relay.rows()) == 2
    assert hosts[SENDER_MX].connections == 0


async def test_second_mx_when_the_first_refuses_connections(
    relay: Relay, recorders: tuple[int, dict[str, Recorder]]
) -> None:
    """With the preferred MX down (connection refused), the next preference gets the mail."""
    _, hosts = recorders
    hosts[MX1].stop()
    raw = message()
    rows = await relay.settled(relay.send(raw, ["bob@example.net"]))
    assert rows[0].state is OutboundState.DELIVERED
    assert rows[0].attempts == 1
    (transaction,) = hosts[MX2].transactions
    assert transaction.data == raw
    assert rows[0].results["bob@example.net"]["host"].startswith("mx2.example.net")


async def test_greeting_421_moves_on_to_the_next_mx(
    relay: Relay, recorders: tuple[int, dict[str, Recorder]]
) -> None:
    """A host that answers MAIL with 4xx is skipped for the next MX in the same attempt."""
    _, hosts = recorders
    hosts[MX1].script("MAIL", "421 4.3.2 service shutting down")
    rows = await relay.settled(relay.send(message(), ["bob@example.net"]))
    assert rows[0].state is OutboundState.DELIVERED
    assert rows[0].attempts == 1
    assert len(hosts[MX2].transactions) == 1


async def test_null_mx_fails_without_trying(
    relay: Relay, recorders: tuple[int, dict[str, Recorder]]
) -> None:
    """A null MX (RFC 7505) is a permanent 556 5.1.10 at once; no host is dialled."""
    _, hosts = recorders
    rows = await relay.settled(relay.send(message(), ["info@nullmx.example"]))
    assert rows[0].state is OutboundState.BOUNCED
    assert rows[0].attempts == 1
    result = rows[0].results["info@nullmx.example"]
    assert (result["code"], result["host"]) == (556, "")
    assert result["text"].startswith("5.1.10")
    assert hosts[MX1].connections == 0
    await hosts[SENDER_MX].wait_for_async(lambda ts: any(t.accepted for t in ts))
    (report,) = dsns(hosts[SENDER_MX])
    _, group = delivery_status(report)
    assert group["status"] == "5.1.10"
    assert "remote-mta" not in group


async def test_nonexistent_domain_fails(relay: Relay) -> None:
    """A recipient domain that does not exist (NXDOMAIN) bounces with 5.1.2."""
    rows = await relay.settled(relay.send(message(), ["x@no-such-domain.example"]))
    assert rows[0].state is OutboundState.BOUNCED
    assert rows[0].results["x@no-such-domain.example"]["text"].startswith("5.1.2")


async def test_host_down_for_a_while_then_back(
    make_relay: MakeRelay,
    recorders: tuple[int, dict[str, Recorder]],
) -> None:
    """Both MX hosts down: attempts are deferred; once one is back, the message goes out."""
    port, hosts = recorders
    hosts[MX1].stop()
    hosts[MX2].stop()
    relay = make_relay(port, retry_schedule_seconds=[0.2] * 20)
    relay.start()
    try:
        raw = message()
        queue_id = relay.send(raw, ["bob@example.net"])
        await relay.until(lambda: relay.rows()[0].attempts >= 3, what="three failed attempts")
        row = relay.rows()[0]
        assert row.state is OutboundState.QUEUED
        assert "connection failed" in row.last_error
        hosts[MX2].start()
        rows = await relay.settled(queue_id)
        assert rows[0].state is OutboundState.DELIVERED
        assert [t.data for t in hosts[MX2].transactions] == [raw]
        assert hosts[SENDER_MX].transactions == []
    finally:
        await relay.stop()


async def test_schedule_runs_out_and_the_sender_gets_a_dsn(
    relay: Relay, recorders: tuple[int, dict[str, Recorder]]
) -> None:
    """Temporary failures past the last interval expire the row and report Action: failed."""
    _, hosts = recorders
    hosts[MX1].rcpt_replies["bob@example.net"] = "452 4.2.2 mailbox full"
    hosts[MX2].rcpt_replies["bob@example.net"] = "452 4.2.2 mailbox full"
    rows = await relay.settled(relay.send(message(), ["bob@example.net"]))
    # retry_schedule_seconds = [0.2, 0.2]: the first try and two retries.
    assert rows[0].state is OutboundState.EXPIRED
    assert rows[0].attempts == 3
    assert rows[0].results["bob@example.net"]["expired"] is True
    await hosts[SENDER_MX].wait_for_async(lambda ts: any(t.accepted for t in ts))
    (report,) = dsns(hosts[SENDER_MX])
    _, group = delivery_status(report)
    assert group["action"] == "failed"
    assert group["status"] == "4.2.2"
    assert group["diagnostic-code"] == "smtp; 452 4.2.2 mailbox full"


async def test_message_over_the_remote_size_limit_bounces(
    make_relay: MakeRelay,
) -> None:
    """A host that advertises SIZE smaller than the message is not sent it: 552 5.3.4."""
    port, started = start_recorders([MX1, MX2, SENDER_MX], size_limit=2000)
    relay = make_relay(port)
    relay.start()
    try:
        big = message(body="x" * 70 + "\r\n" * 1 + ("y" * 70 + "\r\n") * 60)
        rows = await relay.settled(relay.send(big, ["bob@example.net"]))
        assert rows[0].state is OutboundState.BOUNCED
        assert rows[0].results["bob@example.net"]["text"].startswith("5.3.4")
        assert started[0].transactions == []
    finally:
        await relay.stop()
        for recorder in started:
            recorder.close()


async def test_per_domain_concurrency_limit(
    make_relay: MakeRelay,
    recorders: tuple[int, dict[str, Recorder]],
) -> None:
    """With max_per_domain = 1, one domain's messages go one connection at a time."""
    port, hosts = recorders
    hosts[MX1].data_delay = 0.15
    relay = make_relay(port, max_per_domain=1)
    ids = [relay.send(message(subject=f"n{i}"), ["bob@example.net"]) for i in range(4)]
    other = relay.send(message(), ["ops@implicit.example"])
    relay.start()
    try:
        for queue_id in [*ids, other]:
            await relay.settled(queue_id)
        assert len(hosts[MX1].accepted) == 4
        assert hosts[MX1].max_live == 1
        # Another domain is not held up behind example.net's queue.
        implicit_done = hosts[IMPLICIT].transactions[0].at
        assert implicit_done < hosts[MX1].transactions[-1].at
    finally:
        await relay.stop()


async def test_stop_hands_back_a_delivery_in_flight(
    make_relay: MakeRelay,
    recorders: tuple[int, dict[str, Recorder]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """stop() waits for a delivery in flight, then cuts it off and releases its claim."""
    monkeypatch.setattr("mailledger.relay.worker.STOP_GRACE_SECONDS", 0.2)
    port, hosts = recorders
    hosts[MX1].data_delay = 3
    relay = make_relay(port, lease_seconds=30)
    relay.start()
    relay.send(message(), ["bob@example.net"])
    await hosts[MX1].wait_for_async(lambda ts: len(ts) == 1)
    await relay.stop()
    (row,) = relay.rows()
    assert row.state is OutboundState.QUEUED
    assert row.claimed_by is None  # due again at once, not after the 30 s lease


# --- smarthost ----------------------------------------------------------------------------------


async def test_smarthost_with_tls_and_auth(
    make_relay: MakeRelay,
    tmp_path: Path,
) -> None:
    """Every message goes to the smarthost, over verified TLS, after AUTH with our credentials."""
    context, cert, _ = self_signed_context("smarthost.test", tmp_path)
    port, started = start_recorders([SMART], tls_context=context, auth={"relay": "s3cret"})
    smart = started[0]
    relay = make_relay(
        1,  # never used: no MX delivery
        smarthost=f"smarthost.test:{port}",
        smarthost_username="relay",
        smarthost_password="s3cret",
    )
    relay.start(smarthost_tls_context=trusting_client_context(cert))
    try:
        raw = message()
        queue_id = relay.send(raw, ["bob@example.net", "x@nullmx.example"])
        rows = await relay.settled(queue_id)
        assert {r.state for r in rows} == {OutboundState.DELIVERED}
        assert sorted(t.rcpt_tos[0] for t in smart.transactions) == [
            "bob@example.net",
            "x@nullmx.example",
        ]
        assert all(
            t.tls and t.authenticated == "relay" and t.data == raw for t in smart.transactions
        )
    finally:
        await relay.stop()
        smart.close()


async def test_smarthost_without_tls_is_not_sent_credentials(
    make_relay: MakeRelay,
) -> None:
    """smarthost_require_tls: a smarthost that offers no STARTTLS gets nothing; the row waits."""
    port, started = start_recorders([SMART])
    relay = make_relay(
        1,
        smarthost=f"{SMART}:{port}",
        smarthost_username="relay",
        smarthost_password="s3cret",
        retry_schedule_seconds=[30.0],
    )
    relay.start()
    try:
        relay.send(message(), ["bob@example.net"])
        await relay.until(lambda: relay.rows()[0].attempts == 1 and not relay.rows()[0].claimed_by)
        (row,) = relay.rows()
        assert row.state is OutboundState.QUEUED
        assert "STARTTLS" in row.last_error
        assert started[0].transactions == []
    finally:
        await relay.stop()
        started[0].close()
