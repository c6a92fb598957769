"""The relay's pure rules: who may send as whom, password hashes, and the login lock."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session, sessionmaker

from mailledger.mail.parsing import parse_message
from mailledger.relay import credentials
from mailledger.relay.lockout import LoginGuard
from mailledger.relay.ownership import Login, check_envelope_sender, check_from_header

RICHARD = Login(
    staff_id=1,
    tenant_id=1,
    username="richard@acme.capture.example",
    own_addresses=frozenset({"richard@acme.example", "richardsmith@gmail.com"}),
)
NO_PLUS = Login(
    staff_id=1,
    tenant_id=1,
    username="richard@acme.capture.example",
    own_addresses=RICHARD.own_addresses,
    strip_plus=False,
)


@pytest.mark.parametrize(
    ("mail_from", "refused_with"),
    [
        ("richard@acme.example", None),
        ("<richard@acme.example>", None),
        ("Richard@ACME.example", None),  # domains are case-insensitive, our keys lowercase
        ("richard.smith@gmail.com", None),
        ("r.i.c.h.a.r.d.smith@googlemail.com", None),  # the same Gmail mailbox
        ("richard+quotes@acme.example", None),  # the tenant strips +tags
        ("", "null sender"),
        ("<>", "null sender"),
        ("bob@acme.example", "MAIL FROM bob@acme.example is not"),  # a colleague
        ("richard@globex.example", "MAIL FROM richard@globex.example is not"),  # another tenant
        ("richard@acme.example.evil.test", "is not an address of"),
        ("richardsmith@outlook.com", "is not an address of"),  # same local part, other domain
        ("not an address", "is not an address of"),
    ],
)
def test_envelope_sender_must_be_the_logins_own(mail_from: str, refused_with: str | None) -> None:
    """MAIL FROM passes only for the login's own addresses, and never as the null sender."""
    reply = check_envelope_sender(RICHARD, mail_from)
    if refused_with is None:
        assert reply is None
    else:
        assert reply is not None
        assert (reply.code, reply.status) == (550, "5.7.1")
        assert refused_with in reply.text


def test_plus_tags_count_only_when_the_tenant_strips_them() -> None:
    """A +tag is the same mailbox only under the tenant's setting, as for capture."""
    assert check_envelope_sender(NO_PLUS, "richard@acme.example") is None
    assert check_envelope_sender(NO_PLUS, "richard+x@acme.example") is not None


def _parsed(headers: str) -> object:
    raw = (headers.replace("\n", "\r\n") + "\r\nbody\r\n").encode()
    return parse_message(raw, received_at=datetime.now(UTC), max_depth=10, max_parts=10)


@pytest.mark.parametrize(
    ("headers", "refused_with"),
    [
        ("From: Richard <richard@acme.example>\n", None),
        ("From: richard.smith@gmail.com\n", None),
        ("From: =?utf-8?q?Richard_Smith?= <richard@acme.example>\n", None),
        ("To: carol@client.example\n", "no From header"),
        ("From: richard@acme.example\nFrom: richard@acme.example\n", "2 From headers"),
        ("From: richard@acme.example, bob@acme.example\n", "2 mailboxes"),
        ("From: undisclosed:;\n", "cannot be parsed"),  # a group, no mailbox
        ("From: Bob <bob@acme.example>\n", "From bob@acme.example is not an address of"),
        ("From: ceo@globex.example\n", "From ceo@globex.example is not"),
        # A display name that looks like an address proves nothing: the mailbox is checked.
        ('From: "richard@acme.example" <eve@evil.test>\n', "From eve@evil.test is not"),
        ("From: richard@acme.example <eve@evil.test>\n", "cannot be parsed"),
        ("From: <richard@acme.example\n", "cannot be parsed"),
    ],
)
def test_from_header_must_be_one_mailbox_of_the_login(
    headers: str, refused_with: str | None
) -> None:
    """Exactly one From header with exactly one mailbox, owned by the login."""
    reply = check_from_header(RICHARD, _parsed(headers))  # type: ignore[arg-type]
    if refused_with is None:
        assert reply is None
    else:
        assert reply is not None
        assert (reply.code, reply.status) == (550, "5.7.1")
        assert refused_with in reply.text


