"""RCPT routing reads the directory without taking SQLite's write lock."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.routing.routes import RecipientRouter, Refusal
from mailledger.store.inbox import Route
from mailledger.store.models import RouteKind


@pytest.mark.postgres
def test_routes(sessions: sessionmaker[Session], demo: DemoAddresses) -> None:
    router = RecipientRouter(sessions)
    user = router.route(demo.user_capture)
    assert isinstance(user, Route)
    assert user.kind is RouteKind.USER
    assert user.staff_id is not None
    local, domain = demo.user_capture.split("@")
    tagged = router.route(f"{local.upper()}+crm@{domain}")
    assert isinstance(tagged, Route)
    assert tagged.staff_id == user.staff_id
    log = router.route(demo.log_capture)
    assert isinstance(log, Route)
    assert log.kind is RouteKind.LOG
    assert isinstance(router.route(f"nobody@{domain}"), Refusal)
    assert isinstance(router.route("someone@elsewhere.example"), Refusal)


def test_rcpt_lookup_does_not_wait_for_the_write_lock(
    settings: Settings, sessions: sessionmaker[Session], demo: DemoAddresses
) -> None:
    """A writer holding the lock (intake, processing) must not hold up every RCPT."""
    path = settings.database.url.removeprefix("sqlite:///")
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        with ThreadPoolExecutor(1) as pool:
            # Taking the write lock, the lookup would wait out the 30 s busy timeout.
            found = pool.submit(RecipientRouter(sessions).route, demo.user_capture).result(5)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert isinstance(found, Route)
