"""Show, set, disable and remove: every directory record's lifecycle, through the real CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.main import main
from mailledger.routing.routes import RecipientRouter, Refusal
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.inbox import Route
from mailledger.store.models import RouteKind
from mailledger.testing.cli import InProcessCli

CAPTURE = "acme.capture.example"


@pytest.fixture
def cli(tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]) -> InProcessCli:
    """The demo tenant (acme, richard, carol, Client Co) on a migrated database."""
    config = tmp_path / "mailledger.toml"
    config.write_text(
        f'[database]\nurl = "{database_url}"\n[storage]\nblob_dir = "{tmp_path / "blobs"}"\n'
        '[capture]\nlisten = ["127.0.0.1:2626"]\n',
        encoding="utf-8",
    )
    run = InProcessCli(capsys, config)
    run("demo", "init")
    return run


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.mark.postgres
def test_tenant_show_set_disable_enable(cli: InProcessCli, sessions: sessionmaker[Session]) -> None:
    """Policies are switched on and off; a disabled tenant refuses its capture addresses."""
    (shown,) = cli.json("tenant", "show", "acme")
    assert shown["state"] == "active"
    assert (shown["create_unknown_contacts"], shown["record_internal"]) == (False, False)
    assert shown["staff"] == 1 and shown["contacts"] == 1
    out = cli(
        "tenant",
        "set",
        "acme",
        "--create-unknown-contacts",
        "on",
        "--record-internal",
        "off",
        "--strip-plus-tags",
        "off",
    )
    assert "create-unknown-contacts: on (changed)" in out
    assert "record-internal: off\n" in out
    (shown,) = cli.json("tenant", "show", "acme")
    assert (shown["create_unknown_contacts"], shown["strip_plus_tags"]) == (True, False)
    cli("tenant", "set", "acme", expect=2)
    assert "--create-unknown-contacts on|off" in cli.err
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(cli.config), "tenant", "set", "acme", "--record-internal", "maybe"])
    assert exit_info.value.code == 2

    router = RecipientRouter(sessions)
    assert isinstance(router.route(f"richard@{CAPTURE}"), Route)
    assert "mail to acme.capture.example is refused" in cli("tenant", "disable", "acme")
    for address in (f"richard@{CAPTURE}", f"log@{CAPTURE}"):
        refused = router.route(address)
        assert isinstance(refused, Refusal)
        assert (refused.reply.code, refused.reply.status) == (550, "5.1.1")
    postmaster = router.route(f"postmaster@{CAPTURE}")  # RFC 5321 §4.5.1: still the operator's
    assert isinstance(postmaster, Route) and postmaster.kind is RouteKind.OPERATOR
    assert "already disabled" in cli("tenant", "disable", "acme")
    assert cli.json("tenant", "show", "acme")[0]["state"] == "disabled"
    cli("tenant", "enable", "acme")
    assert isinstance(router.route(f"richard@{CAPTURE}"), Route)
    cli("tenant", "show", "nobody", expect=1)
    assert "no tenant named 'nobody'" in cli.err


@pytest.mark.postgres
def test_staff_set_disable_enable(cli: InProcessCli, sessions: sessionmaker[Session]) -> None:
    """A disabled member's capture address is refused (550 5.1.1) until enabled again."""
    (record,) = cli.json(
        "staff", "set", "acme", "richard", "--name", "Rick", "--add-address", "rick@acme.example"
    )
    assert record["name"] == "Rick"
    assert "rick@acme.example" in record["addresses"]
    cli("staff", "set", "acme", "richard", "--remove-address", "rick@acme.example")
    cli("staff", "set", "acme", "richard", "--remove-address", "nobody@acme.example", expect=1)
    assert "is not one of richard's addresses" in cli.err
    cli("staff", "set", "acme", "richard", expect=2)

    router = RecipientRouter(sessions)
    assert "is refused (550 5.1.1)" in cli("staff", "disable", "acme", "richard")
    refused = router.route(f"richard+crm@{CAPTURE}")
    assert isinstance(refused, Refusal) and refused.reply.status == "5.1.1"
    assert isinstance(router.route(f"log@{CAPTURE}"), Route)
    (shown,) = cli.json("staff", "show", "acme", "richard")
    assert shown["state"] == "disabled" and shown["disabled_at"]
    cli("staff", "password", "acme", "richard", expect=1)
    assert "is disabled" in cli.err
    (state,) = cli.json("staff", "enable", "acme", "richard")
    assert state["state"] == "active"
    assert isinstance(router.route(f"richard@{CAPTURE}"), Route)


