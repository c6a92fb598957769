"""The `mailledger` command, run in-process against a configuration file of the test's own."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlalchemy.orm import Session

from mailledger.cli.kit import format_table
from mailledger.cli.main import main
from mailledger.store import directory
from mailledger.store.blobs import BlobStore
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.models import (
    Activity,
    ActivitySource,
    Attachment,
    Direction,
    ForwardingConfirmation,
    MessageRoute,
    MessageState,
    Participant,
    PartyKind,
    ReceivedMessage,
    RouteKind,
    TraceEntry,
)
from mailledger.testing.cli import InProcessCli

ACTIVITY_KEYS = {
    "id", "tenant", "direction", "subject", "from", "staff", "contacts", "message_id",
    "occurred_at", "auth", "sources", "thread_id", "private", "participants", "attachments",
}  # fmt: skip
MESSAGE_KEYS = {
    "id", "state", "reason", "mail_from", "rcpt_to", "message_id", "received_at",
    "queue_id", "trace_id", "peer", "size", "routes",
}  # fmt: skip


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A configuration with its own SQLite file and blob directory."""
    path = tmp_path / "mailledger.toml"
    path.write_text(
        f"""
[database]
url = "sqlite:///{tmp_path / "cli.db"}"
[storage]
blob_dir = "{tmp_path / "blobs"}"
[capture]
listen = ["127.0.0.1:2626"]
[metrics]
listen = "127.0.0.1:0"
[http]
listen = ""
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def run(config_file: Path, capsys: pytest.CaptureFixture[str]) -> InProcessCli:
    """The command, on an empty but migrated database."""
    runner = InProcessCli(capsys, config_file)
    runner("db", "upgrade")
    return runner


@pytest.fixture
def session(run: InProcessCli, tmp_path: Path) -> Iterator[Session]:
    """A session on the CLI's database, for writing what the worker would have recorded."""
    engine = make_engine(f"sqlite:///{tmp_path / 'cli.db'}")
    # A plain session: tests commit before running the CLI, which must be able to write (SQLite
    # takes its write lock at BEGIN).
    with make_sessionmaker(engine)() as session:
        yield session
    engine.dispose()


def _record(session: Session, blobs: BlobStore) -> tuple[int, int, int]:
    """One processed message with its activity, and one quarantined message."""
    tenant = directory.find_tenant(session, "acme")
    staff = directory.find_staff(session, tenant, "richard")
    ids = []
    for queue_id, state in (("Q1", MessageState.PROCESSED), ("Q2", MessageState.QUARANTINED)):
        raw = f"Subject: {queue_id}\r\n\r\nbody\r\n".encode()
        message = ReceivedMessage(
            queue_id=queue_id,
            trace_id=f"T{queue_id}",
            blob=blobs.put(raw),
            size=len(raw),
            peer="127.0.0.1:5000",
            mail_from="richard.smith@gmail.com",
            rcpt_to=["richard@acme.capture.example"],
            state=state,
            reason="forwarder not authenticated" if state == MessageState.QUARANTINED else "",
            message_id=f"<{queue_id}@client.example>",
        )
        message.routes.append(
            MessageRoute(
                tenant_id=tenant.id,
                kind=RouteKind.USER,
                staff_id=staff.id,
                rcpt="richard@acme.capture.example",
            )
        )
        message.trace.append(TraceEntry(step="authenticate", decision="spf=pass"))
        session.add(message)
        session.flush()
        ids.append(message.id)
    processed = session.get(ReceivedMessage, ids[0])
    assert processed is not None
    activity = Activity(
        tenant_id=tenant.id,
        dedupe_key="mid:<Q1@client.example>",
        direction=Direction.INBOUND,
        staff_id=staff.id,
        subject="Quote",
        from_address="carol@client.example",
        message_id="<Q1@client.example>",
        occurred_at=datetime(2024, 3, 4, 5, 6, tzinfo=UTC),
        auth={"spf": "pass", "dkim": "pass", "dmarc": "pass", "arc": "none", "trust": "ok"},
        participants=[
            Participant(role="from", address="carol@client.example", kind=PartyKind.CONTACT),
            Participant(role="to", address="richard@acme.example", kind=PartyKind.STAFF),
        ],
        attachments=[
            Attachment(filename="q.pdf", content_type="application/pdf", size=4, blob="b" * 64)
        ],
    )
    session.add(activity)
    session.flush()
    activity.sources.append(
        ActivitySource(
            message_id=processed.id,
            route_id=processed.routes[0].id,
            kind=RouteKind.USER,
            staff_id=staff.id,
        )
    )
    session.flush()
    return activity.id, ids[0], ids[1]


# --- configuration ----------------------------------------------------------------------------


def test_check_config_prints_toml(run: InProcessCli) -> None:
    """check-config prints the effective settings as TOML that reads back."""
    data = tomllib.loads(run("check-config"))
    assert data["capture"]["listen"] == ["127.0.0.1:2626"]
    assert data["capture"]["max_recipients"] == 100


def test_check_config_masks_database_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The database password never reaches the terminal."""
    path = tmp_path / "pg.toml"
    path.write_text(
        '[database]\nurl = "postgresql+psycopg://ml:hunter2@127.0.0.1:9/ml"\n', encoding="utf-8"
    )
    runner = InProcessCli(capsys, path)
    # Nothing listens on 127.0.0.1:9: the pre-flight reports it (exit 2), the password masked
    # there too.
    out = runner("check-config", expect=2)
    assert "hunter2" not in out + runner.err
    assert "ml:********@127.0.0.1:9" in out
    assert "[database] url: cannot connect to postgresql+psycopg://ml:***@127.0.0.1:9" in runner.err
    assert "hunter2" not in runner("check-config", "--json", expect=2) + runner.err


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[capture]\nmax_recipients = "many"\n', "capture.max_recipients"),
        ("[capture]\nmaximum_recipients = 3\n", "capture.maximum_recipients: unknown key"),
        ("[capture\n", "not valid TOML"),
    ],
)
def test_bad_config_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str
) -> None:
    """A bad file stops every command with exit 2 and a message naming the key."""
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    for argv in (["check-config"], ["tenant", "list"]):
        assert main(["--config", str(path), *argv]) == 2
        err = capsys.readouterr().err
        assert key in err
        assert str(path) in err


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A --config that does not exist is a configuration error, not a traceback."""
    assert main(["--config", str(tmp_path / "nope.toml"), "check-config"]) == 2
    assert "no such configuration file" in capsys.readouterr().err


def test_config_from_environment(
    run: InProcessCli,
    config_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MAILLEDGER_CONFIG names the file when --config is absent; overrides apply on top."""
    monkeypatch.setenv("MAILLEDGER_CONFIG", str(config_file))
    monkeypatch.setenv("MAILLEDGER_CAPTURE__MAX_RECIPIENTS", "5")
    assert main(["check-config", "--json"]) == 0
    (data,) = json.loads(capsys.readouterr().out)  # a one-element array, like every --json
    assert data["capture"]["listen"] == ["127.0.0.1:2626"]
    assert data["capture"]["max_recipients"] == 5


# --- schema and demo --------------------------------------------------------------------------


def test_db_upgrade_creates_schema_and_repeats(run: InProcessCli, tmp_path: Path) -> None:
    """db upgrade creates every table and is harmless to run again."""
    run("db", "upgrade")
    engine = make_engine(f"sqlite:///{tmp_path / 'cli.db'}")
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"tenants", "received_messages", "activities", "alembic_version"} <= tables


def test_commands_before_upgrade_say_what_to_do(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a schema, a command fails with exit 1 and points at `db upgrade`."""
    assert main(["--config", str(config_file), "tenant", "list"]) == 1
    assert "mailledger db upgrade" in capsys.readouterr().err


def test_demo_init(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """demo init makes the schema and the demo tenant and prints a snippet that compiles."""
    runner = InProcessCli(capsys, config_file)
    out = runner("demo", "init")
    assert "richard@acme.capture.example" in out
    assert "log@acme.capture.example" in out
    snippet = out.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    compile(snippet, "<demo snippet>", "exec")
    assert 'smtplib.SMTP("127.0.0.1", 2626)' in snippet
    assert 'from_addr="carol@client.example"' in snippet
    assert 'to_addrs=["richard@acme.capture.example"]' in snippet
    assert "swaks --server 127.0.0.1:2626" in out
    runner("demo", "init")  # a second run finds the tenant and changes nothing
    staff = runner.json("staff", "list", "acme")
    assert [s["username"] for s in staff] == ["richard"]


# --- the directory ----------------------------------------------------------------------------


def test_tenant_staff_contact_company(run: InProcessCli) -> None:
    """The directory commands add and list, as tables and as JSON arrays."""
    out = run(
        "tenant", "add", "Acme", "--capture-domain", "acme.capture.example",
        "--customer-domain", "acme.example", "--customer-domain", "acme.org",
    )  # fmt: skip
    assert "acme.capture.example" in out
    (tenant,) = run.json("tenant", "list")
    assert tenant["name"] == "Acme"
    assert tenant["customer_domains"] == ["acme.example", "acme.org"]
    table = run("tenant", "list").splitlines()
    assert table[0].split() == ["ID", "NAME", "CAPTURE_DOMAIN", "CUSTOMER_DOMAINS", "STAFF"]
    assert table[1].index("acme.capture.example") == table[0].index("CAPTURE_DOMAIN")

    out = run(
        "staff", "add", "acme", "Richard", "--address", "richard@acme.example",
        "--address", "Richard.Smith@gmail.com", "--name", "Richard Smith",
        "--primary", "richard@acme.example",
    )  # fmt: skip
    assert out.strip() == "richard@acme.capture.example"
    (staff,) = run.json("staff", "list", "acme")
    assert staff["capture_address"] == "richard@acme.capture.example"
    assert staff["primary_address"] == "richard@acme.example"
    assert "richard@acme.example" in staff["addresses"]

    run("company", "add", "acme", "Client Co", "--domain", "client.example")
    run(
        "contact",
        "add",
        "acme",
        "Carol@Client.example",
        "--name",
        "Carol",
        "--company",
        "Client Co",
    )
    (contact,) = run.json("contact", "list", "acme")
    assert contact == {
        "id": contact["id"],
        "name": "Carol",
        "company": "Client Co",
        "addresses": ["carol@client.example"],
    }
    (company,) = run.json("company", "list", "acme")
    assert company["domains"] == ["client.example"]
    assert company["contacts"] == 1

    out = run("never-log", "add", "acme", "@hr.example", "--staff", "richard")
    assert "hr.example" in out and "richard" in out


def test_directory_refusals_exit_1(run: InProcessCli) -> None:
    """Refused changes print why and exit 1, leaving nothing half-made."""
    run("tenant", "add", "acme", "--capture-domain", "acme.capture.example")
    run("tenant", "add", "globex", "--capture-domain", "globex.capture.example")
    run("staff", "add", "acme", "richard", "--address", "richard@acme.example")
    run("staff", "add", "globex", "rich", "--address", "richard@acme.example", expect=1)
    assert "already belongs to a staff member" in run.err
    assert run.json("staff", "list", "globex") == []
    run("staff", "add", "acme", "postmaster", "--address", "pm@acme.example", expect=1)
    assert "reserved" in run.err
    run("staff", "list", "initech", expect=1)
    assert "no tenant named 'initech'" in run.err
    run("contact", "add", "acme", "not an address", expect=1)
    assert run.err.startswith("mailledger: ")
    run("never-log", "add", "acme", "x.example", "--staff", "nobody", expect=1)
    assert "no staff member 'nobody'" in run.err


def test_contact_import(run: InProcessCli, tmp_path: Path) -> None:
    """contact import takes the good rows, lists the bad ones by line, and exits non-zero."""
    run("tenant", "add", "acme", "--capture-domain", "acme.capture.example")
    csv_file = tmp_path / "contacts.csv"
    csv_file.write_text(
        "email,name,company\n"
        "dana@client.example;dana.b@client.example,Dana,Client Co\n"
        "nope,Broken,\n"
        "erin@new.example,Erin,\n",
        encoding="utf-8",
    )
    out = run("contact", "import", "acme", str(csv_file), expect=1)
    assert "imported 2 contact(s), 1 row(s) refused" in out
    assert f"{csv_file}:3:" in run.err
    names = {c["name"]: c for c in run.json("contact", "list", "acme")}
    assert set(names) == {"Dana", "Erin"}
    assert names["Dana"]["addresses"] == ["dana@client.example", "dana.b@client.example"]
    good = tmp_path / "good.csv"
    good.write_text("email,name\nfrank@x.example,Frank\n", encoding="utf-8")
    assert "imported 1 contact(s), 0 row(s) refused" in run("contact", "import", "acme", str(good))
    run("contact", "import", "acme", str(tmp_path / "missing.csv"), expect=1)
    assert "missing.csv" in run.err


# --- activities, messages, quarantine ---------------------------------------------------------


def test_activities(run: InProcessCli, session: Session, tmp_path: Path) -> None:
    """activities list/show give the documented keys; show adds the sources' trace."""
    run("demo", "init")
    activity_id, processed_id, _ = _record(session, BlobStore(tmp_path / "blobs"))
    session.commit()
    (item,) = run.json("activities", "list")
    assert set(item) >= ACTIVITY_KEYS
    assert item["tenant"] == "acme"
    assert item["direction"] == "inbound"
    assert item["from"] == "carol@client.example"
    assert item["staff"] == "richard"
    assert item["contacts"] == ["carol@client.example"]
    assert item["occurred_at"] == "2024-03-04T05:06:00+00:00"
    assert item["auth"]["dmarc"] == "pass"
    assert item["sources"][0]["message"] == processed_id
    assert item["attachments"][0]["filename"] == "q.pdf"
    assert run.json("activities", "list", "--tenant", "acme.capture.example") == [item]
    run("tenant", "add", "globex", "--capture-domain", "globex.capture.example")
    assert run.json("activities", "list", "--tenant", "globex") == []
    assert "Quote" in run("activities", "list")

    (shown,) = run.json("activities", "show", str(activity_id))
    assert set(shown) >= ACTIVITY_KEYS
    assert shown["trace"][0]["step"] == "authenticate"
    out = run("activities", "show", str(activity_id))
    assert "participants:" in out and "richard@acme.example" in out
    run("activities", "show", "999", expect=1)
    assert "no activity 999" in run.err


def test_messages(run: InProcessCli, session: Session, tmp_path: Path) -> None:
    """messages list/show/trace give state, reason and each step's decision."""
    run("demo", "init")
    _, processed_id, quarantined_id = _record(session, BlobStore(tmp_path / "blobs"))
    session.commit()
    items = run.json("messages", "list")
    assert [m["id"] for m in items] == [quarantined_id, processed_id]
    assert all(set(m) >= MESSAGE_KEYS for m in items)
    assert items[0]["reason"] == "forwarder not authenticated"
    assert items[0]["routes"][0]["staff"] == "richard"
    assert [m["id"] for m in run.json("messages", "list", "--state", "processed")] == [processed_id]
    assert len(run.json("messages", "list", "--limit", "1")) == 1
    (shown,) = run.json("messages", "show", str(processed_id))
    assert set(shown) >= MESSAGE_KEYS
    assert shown["trace"][0]["decision"] == "spf=pass"
    (entry,) = run.json("messages", "trace", str(processed_id))
    assert set(entry) == {"time", "step", "decision", "detail"}
    table = run("messages", "trace", str(processed_id))
    assert table.splitlines()[0].split() == ["TIME", "STEP", "DECISION", "DETAIL"]
    assert "authenticate" in table
    run("messages", "trace", "424242", expect=1)
    assert "no received message 424242" in run.err


def test_messages_list_rejects_unknown_state(run: InProcessCli) -> None:
    """--state takes only the states a message can be in."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(run.config), "messages", "list", "--state", "lost"])
    assert exit_info.value.code == 2


def test_quarantine(run: InProcessCli, session: Session, tmp_path: Path) -> None:
    """quarantine list, release (plain and forced) and delete."""
    run("demo", "init")
    blobs = BlobStore(tmp_path / "blobs")
    _, processed_id, quarantined_id = _record(session, blobs)
    session.commit()
    (held,) = run.json("quarantine", "list")
    assert held["id"] == quarantined_id
    assert held["state"] == "quarantined"

    run("quarantine", "release", str(processed_id), expect=1)
    assert "not quarantined" in run.err
    run("quarantine", "release", str(quarantined_id))
    assert run.json("quarantine", "list") == []
    (shown,) = run.json("messages", "show", str(quarantined_id))
    assert shown["state"] == "received"
    assert shown["force_record"] is False
    assert shown["trace"][-1]["decision"] == "released"

    with session.begin():
        message = session.get(ReceivedMessage, quarantined_id)
        assert message is not None
        session.refresh(message)
        message.state = MessageState.QUARANTINED
    run("quarantine", "release", "--force", str(quarantined_id))
    (shown,) = run.json("messages", "show", str(quarantined_id))
    assert shown["force_record"] is True
    assert shown["trace"][-1]["decision"] == "released-forced"

    with session.begin():
        message = session.get(ReceivedMessage, quarantined_id)
        assert message is not None
        session.refresh(message)
        message.state = MessageState.QUARANTINED
        digest = message.blob
    assert blobs.path(digest).exists()
    out = run("quarantine", "delete", str(quarantined_id))
    assert "deleted" in out
    assert not blobs.path(digest).exists()
    assert [m["id"] for m in run.json("messages", "list")] == [processed_id]
    run("quarantine", "delete", str(quarantined_id), expect=1)


def test_format_table_aligns_columns() -> None:
    """Tables line every column up under its header, whatever the cell widths."""
    text = format_table(
        [{"a": 1, "b": "long value"}, {"a": 22222, "b": None}, {"a": [1, 2], "b": True}],
        ["a", "b"],
    )
    lines = text.splitlines()
    assert lines == [
        "A      B",
        "1      long value",
        "22222  -",
        "1, 2   yes",
    ]


def test_python_dash_m(run: InProcessCli, config_file: Path) -> None:
    """`python -m mailledger` is the same command as the console script."""
    result = subprocess.run(
        [sys.executable, "-m", "mailledger", "--config", str(config_file), "check-config"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "[capture]" in result.stdout


def test_tenant_gateway_set_list_and_clear(run: InProcessCli) -> None:
    """An operator trusts a filtering MTA by network and authserv-id, and can remove it."""
    run("tenant", "add", "acme", "--capture-domain", "acme.capture.example")
    run("tenant", "gateway", "acme", "--network", "192.0.2.0/24", "--authserv-id", "GW.acme.com")
    assert "trusting gw.acme.com from 192.0.2.0/24" in run.out
    [tenant] = run.json("tenant", "list")
    assert tenant["gateway_networks"] == ["192.0.2.0/24"]
    assert tenant["gateway_authserv_id"] == "gw.acme.com"
    run("tenant", "gateway", "acme", "--network", "not-a-net", "--authserv-id", "x", expect=1)
    assert "is not a network" in run.err
    run("tenant", "gateway", "acme", "--network", "192.0.2.0/24", expect=1)
    assert "needs --authserv-id" in run.err
    run("tenant", "gateway", "acme", "--clear")
    assert run.json("tenant", "list")[0]["gateway_networks"] == []


def test_staff_forwarding_shows_the_code(
    run: InProcessCli, session: Session, tmp_path: Path
) -> None:
    """The Gmail confirmation code kept from a capture address is shown to the operator."""
    run("tenant", "add", "acme", "--capture-domain", "acme.capture.example")
    run("staff", "add", "acme", "richard", "--address", "richard.smith@gmail.com")
    run("staff", "forwarding", "acme", "richard")
    assert "no forwarding confirmations yet" in run.out
    tenant = directory.find_tenant(session, "acme")
    staff = directory.find_staff(session, tenant, "richard")
    raw = b"From: forwarding-noreply@google.com\r\n\r\ncode\r\n"
    message = ReceivedMessage(
        queue_id="QF",
        trace_id="TF",
        blob=BlobStore(tmp_path / "blobs").put(raw),
        size=len(raw),
        peer="127.0.0.10:25",
        mail_from="forwarding-noreply@google.com",
        rcpt_to=["richard@acme.capture.example"],
    )
    session.add(message)
    session.flush()
    session.add(
        ForwardingConfirmation(
            tenant_id=tenant.id,
            staff_id=staff.id,
            message_id=message.id,
            provider="gmail",
            code="612345789",
            link="https://mail-settings.google.com/mail/vf-abc",
            requested_by="richard.smith@gmail.com",
        )
    )
    session.commit()
    [row] = run.json("staff", "forwarding", "acme", "richard")
    assert row["code"] == "612345789"
    assert row["handback"] == "pending"
    assert row["primary_address"] == "richard.smith@gmail.com"


# --- finding a message by the IDs people have ----------------------------------------------------


def test_messages_found_by_queue_id_and_message_id(
    run: InProcessCli, session: Session, tmp_path: Path
) -> None:
    """show, trace, release and delete take a row number, a queue ID or a Message-ID."""
    run("demo", "init")
    blobs = BlobStore(tmp_path / "blobs")
    _, processed_id, quarantined_id = _record(session, blobs)
    session.commit()
    for ref in (str(processed_id), "Q1", "q1", "<Q1@client.example>", "Q1@client.example"):
        (shown,) = run.json("messages", "show", ref)
        assert shown["id"] == processed_id, ref
    (entry,) = run.json("messages", "trace", "Q1@client.example")
    assert entry["decision"] == "spf=pass"
    run("messages", "show", "<nobody@client.example>", expect=1)
    assert "no received message <nobody@client.example>" in run.err

    # The same email received twice: its Message-ID names both, and the refusal lists them.
    again = session.get(ReceivedMessage, quarantined_id)
    assert again is not None
    again.message_id = "<Q1@client.example>"
    session.commit()
    run("messages", "show", "Q1@client.example", expect=1)
    assert "names 2 received messages" in run.err
    assert f"{processed_id} (queue ID Q1" in run.err and f"{quarantined_id} (queue ID Q2" in run.err

    assert "(queue ID Q2) released" in run("quarantine", "release", "Q2")
    session.expire_all()
    released = session.get(ReceivedMessage, quarantined_id)
    assert released is not None and released.state == MessageState.RECEIVED
    released.state = MessageState.QUARANTINED
    session.commit()
    assert "(queue ID Q2) deleted" in run("quarantine", "delete", "q2")
    run("quarantine", "delete", "Q2", expect=1)


# --- lists say when they stop ------------------------------------------------------------------


def _many_messages(session: Session, count: int) -> None:
    tenant = directory.find_tenant(session, "acme")
    for number in range(count):
        message = ReceivedMessage(
            queue_id=f"M{number:04d}",
            trace_id="T",
            blob="c" * 64,
            size=1,
            peer="127.0.0.1:5000",
            mail_from="carol@client.example",
            rcpt_to=["richard@acme.capture.example"],
            state=MessageState.QUARANTINED if number % 2 else MessageState.PROCESSED,
            received_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=number // 3),
        )
        message.routes.append(
            MessageRoute(tenant_id=tenant.id, kind=RouteKind.USER, rcpt=message.rcpt_to[0])
        )
        session.add(message)
    session.commit()


def test_lists_say_when_they_stop(run: InProcessCli, session: Session) -> None:
    """A table stops at 50 and says of how many; --all and --json give every row, in order."""
    run("demo", "init")
    _many_messages(session, 455)
    table = run("messages", "list")
    assert len(table.splitlines()) == 51  # header and 50 rows
    assert run.err == "showing 50 of 455 (--limit N, --all)\n"
    assert len(run("messages", "list", "--all").splitlines()) == 456
    assert run.err == ""
    run("messages", "list", "--limit", "10")
    assert run.err == "showing 10 of 455 (--limit N, --all)\n"
    run("quarantine", "list")
    assert run.err == "showing 50 of 227 (--limit N, --all)\n"

    every = run.json("messages", "list")  # read in pages of 200 (queries.PAGE_ROWS)
    assert len(every) == 455
    assert len({m["id"] for m in every}) == 455
    keys = [(m["received_at"], m["id"]) for m in every]
    assert keys == sorted(keys, reverse=True)
    assert len(run.json("messages", "list", "--limit", "201")) == 201
    assert len(run.json("quarantine", "list")) == 227
    lines = run("messages", "list", "--jsonl", "--state", "processed").splitlines()
    assert len(lines) == 228
    assert all(json.loads(line)["state"] == "processed" for line in lines)
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(run.config), "messages", "list", "--all", "--limit", "3"])
    assert exit_info.value.code == 2
    assert run.json("activities", "list") == []
    assert run("activities", "list", "--jsonl") == ""


# --- staff password names the real submission ports --------------------------------------------


@pytest.mark.parametrize(
    ("submission", "expected"),
    [
        ('listen = ["127.0.0.1:2587"]', ["2587 (STARTTLS; listening on 127.0.0.1:2587)"]),
        (
            'listen = []\nlisten_tls = ["0.0.0.0:465"]',
            ["465 (SSL/TLS; listening on 0.0.0.0:465)"],
        ),
        ("listen = []", ["none: submission is off ([submission] listen and listen_tls are empty)"]),
    ],
)
def test_staff_password_prints_the_real_ports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], submission: str, expected: list[str]
) -> None:
    """The port printed is the one [submission] listens on; "off" when it listens nowhere."""
    path = tmp_path / "submission.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "p.db"}"\n[submission]\n{submission}\n',
        encoding="utf-8",
    )
    runner = InProcessCli(capsys, path)
    runner("demo", "init")
    out = runner("staff", "password", "acme", "richard")
    ports = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("port")]
    assert ports == expected
    assert ("submission is off" in runner.err) == expected[0].startswith("none")


# --- contact import: --dry-run and progress ----------------------------------------------------


def test_contact_import_dry_run_writes_nothing(run: InProcessCli, tmp_path: Path) -> None:
    """--dry-run checks and counts every row (duplicates across batches too), writes nothing."""
    run("tenant", "add", "acme", "--capture-domain", "acme.capture.example")
    rows = [f"person{n}@client.example,Person {n}," for n in range(1200)]
    rows.append("person3@client.example,Again,")  # a duplicate, two batches later
    rows.append("not an address,Bad,")
    csv_file = tmp_path / "big.csv"
    csv_file.write_text("email,name,company\n" + "\n".join(rows) + "\n", encoding="utf-8")
    out = run("contact", "import", "acme", str(csv_file), "--dry-run", expect=1)
    assert "dry run: 1200 contact(s) would be imported, 2 row(s) refused" in out
    assert f"{csv_file}:1202: person3@client.example is already a contact" in run.err
    assert run.err.count("\n") == 2  # not a terminal: no progress lines
    assert run.json("contact", "list", "acme") == []
    out = run("contact", "import", "acme", str(csv_file), expect=1)
    assert "imported 1200 contact(s), 2 row(s) refused" in out
    assert len(run.json("contact", "list", "acme")) == 1200


def test_contact_import_progress_on_a_terminal(
    run: InProcessCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal, stderr shows rows read and the share of the file after each batch."""
    run("tenant", "add", "acme", "--capture-domain", "acme.capture.example")
    csv_file = tmp_path / "some.csv"
    lines = [f"p{n}@client.example" for n in range(700)]
    csv_file.write_text("email\n" + "\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    run("contact", "import", "acme", str(csv_file))
    assert "\r500 row(s) read (" in run.err
    assert "\r700 row(s) read (100%): 700 imported, 0 refused\n" in run.err
