"""Every way a pass fails is said in words, with a fix and the status it leads to."""

from __future__ import annotations

import socket
import ssl

import pytest
from imapclient.exceptions import CapabilityError, IMAPClientAbortError, IMAPClientError, LoginError

from mailledger.store.models import AccountKind, AccountStatus, MailboxAccount
from mailledger.store.secretbox import SecretError
from mailledger.sync.problems import OAuthError, SyncProblem, describe, retry_hint


def _account(
    host: str = "imap.example.com", kind: AccountKind = AccountKind.IMAP
) -> MailboxAccount:
    return MailboxAccount(kind=kind, host=host, port=993, login="richard@example.com")


def test_google_refusing_a_password_says_to_use_google_sign_in() -> None:
    """The issue's own example: Gmail no longer takes account passwords."""
    problem = describe(
        LoginError("b'[AUTHENTICATIONFAILED] Invalid credentials (Failure)'"),
        _account("imap.gmail.com"),
    )
    assert problem.status is AccountStatus.RECONNECT
    assert problem.what.startswith(
        "Google refused the password: Google no longer accepts account passwords for IMAP"
    )
    assert "connect with Google sign-in instead" in problem.fix
    assert "Invalid credentials" in problem.what


def test_a_wrong_password_on_any_server_means_reconnect() -> None:
    """AUTHENTICATIONFAILED from imaplib's generic error too, not only LoginError."""
    problem = describe(
        IMAPClientError("b'[AUTHENTICATIONFAILED] Authentication failed.'"), _account()
    )
    assert problem.status is AccountStatus.RECONNECT
    assert "imap.example.com refused the login richard@example.com" in problem.what
    assert "current password" in problem.fix


def test_a_refused_oauth_token_means_sign_in_again() -> None:
    problem = describe(
        LoginError("b'[AUTHENTICATIONFAILED] Invalid credentials'"),
        _account("imap.gmail.com", AccountKind.GOOGLE),
    )
    assert problem.status is AccountStatus.RECONNECT
    assert "Google sign-in" in problem.fix


def test_an_invalid_certificate_names_the_host_and_the_tick_box() -> None:
    """The issue's second example."""
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "Hostname mismatch, certificate is not valid for 'imap.example.com'."
    problem = describe(error, _account())
    assert problem.status is AccountStatus.ERROR
    assert problem.what.startswith("the server's certificate is not valid for imap.example.com")
    assert problem.fix == (
        "ask your IT team, or tick 'allow non-secure certificate' if this is your own server"
    )


@pytest.mark.parametrize(
    ("error", "words", "fix"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "refused the connection", "port"),
        (socket.gaierror(-2, "Name or service not known"), "cannot be found", "spelling"),
        (TimeoutError("timed out"), "did not answer in time", "firewall"),
        (ConnectionResetError(104, "Connection reset by peer"), "was cut", "resumes"),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "secure", "143"),
        (CapabilityError("imap.example.com does not offer STARTTLS"), "does not offer", "tls"),
        (IMAPClientAbortError("socket error: EOF"), "closed the connection", "resumes"),
        (EOFError(), "closed the connection", "resumes"),
    ],
)
def test_network_and_protocol_failures_are_errors_retried_later(
    error: BaseException, words: str, fix: str
) -> None:
    problem = describe(error, _account())
    assert problem.status is AccountStatus.ERROR
    assert words in problem.what
    assert fix in problem.fix


def test_a_server_asking_to_slow_down_is_honoured() -> None:
    """ "try again in N" and Microsoft's backoff become retry_after_seconds."""
    problem = describe(
        IMAPClientError("b'[LIMIT] Too many connections, try again in 5 minutes'"), _account()
    )
    assert problem.status is AccountStatus.ERROR
    assert problem.retry_after_seconds == 300.0
    throttled = describe(
        IMAPClientError("b'Request is throttled. Suggested Backoff Time: 2000 milliseconds'"),
        _account("outlook.office365.com"),
    )
    assert throttled.retry_after_seconds == 2.0
    unavailable = describe(IMAPClientError("b'[UNAVAILABLE] Server busy'"), _account())
    assert "temporarily unavailable" in unavailable.what
    assert unavailable.retry_after_seconds is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("try again in 30 seconds", 30.0),
        ("Try again in 2 minutes", 120.0),
        ("retry after 1 hour", 3600.0),
        ("try again in 45", 45.0),
        ("try again in 500 ms", 0.5),
        ("try again in 999999 hours", 24 * 3600.0),
        ("no hint here", None),
    ],
)
def test_retry_hints(text: str, seconds: float | None) -> None:
    assert retry_hint(text) == seconds


def test_oauth_errors() -> None:
    """invalid_grant is re-connect; a misconfigured client is the administrator's to fix."""
    account = _account("imap.gmail.com", AccountKind.GOOGLE)
    grant = describe(OAuthError("Google", "invalid_grant", "Token has been revoked."), account)
    assert grant.status is AccountStatus.RECONNECT
    assert "re-connect" in grant.fix
    client = describe(OAuthError("Google", "invalid_client", "bad secret"), account)
    assert client.status is AccountStatus.ERROR
    assert "[oauth.google] client_id" in client.fix
    down = describe(OAuthError("Google", "unreachable", "connection refused"), account)
    assert down.status is AccountStatus.ERROR


def test_a_lost_key_and_the_unexpected() -> None:
    lost = describe(SecretError("cannot be opened"), _account())
    assert lost.status is AccountStatus.RECONNECT
    assert "key file" in lost.fix
    odd = describe(ValueError("something odd"), _account())
    assert odd.status is AccountStatus.ERROR
    assert "ValueError: something odd" in odd.what


def test_a_sync_problem_passes_through_and_reads_as_words() -> None:
    problem = SyncProblem(AccountStatus.RECONNECT, "what", "fix")
    assert describe(problem, _account()) is problem
    assert str(problem) == "what (fix)"