@pytest.mark.postgres
def test_contact_and_company_lifecycle(cli: InProcessCli) -> None:
    """Contacts are fixed and shown by id or address; companies renamed, re-domained, removed."""
    (carol,) = cli.json("contact", "show", "acme", "carol@client.example")
    assert carol["company"] == "Client Co"
    assert cli.json("contact", "show", "acme", str(carol["id"]))[0]["name"] == "Carol Client"
    (fixed,) = cli.json(
        "contact",
        "set",
        "acme",
        "carol@client.example",
        "--name",
        "Carol C.",
        "--company",
        "",
        "--add-address",
        "carol@home.example",
    )
    assert fixed["name"] == "Carol C." and fixed["company"] is None
    assert fixed["addresses"] == ["carol@client.example", "carol@home.example"]
    cli("contact", "set", "acme", "carol@home.example", "--remove-address", "carol@client.example")
    cli("contact", "set", "acme", str(carol["id"]), "--remove-address", "carol@home.example",
        expect=1)  # fmt: skip
    assert "must keep at least one address" in cli.err
    cli("contact", "show", "acme", "nobody@client.example", expect=1)
    assert "has no contact" in cli.err

    cli("company", "add", "acme", "Webmail", "--domain", "gmail.com", expect=1)
    assert "gmail.com is a free-mail domain" in cli.err
    cli("company", "set", "acme", "Client Co", "--add-domain", "yahoo.com", expect=1)
    assert "free-mail" in cli.err
    (company,) = cli.json(
        "company", "set", "acme", "Client Co", "--name", "Client Inc", "--add-domain",
        "client.example.org", "--remove-domain", "client.example",
    )  # fmt: skip
    assert company["name"] == "Client Inc" and company["domains"] == ["client.example.org"]
    cli("contact", "set", "acme", str(carol["id"]), "--company", "Client Inc")
    (shown,) = cli.json("company", "show", "acme", "Client Inc")
    assert [c["id"] for c in shown["contacts"]] == [carol["id"]]
    cli("company", "add", "acme", "Spare Co")
    assert cli.json("company", "remove", "acme", "Spare Co") == [
        {"name": "Spare Co", "removed": True, "contacts_kept": 0}
    ]
    assert "1 contact(s) kept without a company" in cli("company", "remove", "acme", "Client Inc")
    assert cli.json("company", "list", "acme") == []
    assert cli.json("contact", "show", "acme", str(carol["id"]))[0]["company"] is None
    cli("company", "remove", "acme", "Client Inc", expect=1)
    assert "has no company 'Client Inc'" in cli.err


@pytest.mark.postgres
def test_never_log_list_and_remove(cli: InProcessCli) -> None:
    """Tenant-wide and per-staff entries are listed apart and removed one by one."""
    cli("never-log", "add", "acme", "hr.example")
    cli("never-log", "add", "acme", "doctor@clinic.example", "--staff", "richard")
    assert [e["pattern"] for e in cli.json("never-log", "list", "acme")] == ["hr.example"]
    (entry,) = cli.json("never-log", "list", "acme", "--staff", "richard")
    assert entry == {
        "id": entry["id"],
        "pattern": "doctor@clinic.example",
        "kind": "address",
        "staff": "richard",
    }
    assert len(cli.json("never-log", "list", "acme", "--every")) == 2
    cli("never-log", "remove", "acme", "doctor@clinic.example", expect=1)
    assert "not on tenant acme's never-log list" in cli.err
    cli("never-log", "remove", "acme", "doctor@clinic.example", "--staff", "richard")
    assert cli.json("never-log", "remove", "acme", "@HR.example") == [
        {"pattern": "hr.example", "staff": None, "removed": True}
    ]
    assert cli.json("never-log", "list", "acme", "--every") == []
    assert "the never-log list is empty" in cli("never-log", "list", "acme")