def test_generated_password_verifies_only_itself() -> None:
    """A stored hash checks the right password and refuses any other."""
    password = credentials.generate_password()
    stored = credentials.hash_password(password)
    assert password not in stored
    assert stored.startswith("scrypt$n=32768,r=8,p=1$")
    assert credentials.verify_password(password, stored)
    assert not credentials.verify_password(password.upper(), stored)
    assert not credentials.verify_password(password, None)
    assert not credentials.needs_rehash(stored)


def test_each_hash_has_its_own_salt() -> None:
    """The same password hashes differently for two users."""
    assert credentials.hash_password("same") != credentials.hash_password("same")


def test_generated_passwords_are_long_and_distinct() -> None:
    """120 random bits in groups of four; no two alike."""
    seen = {credentials.generate_password() for _ in range(50)}
    assert len(seen) == 50
    assert all(len(p.replace("-", "")) == credentials.PASSWORD_CHARS for p in seen)


def test_unreadable_hash_is_an_error_not_a_pass() -> None:
    """A corrupted stored hash never lets a login in."""
    with pytest.raises(credentials.CredentialError):
        credentials.verify_password("x", "scrypt$n=3,r=8,p=1$AAAA$AAAA")
    with pytest.raises(credentials.CredentialError):
        credentials.verify_password("x", "md5$whatever")


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failures_back_off_then_lock_the_login_from_that_network_and_the_address(
    sessions: sessionmaker[Session],
) -> None:
    """Each failure doubles the delay; the limit locks the address, and the login from its
    network (a /24), until the lockout passes. The owner elsewhere still gets in."""
    clock = Clock()
    guard = LoginGuard(
        sessions,
        max_failures=3,
        window_seconds=60,
        lockout_seconds=300,
        backoff_base_seconds=1,
        clock=clock,
    )
    assert guard.failed("127.0.0.1", "richard") == 1
    assert guard.failed("127.0.0.1", "richard") == 2
    assert guard.check("127.0.0.1", "richard").allowed
    guard.failed("127.0.0.1", "richard")
    assert not guard.check("127.0.0.1", "richard").allowed
    assert guard.check("127.0.0.2", "richard").reason == "login from this network locked"
    assert guard.check("192.0.2.10", "richard").allowed  # his laptop, elsewhere
    assert guard.check("127.0.0.1", "bob").reason == "client address locked"
    assert guard.check("127.0.0.2", "bob").allowed
    clock.now += 301
    assert guard.check("127.0.0.1", "richard").allowed


def test_failures_outside_the_window_are_forgotten(sessions: sessionmaker[Session]) -> None:
    """Only failures within the window count towards the lock."""
    clock = Clock()
    guard = LoginGuard(
        sessions, max_failures=2, window_seconds=60, lockout_seconds=300, clock=clock
    )
    guard.failed("127.0.0.1", "richard")
    clock.now += 61
    guard.failed("127.0.0.1", "richard")
    assert guard.check("127.0.0.1", "richard").allowed


def test_success_clears_the_login_but_not_the_address(sessions: sessionmaker[Session]) -> None:
    """One valid login from an address does not reset guesses at other users from there."""
    clock = Clock()
    guard = LoginGuard(
        sessions, max_failures=2, window_seconds=60, lockout_seconds=300, clock=clock
    )
    guard.failed("127.0.0.1", "richard")
    guard.succeeded("richard", "127.0.0.1")
    guard.failed("127.0.0.2", "richard")
    assert guard.check("127.0.0.3", "richard").allowed  # the user's count started over
    guard.failed("127.0.0.1", "bob")
    assert not guard.check("127.0.0.1", "carol").allowed  # the address's count did not


@pytest.mark.parametrize("header", ["To", "Cc", "Subject", "Date", "Message-ID", "References"])
def test_a_repeated_once_only_header_is_refused_at_submission(header: str) -> None:
    """What capture would quarantine as ambiguous is refused before it is relayed."""
    value = {"Date": "Mon, 30 Nov 2026 10:00:00 +0000", "Message-ID": "<a@acme.example>"}.get(
        header, "carol@client.example"
    )
    parsed = _parsed(f"From: richard@acme.example\n{header}: {value}\n{header}: {value}\n")
    reply = check_from_header(RICHARD, parsed)  # type: ignore[arg-type]
    assert reply is not None
    assert (reply.code, reply.status) == (550, "5.6.0")
    assert f"2 {header} headers" in reply.text
