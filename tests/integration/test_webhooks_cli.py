"""``mailledger webhook …`` in-process, against a database and a DNS server of the test's own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli import webhook as webhook_cli
from mailledger.cli.demo import seed_demo
from mailledger.store import directory, webhooks
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.models import Base, utcnow
from mailledger.store.secretbox import SecretBox, ensure_key_file
from mailledger.testing.cli import InProcessCli
from mailledger.testing.dnsserver import DNSServer


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    """crm.example is public, intranet.example private, gone.example does not exist."""
    with DNSServer(negative_ttl=0) as server:
        server.add("crm.example", "A", "93.184.216.34")
        server.add("intranet.example", "A", "93.184.216.35")
        server.add("intranet.example", "A", "10.0.0.5")
        yield server


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """The CLI's database with the schema and the demo tenant."""
    engine = make_engine(f"sqlite:///{tmp_path / 'cli.db'}")
    Base.metadata.create_all(engine)
    factory = make_sessionmaker(engine)
    with factory.begin() as session:
        seed_demo(session)
    yield factory
    engine.dispose()


def _config(tmp_path: Path, dns: DNSServer, *, allow_private: bool) -> Path:
    path = tmp_path / f"mailledger-{allow_private}.toml"
    path.write_text(
        f"""
[database]
url = "sqlite:///{tmp_path / "cli.db"}"
[storage]
blob_dir = "{tmp_path / "blobs"}"
[dns]
nameservers = ["{dns.address}"]
timeout_seconds = 1.0
[webhooks]
allow_private_targets = {"true" if allow_private else "false"}
[secrets]
key_file = "{tmp_path / "secret.key"}"
""",
        encoding="utf-8",
    )
    ensure_key_file(tmp_path / "secret.key")
    return path


@pytest.fixture
def run(
    tmp_path: Path,
    dns: DNSServer,
    sessions: sessionmaker[Session],
    capsys: pytest.CaptureFixture[str],
) -> InProcessCli:
    """The command, as production runs it: private targets refused."""
    return InProcessCli(capsys, _config(tmp_path, dns, allow_private=False))


def test_parser_event_types_are_the_stores() -> None:
    """The CLI's copy of the event types is the store's list."""
    assert webhook_cli.EVENT_TYPES == webhooks.EVENT_TYPES


def test_add_prints_the_secret_once_and_list_never_shows_it(run: InProcessCli) -> None:
    """`webhook add` prints a whsec_ secret; `webhook list` shows the endpoint without it."""
    out = run("webhook", "add", "acme", "https://crm.example/hooks", "--event", "activity.created")
    secret = out.split("keep it): ", 1)[1].strip()
    assert secret.startswith("whsec_")
    listing = run("webhook", "list", "acme")
    assert "https://crm.example/hooks" in listing
    assert secret not in listing
    [endpoint] = run.json("webhook", "list", "acme")
    assert endpoint["events"] == ["activity.created"]
    assert endpoint["state"] == "active"
    assert secret not in json.dumps(endpoint)
    run("webhook", "add", "acme", "https://93.184.216.34/all")
    assert run.json("webhook", "list", "acme")[1]["events"] == ["all"]


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://127.0.0.1:8080/hook", "127.0.0.1 is a loopback address"),
        ("https://intranet.example/hook", "10.0.0.5 is a private address"),
        ("https://[fd00::1]/hook", "unique-local"),
        ("https://169.254.169.254/latest", "link-local"),
        ("https://gone.example/hook", "has no address"),
    ],
)
def test_add_refuses_private_targets_naming_the_setting(
    run: InProcessCli, url: str, words: str
) -> None:
    """A URL whose host is not public is refused up front, saying which setting allows it."""
    run("webhook", "add", "acme", url, expect=1)
    assert words in run.err
    if "no address" not in words:
        assert "[webhooks] allow_private_targets" in run.err
    assert run.json("webhook", "list", "acme") == []


def test_add_accepts_private_targets_with_the_setting(
    tmp_path: Path, dns: DNSServer, sessions: sessionmaker[Session], capsys: Any
) -> None:
    """With allow_private_targets a loopback receiver can be registered (tests, a LAN CRM)."""
    run = InProcessCli(capsys, _config(tmp_path, dns, allow_private=True))
    run("webhook", "add", "acme", "http://127.0.0.1:8080/hook")
    assert run.json("webhook", "list", "acme")[0]["url"] == "http://127.0.0.1:8080/hook"


