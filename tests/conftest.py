"""Shared fixtures: a fresh database and blob store per test, and the demo directory in it.

Tests marked ``@pytest.mark.postgres`` run twice, on SQLite and on a real PostgreSQL server
started once per session; every other test runs on SQLite only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses, seed_demo
from mailledger.config import Settings, load_settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.store.blobs import BlobStore
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.models import Base
from mailledger.store.secretbox import ensure_key_file
from mailledger.testing.cli import InProcessCli, use_settings
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.postgres import PostgresServer, find_bindir, start_server
from mailledger.verify.patches import install_patches

BACKENDS = ("sqlite", "postgres")


def pytest_configure(config: pytest.Config) -> None:
    """Install the library patches as every entry point does at start-up (verify.patches)."""
    install_patches()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run postgres-marked tests on both backends; the parameter picks ``database_url``'s kind."""
    if "database_url" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "postgres"
    ):
        metafunc.parametrize("database_url", BACKENDS, indirect=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL 15 server for the whole run, in a temporary directory, on loopback."""
    bindir = find_bindir()
    if bindir is None:
        reason = "PostgreSQL server programs (pg_ctl, initdb) not found; install postgresql-15"
        if os.environ.get("CI"):
            # .ci/run installs PostgreSQL; a skip there would hide untested code.
            pytest.fail(reason)
        pytest.skip(reason)
    server = start_server(bindir)
    yield server
    server.stop()


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of this test's own: an SQLite file, or a fresh PostgreSQL database."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'mailledger.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.create_database()
    yield server.url(name)
    server.drop_database(name)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Settings pointing at this test's database and blob directory, on loopback port 0."""
    env = {
        "MAILLEDGER_DATABASE__URL": database_url,
        "MAILLEDGER_STORAGE__BLOB_DIR": str(tmp_path / "blobs"),
        "MAILLEDGER_CAPTURE__LISTEN": '["127.0.0.1:0"]',
        # A free port for /metrics and /health, so servers in tests never clash on 9425.
        "MAILLEDGER_METRICS__LISTEN": '"127.0.0.1:0"',
        # The HTTP API on a port of its own too (tests read it back from serve's http_ready).
        "MAILLEDGER_HTTP__LISTEN": '"127.0.0.1:0"',
        "MAILLEDGER_PROCESSING__POLL_INTERVAL_SECONDS": "0.05",
        "MAILLEDGER_LOGGING__FORMAT": '"console"',
        # Nothing listens there: a test that needs DNS starts its own server; no lookup ever
        # leaves the machine.
        "MAILLEDGER_DNS__NAMESERVERS": '["127.0.0.1:9"]',
        "MAILLEDGER_DNS__TIMEOUT_SECONDS": "0.5",
        "MAILLEDGER_SECRETS__KEY_FILE": str(tmp_path / "secret.key"),
    }
    loaded = load_settings(None, env)
    ensure_key_file(loaded.secrets.key_file)
    return loaded


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    """The test database with the schema created."""
    eng = make_engine(settings.database.url)
    Base.metadata.create_all(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    """Sessions on the test database."""
    return make_sessionmaker(engine)


@pytest.fixture
def blobs(settings: Settings) -> BlobStore:
    """The test's blob store."""
    return BlobStore(settings.storage.blob_dir)


@pytest.fixture
def demo(sessions: sessionmaker[Session]) -> DemoAddresses:
    """The demo tenant (acme), its staff member richard, and contact carol@client.example."""
    with sessions.begin() as session:
        return seed_demo(session)


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    """A DNS server on 127.0.0.1 with no records yet; tests publish what they need."""
    with DNSServer() as server:
        yield server


@pytest.fixture
def resolver(dns_server: DNSServer) -> Resolver:
    """Our resolver, asking the test's DNS server."""
    return Resolver(dns_server.settings(timeout_seconds=0.5))


@pytest.fixture
def cli(
    settings: Settings,
    demo: DemoAddresses,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> InProcessCli:
    """``mailledger`` in-process on the test's settings, with the demo tenant seeded. A test
    module with another configuration defines its own ``cli``."""
    use_settings(monkeypatch, settings)
    return InProcessCli(capsys)
