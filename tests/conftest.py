"""Shared fixtures: a fresh database and blob store per test, and the demo directory in it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mailledger.config import Settings, load_settings
from mailledger.demo import DemoAddresses, seed_demo
from mailledger.store.blobs import BlobStore
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.models import Base


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """An SQLite database file of this test's own."""
    return f"sqlite:///{tmp_path / 'mailledger.db'}"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Settings pointing at this test's database and blob directory, on loopback port 0."""
    env = {
        "MAILLEDGER_DATABASE__URL": database_url,
        "MAILLEDGER_STORAGE__BLOB_DIR": str(tmp_path / "blobs"),
        "MAILLEDGER_CAPTURE__LISTEN": '["127.0.0.1:0"]',
        "MAILLEDGER_PROCESSING__POLL_INTERVAL_SECONDS": "0.05",
        "MAILLEDGER_LOGGING__FORMAT": '"console"',
    }
    return load_settings(None, env)


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
