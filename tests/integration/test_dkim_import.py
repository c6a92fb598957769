"""The upgrade from key files: `db upgrade` and `dkim import` seal old DKIM key files into the
database, leave the files where they were, and say which can be deleted."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dkim
import pytest
from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.domains import keys
from mailledger.domains.signing import SigningOutcome, sign_outgoing
from mailledger.store import directory
from mailledger.store.dkimkeys import store_imported
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.migrate import downgrade, upgrade
from mailledger.store.models import DkimKey
from mailledger.store.secretbox import SecretBox, ensure_key_file
from mailledger.testing.cli import exit_and_output
from mailledger.testing.dnsserver import DNSServer

MESSAGE = (
    b"From: Richard <richard@acme.test>\r\nTo: carol@client.example\r\n"
    b"Subject: Quote\r\nMessage-ID: <1@acme.test>\r\n\r\nHello Carol\r\n"
)

# dkim_keys as revision 0017 left it: the private key is a file the row points at.
_OLD_KEY = text(
    "INSERT INTO dkim_keys (tenant_id, domain, selector, algorithm, private_key_path,"
    " public_record, verified_at, active, retired_at, created_at) VALUES (:tenant_id,"
    " 'acme.test', :selector, :algorithm, :path, :record, NULL, :active, NULL, :created_at)"
)


@pytest.fixture
def settings_box(settings: Settings) -> SecretBox:
    return SecretBox.from_file(settings.secrets.key_file)


def _write_key_file(path: Path, data: bytes) -> Path:
    """A key file as `dkim keygen` used to write it: mode 0600 in a 0700 directory."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def _config(tmp_path: Path, database_url: str, key_dir: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f'[database]\nurl = "{database_url}"\n'
        f'[secrets]\nkey_file = "{tmp_path / "secret.key"}"\n'
        f'[relay]\ndkim_key_dir = "{key_dir}"\n',
        encoding="utf-8",
    )
    return path


def _old_database(database_url: str, old_dir: Path) -> tuple[Engine, dict[str, bytes]]:
    """A database at 0017 with two keys made the old way: s1's file here, s2's elsewhere."""
    upgrade(database_url, revision="0017")
    engine = make_engine(database_url)
    files: dict[str, bytes] = {}
    with make_sessionmaker(engine).begin() as session:
        tenant = directory.add_tenant(session, "acme", "acme.capture.example", ["acme.test"])
        for selector, algorithm, active in (("s1", "rsa", True), ("s2", "ed25519", False)):
            material = keys.generate_key_material(algorithm)  # type: ignore[arg-type]
            path = old_dir / f"{selector}._domainkey.acme.test.{algorithm}.key"
            files[selector] = material.private_bytes
            session.execute(
                _OLD_KEY,
                {
                    "tenant_id": tenant.id,
                    "selector": selector,
                    "algorithm": algorithm,
                    "path": str(path),
                    "record": keys.key_record(algorithm, material.public_b64),
                    "active": active,
                    "created_at": datetime(2026, 1, 5, tzinfo=UTC),
                },
            )
    _write_key_file(old_dir / "s1._domainkey.acme.test.rsa.key", files["s1"])
    return engine, files


