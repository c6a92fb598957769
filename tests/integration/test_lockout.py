"""A failed-login lockout stops the guesser, never the owner (issue: lockout).

Failures are counted per (login, source network) and per source address. Thirty wrong
passwords for richard's relay login from one address lock that address and that login from
that network; his right password from his own laptop elsewhere still gets 235 (RFC 4954 §4).
Real SMTP AUTH sessions against the real submission listener, from two source addresses; the
counts live in the database, so two nodes (two engines on one PostgreSQL) share them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.relay.credentials import hash_password
from mailledger.relay.lockout import LoginGuard
from mailledger.service.server import serve
from mailledger.store import directory
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.models import LoginFailure
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.submission import submit_async
from mailledger.testing.tls import write_self_signed

HOSTNAME = "mx.capture.example"
LOGIN = "richard@acme.capture.example"
PASSWORD = "richard-relay-password"
ATTACKER = "127.0.0.1"
LAPTOP = "127.0.1.66"  # another /24 on loopback: another network
NEIGHBOUR = "127.0.0.77"  # the attacker's own /24


@pytest.fixture
async def submission_port(
    settings: Settings,
    sessions: sessionmaker[Session],
    demo: DemoAddresses,
    dns_server: DNSServer,
    tmp_path: Path,
) -> AsyncIterator[int]:
    """The whole service with richard's relay password set; yields the STARTTLS port."""
    cert, key = write_self_signed(HOSTNAME, tmp_path / "tls")
    configured = settings.model_copy(
        update={
            "tls": settings.tls.model_copy(update={"cert_file": str(cert), "key_file": str(key)}),
            "dns": dns_server.settings(timeout_seconds=1.0),
            "service": settings.service.model_copy(update={"hostname": HOSTNAME}),
            "submission": settings.submission.model_copy(
                update={
                    "listen": ["127.0.0.1:0"],
                }
            ),
        }
    )
    with sessions.begin() as session:
        tenant = directory.find_tenant(session, "acme")
        directory.find_staff(session, tenant, "richard").password_hash = hash_password(PASSWORD)
    stop = asyncio.Event()
    bound: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(configured, ready=bound.set_result, stop=stop))
    done, _ = await asyncio.wait({task, bound}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
        raise RuntimeError("the server stopped before it was ready")
    try:
        yield bound.result()[1][1]
    finally:
        stop.set()
        await task


async def _login(port: int, password: str, source: str) -> tuple[int, str]:
    result = await submit_async(
        port,
        user=LOGIN,
        password=password,
        mail_from="richard@acme.example",
        rcpt_to=[],
        data=b"",
        source_address=source,
    )
    return result.auth


async def test_thirty_wrong_passwords_do_not_lock_the_owner_out_from_elsewhere(
    submission_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The guesser is refused 454 4.7.0; richard's right password from his laptop gets 235."""
    answers = [await _login(submission_port, f"guess-{n}", ATTACKER) for n in range(30)]
    assert answers[0][0] == 535
    assert answers[-1][0] == 454 and answers[-1][1].startswith("4.7.0")
    # The right password from the attacker's address is refused too: no test of passwords.
    assert (await _login(submission_port, PASSWORD, ATTACKER))[0] == 454
    # The attacker's network is refused for this login, from a neighbour address too.
    assert (await _login(submission_port, PASSWORD, NEIGHBOUR))[0] == 454
    code, text = await _login(submission_port, PASSWORD, LAPTOP)
    assert code == 235, text


def test_a_lock_is_keyed_on_the_source_network(sessions: sessionmaker[Session]) -> None:
    """IPv4 /24 and IPv6 /64 are one network for a login; the source address stands alone."""
    assert LoginGuard.network("192.0.2.7") == LoginGuard.network("192.0.2.200")
    assert LoginGuard.network("192.0.2.7") != LoginGuard.network("192.0.3.7")
    assert LoginGuard.network("2001:db8:1:2::5") == LoginGuard.network("2001:db8:1:2:ffff::1")
    assert LoginGuard.network("2001:db8:1:2::5") != LoginGuard.network("2001:db8:1:3::5")
    clock = [0.0]
    guard = LoginGuard(
        sessions, max_failures=3, window_seconds=60, lockout_seconds=60, clock=lambda: clock[0]
    )
    for _ in range(3):
        guard.failed("192.0.2.7", "richard@acme.capture.example")
    assert not guard.check("192.0.2.7").allowed  # the source
    assert not guard.check("192.0.2.8", "richard@acme.capture.example").allowed  # its network
    assert guard.check("192.0.2.8", "alice@acme.capture.example").allowed  # another login
    assert guard.check("198.51.100.4", "richard@acme.capture.example").allowed  # elsewhere
    clock[0] = 61.0
    assert guard.check("192.0.2.7", "richard@acme.capture.example").allowed  # it ends


@contextlib.contextmanager
def _node(database_url: str) -> Iterator[sessionmaker[Session]]:
    """A node's own engine and sessions on the shared database, as `serve` makes them."""
    engine = make_engine(database_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def _guard(sessions: sessionmaker[Session], clock: list[float], **limits: float) -> LoginGuard:
    settings = {"max_failures": 4, "window_seconds": 60, "lockout_seconds": 300} | limits
    return LoginGuard(
        sessions,
        max_failures=int(settings["max_failures"]),
        window_seconds=settings["window_seconds"],
        lockout_seconds=settings["lockout_seconds"],
        backoff_base_seconds=1,
        clock=lambda: clock[0],
    )


@pytest.mark.postgres
def test_two_nodes_share_the_failure_counts(database_url: str, engine: Engine) -> None:
    """Failures counted on two nodes add up: together they lock the login from the guesser's
    network on both nodes, while the owner from another network still gets in on both."""
    clock = [1_800_000_000.0]
    with _node(database_url) as one_sessions, _node(database_url) as other_sessions:
        one, other = _guard(one_sessions, clock), _guard(other_sessions, clock)
        # Alternating nodes: kept per node, the counts would be 2 and 1, far from 4.
        assert one.failed("192.0.2.7", LOGIN) == 1
        assert other.failed("192.0.2.7", LOGIN) == 2
        assert one.failed("192.0.2.7", LOGIN) == 4
        assert one.check("192.0.2.7", LOGIN).allowed and other.check("192.0.2.7", LOGIN).allowed
        other.failed("192.0.2.7", LOGIN)
        for node in (one, other):
            assert node.check("192.0.2.7").reason == "client address locked"
            verdict = node.check("192.0.2.99", LOGIN)
            assert verdict.reason == "login from this network locked"
            assert verdict.retry_in_seconds == pytest.approx(300)
            assert node.check("198.51.100.4", LOGIN).allowed  # richard's laptop, elsewhere
            assert node.check("192.0.2.99", "alice@acme.capture.example").allowed
        clock[0] += 301
        assert other.check("192.0.2.7", LOGIN).allowed  # the lock ends for every node


@pytest.mark.postgres
def test_failures_counted_at_once_on_two_nodes_are_all_counted(
    database_url: str, engine: Engine
) -> None:
    """The count is one atomic upsert: 80 failures from 8 threads on two nodes count 80."""
    clock = [1_800_000_000.0]
    with _node(database_url) as one_sessions, _node(database_url) as other_sessions:
        guards = [
            _guard(sessions, clock, max_failures=1000)
            for sessions in (one_sessions, other_sessions)
        ]

        def guess(guard: LoginGuard) -> None:
            for _ in range(10):
                guard.failed("192.0.2.7", LOGIN)

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(guess, guards * 4))
        with one_sessions() as session:
            counts = dict(session.execute(select(LoginFailure.key, LoginFailure.failures)).all())
    assert counts == dict.fromkeys(LoginGuard.keys("192.0.2.7", LOGIN), 80)


@pytest.mark.postgres
def test_stale_rows_are_pruned_and_locks_are_kept(database_url: str, engine: Engine) -> None:
    """A failure prunes rows idle past the window and the lockout; a running lock stays."""
    clock = [1_800_000_000.0]
    with _node(database_url) as sessions:
        guard = _guard(sessions, clock, max_failures=2, window_seconds=60, lockout_seconds=300)
        guard.failed("192.0.2.7", LOGIN)  # one failure: nothing locked
        clock[0] += 250
        guard.failed("198.51.100.4", LOGIN)
        guard.failed("198.51.100.4", LOGIN)  # locked until +550
        clock[0] += 60  # +310: the first rows idle past the lockout; the lock runs on
        guard.failed("203.0.113.9", LOGIN)
        with sessions() as session:
            keys = set(session.scalars(select(LoginFailure.key)))
        assert keys == {
            *LoginGuard.keys("198.51.100.4", LOGIN),
            *LoginGuard.keys("203.0.113.9", LOGIN),
        }
        clock[0] += 241  # +551: the lock is over, its rows idle past the lockout too
        guard.failed("203.0.113.9", LOGIN)
        with sessions() as session:
            keys = set(session.scalars(select(LoginFailure.key)))
        assert keys == set(LoginGuard.keys("203.0.113.9", LOGIN))


def test_a_right_password_forgets_the_login_row_of_its_network(
    sessions: sessionmaker[Session],
) -> None:
    """The owner's success deletes his login's row there; the source's row stays counted."""
    clock = [1_800_000_000.0]
    guard = _guard(sessions, clock)
    guard.failed("192.0.2.7", LOGIN)
    guard.succeeded(LOGIN, "192.0.2.7")
    with sessions() as session:
        keys = set(session.scalars(select(LoginFailure.key)))
    assert keys == {LoginGuard.keys("192.0.2.7", LOGIN)[0]}