def test_bad_input_is_refused_clearly(run: InProcessCli) -> None:
    """A bad URL, an unknown tenant or event type, an unknown id: each says what is wrong."""
    run("webhook", "add", "acme", "ftp://crm.example/x", expect=1)
    assert "not an http:// or https:// URL" in run.err
    run("webhook", "add", "nosuch", "https://crm.example/x", expect=1)
    assert "nosuch" in run.err
    with pytest.raises(SystemExit) as exit_info:
        run("webhook", "add", "acme", "https://crm.example/x", "--event", "activity.deleted")
    assert exit_info.value.code == 2
    for verb in ("remove", "rotate", "deliveries", "enable"):
        run("webhook", verb, "99", expect=1)
        assert "no webhook endpoint 99" in run.err
    run("webhook", "replay", "99", expect=1)
    assert "no webhook delivery 99" in run.err


def test_rotate_prints_a_new_secret_and_both_sign(
    run: InProcessCli, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """`webhook rotate` prints the new secret; the old one signs until the overlap ends."""
    old = run("webhook", "add", "acme", "https://crm.example/h").split("keep it): ")[1].strip()
    out = run("webhook", "rotate", "1")
    new = out.split("keep it): ", 1)[1].splitlines()[0].strip()
    assert new.startswith("whsec_")
    assert new != old
    assert "the old secret signs too until" in out
    [listed] = run.json("webhook", "list", "acme")
    assert listed["rotating_until"] is not None
    with sessions() as session:
        endpoint = webhooks.find_endpoint(session, 1)
        box = SecretBox.from_file(tmp_path / "secret.key")
        assert webhooks.endpoint_secrets(endpoint, box, utcnow()) == (new, old)
    run("webhook", "rotate", "1", "--overlap-hours", "0")
    assert run.json("webhook", "list", "acme")[0]["rotating_until"] is None


def test_deliveries_list_every_attempt_and_replay_sends_again(
    run: InProcessCli, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """Attempts are listed with time, status, latency and answer; replay makes a new delivery."""
    run("webhook", "add", "acme", "https://crm.example/h")
    with sessions.begin() as session:
        tenant = directory.find_tenant(session, "acme")
        webhooks.emit(session, tenant.id, webhooks.MESSAGE_QUARANTINED, {"id": 1})
    [pending] = run.json("webhook", "deliveries", "1")
    assert pending["state"] == "pending"
    assert pending["attempts"] == []
    assert "due now" in run("webhook", "replay", str(pending["id"]))
    # One failed attempt, then a success, as the worker records them.
    for status, answer in ((500, "oops"), (200, "thanks")):
        with sessions.begin() as session:
            [job] = webhooks.claim_due(
                session,
                owner="test",
                lease_seconds=30,
                limit=1,
                max_attempts=3,
                box=SecretBox.from_file(tmp_path / "secret.key"),
            )
            result = webhooks.AttemptResult(utcnow(), status, 42, response=answer)
            retry = utcnow() - timedelta(seconds=1) if status == 500 else None
            webhooks.record_attempt(session, job, result, owner="test", next_attempt_at=retry)
    [delivery] = run.json("webhook", "deliveries", "1")
    assert delivery["state"] == "delivered"
    assert delivery["webhook_id"].startswith("msg_")
    assert [(a["attempt"], a["status"], a["latency_ms"], a["response"]) for a in
            delivery["attempts"]] == [(1, 500, 42, "oops"), (2, 200, 42, "thanks")]  # fmt: skip
    table = run("webhook", "deliveries", "1")
    assert "LATENCY_MS" in table
    assert "thanks" in table
    out = run("webhook", "replay", str(delivery["id"]))
    assert f"replaying delivery {delivery['id']} as delivery" in out
    again = run.json("webhook", "deliveries", "1")
    assert again[0]["replay_of"] == delivery["id"]
    assert again[0]["webhook_id"] == delivery["webhook_id"]
    assert again[0]["state"] == "pending"


def test_remove_takes_the_endpoint_and_its_deliveries(
    run: InProcessCli, sessions: sessionmaker[Session]
) -> None:
    """`webhook remove` deletes the endpoint with its deliveries; events stop going there."""
    run("webhook", "add", "acme", "https://crm.example/h")
    with sessions.begin() as session:
        tenant = directory.find_tenant(session, "acme")
        webhooks.emit(session, tenant.id, webhooks.ACTIVITY_CREATED, {"id": 1})
    out = run("webhook", "remove", "1")
    assert "and 1 deliveries" in out
    assert run.json("webhook", "list", "acme") == []
    with sessions.begin() as session:
        tenant = directory.find_tenant(session, "acme")
        assert webhooks.emit(session, tenant.id, webhooks.ACTIVITY_CREATED, {"id": 2}) is None