@pytest.mark.postgres
def test_db_upgrade_moves_key_files_into_the_database_and_leaves_them(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`db upgrade` seals the key file it finds and names the one it cannot read (another
    node's) with the fix; copying that file here and running `dkim import` finishes it."""
    old_dir = tmp_path / "var" / "dkim"
    engine, files = _old_database(database_url, old_dir)
    config = _config(tmp_path, database_url, tmp_path / "this-node-dkim")
    try:
        code, out = exit_and_output(config, capsys, "db", "upgrade")
        assert code == 0, out
        s1_file = old_dir / "s1._domainkey.acme.test.rsa.key"
        assert (
            f"s1._domainkey.acme.test: moved into the database; {s1_file} is no longer used "
            "and can be deleted"
        ) in out
        assert "s2._domainkey.acme.test: cannot read the private key" in out
        assert "run `mailledger dkim import`" in out
        assert "`mailledger dkim rotate acme acme.test`" in out
        assert s1_file.read_bytes() == files["s1"]  # left in place
        assert b"PRIVATE KEY" not in out.encode() and files["s2"].decode().strip() not in out

        box = SecretBox.from_file(tmp_path / "secret.key")
        sessions = make_sessionmaker(engine)
        with sessions() as session:
            found = {k.selector: k for k in session.scalars(select(DkimKey))}
            assert keys.load_private_key(found["s1"], box) == files["s1"]
            assert found["s1"].private_key is not None
            assert found["s1"].private_key.startswith("fernet:")
            assert found["s1"].activated_at == found["s1"].created_at  # 0018's backfill
            assert found["s2"].private_key is None and found["s2"].activated_at is None

        # The node that held s2 copies its file to this node's key directory.
        copied = _write_key_file(
            tmp_path / "this-node-dkim" / "s2._domainkey.acme.test.ed25519.key", files["s2"]
        )
        code, out = exit_and_output(config, capsys, "dkim", "import")
        assert code == 0, out
        assert f"s2._domainkey.acme.test: moved into the database; {copied}" in out
        assert "every DKIM private key is in the database" in out
        with sessions() as session:
            s2 = session.scalars(select(DkimKey).where(DkimKey.selector == "s2")).one()
            assert keys.load_private_key(s2, box) == files["s2"]
        code, out = exit_and_output(config, capsys, "db", "upgrade")  # again: nothing left to move
        assert code == 0 and "moved" not in out
    finally:
        engine.dispose()


def test_dkim_import_refuses_a_file_that_is_not_the_published_key(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file whose key differs from the record customers published is not imported: signing
    with it would fail everywhere. The key stays a file, and the command exits 1."""
    old_dir = tmp_path / "var" / "dkim"
    engine, files = _old_database(database_url, old_dir)
    other = keys.generate_key_material("rsa").private_bytes
    s1_file = _write_key_file(old_dir / "s1._domainkey.acme.test.rsa.key", other)
    _write_key_file(old_dir / "s2._domainkey.acme.test.ed25519.key", files["s2"])
    config = _config(tmp_path, database_url, old_dir)
    try:
        code, out = exit_and_output(config, capsys, "db", "upgrade")
        assert code == 0, out  # the schema is up to date; the key's problem is named
        expected = f"{s1_file} holds a different key from the record published for s1."
        assert expected in out
        code, out = exit_and_output(config, capsys, "dkim", "import")
        assert code == 1 and expected in out
        assert "every DKIM private key" not in out
        with make_sessionmaker(engine)() as session:
            s1 = session.scalars(select(DkimKey).where(DkimKey.selector == "s1")).one()
            assert s1.private_key is None
    finally:
        engine.dispose()


def test_a_second_import_of_the_same_key_changes_nothing(
    sessions: sessionmaker[Session], settings_box: SecretBox
) -> None:
    """Two nodes importing at once: the first write wins, the second is a no-op."""
    with sessions.begin() as session:
        tenant = directory.add_tenant(session, "acme", "acme.capture.example", ["acme.test"])
        key = keys.create_key(session, tenant, "acme.test", settings_box, selector="s1")
        first = key.private_key
        assert first is not None
        key.private_key = None
        session.flush()
        assert store_imported(session, key.id, first)
        assert not store_imported(session, key.id, settings_box.seal("another"))
        session.expire(key)
        assert key.private_key == first


def test_a_node_with_no_key_directory_signs_with_the_sealed_key(
    sessions: sessionmaker[Session],
    settings_box: SecretBox,
    dns_server: DNSServer,
    resolver: Resolver,
    tmp_path: Path,
) -> None:
    """The key made on one node opens on another that shares only the secrets key file."""
    with sessions.begin() as session:
        tenant = directory.add_tenant(session, "acme", "acme.capture.example", ["acme.test"])
        key = keys.create_key(session, tenant, "acme.test", settings_box, selector="s1")
        session.flush()
        session.expunge(key)
    copy = tmp_path / "other-node" / "secret.key"
    copy.parent.mkdir()
    copy.write_bytes((tmp_path / "secret.key").read_bytes())
    private = keys.load_private_key(key, SecretBox.from_file(copy))
    signature = dkim.sign(MESSAGE, b"s1", b"acme.test", private, include_headers=[b"from"])
    dns_server.add(keys.record_name("s1", "acme.test"), "TXT", key.public_record)
    assert dkim.verify(signature + MESSAGE, dnsfunc=resolver.dkim_dnsfunc)


@pytest.mark.postgres
def test_downgrade_refuses_while_a_key_lives_only_in_the_database(
    database_url: str, tmp_path: Path
) -> None:
    """Going back below 0018 would destroy a key made since; the downgrade says so."""
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine).begin() as session:
            tenant = directory.add_tenant(session, "acme", "acme.capture.example", ["acme.test"])
            key_file = tmp_path / "secret.key"
            ensure_key_file(key_file)
            keys.create_key(session, tenant, "acme.test", SecretBox.from_file(key_file))
        with pytest.raises(RuntimeError, match=r"exist only in the database"):
            downgrade(database_url, "0017")
    finally:
        engine.dispose()


async def test_relay_signing_opens_the_sealed_key_or_holds_with_the_reason(
    *,
    sessions: sessionmaker[Session],
    settings: Settings,
    settings_box: SecretBox,
    dns_server: DNSServer,
    resolver: Resolver,
    tmp_path: Path,
) -> None:
    """sign_outgoing signs from the database with [secrets] key_file; a node without that
    file, or a key not imported yet, holds the mail and says why (never a traceback)."""
    with sessions.begin() as session:
        tenant = directory.add_tenant(session, "acme", "acme.capture.example", ["acme.test"])
        key = keys.create_key(session, tenant, "acme.test", settings_box, selector="s1")
        key.verified_at = key.created_at
        tenant_id = tenant.id
    dns_server.add(keys.record_name("s1", "acme.test"), "TXT", key.public_record)

    async def sign(key_file: Path | str) -> SigningOutcome:
        return await sign_outgoing(
            sessions,
            resolver,
            settings.relay,
            raw=MESSAGE,
            tenant_id=tenant_id,
            from_domain="acme.test",
            key_file=key_file,
        )

    signed = await sign(settings.secrets.key_file)
    assert signed.signing == "signed d=acme.test s=s1" and not signed.held
    assert dkim.verify(signed.raw, dnsfunc=resolver.dkim_dnsfunc)

    missing = await sign(tmp_path / "nowhere" / "secret.key")
    assert missing.held and missing.raw == MESSAGE
    assert "DKIM signing with s1._domainkey.acme.test failed" in missing.signing
    assert "secrets key file" in missing.signing and "is missing" in missing.signing

    with sessions.begin() as session:
        session.execute(update(DkimKey).values(private_key=None, private_key_path="/old/s1.key"))
    waiting = await sign(settings.secrets.key_file)
    assert waiting.held
    assert "is still a file (/old/s1.key): run `mailledger dkim import`" in waiting.signing
