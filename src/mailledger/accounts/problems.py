"""What went wrong with a synced account, in words, with how to fix it: the shared part.

A pass of a mailbox (IMAP) or a calendar (CalDAV) fails for reasons the two share: the
network, TLS, a token endpoint's refusal, credentials that can no longer be opened, or
something nobody expected. :func:`describe_common` turns those into a :class:`SyncProblem`;
each kind's own ``describe`` handles its protocol's answers first and hands the rest here.
A problem says what happened and what the staff member or their IT team can do, and
whether the account must wait for them (``reconnect``: the credentials no longer work, and
trying again would only get the login locked) or may be retried (``error``).
"""

from __future__ import annotations

import re
import socket
import ssl
from dataclasses import dataclass

from mailledger.store.models import AccountStatus
from mailledger.store.secretbox import SecretError

# Longest a server's "try again in N" hint is honoured for; a stranger hint is capped here.
MAX_HINT_SECONDS = 24 * 3600.0

_HINT = re.compile(
    r"(?:try\s+again|retry)\s+(?:in|after)\s+(\d+(?:\.\d+)?)\s*"
    r"(ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hours?)?",
    re.IGNORECASE,
)
_BACKOFF_MS = re.compile(r"backoff\s+time:\s*(\d+)\s*milliseconds", re.IGNORECASE)
_UNITS = {"ms": 0.001, "mi": 0.001, "s": 1.0, "se": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(eq=False)
class SyncProblem(Exception):  # noqa: N818 - a problem with an account, not a programming error
    """A failed pass in words: ``status`` is ``error`` (retry later) or ``reconnect`` (wait)."""

    status: AccountStatus
    what: str
    fix: str
    retry_after_seconds: float | None = None

    def __str__(self) -> str:
        return f"{self.what} ({self.fix})" if self.fix else self.what


class OAuthError(Exception):
    """A token endpoint refused or failed a request; ``error`` is the OAuth error code."""

    def __init__(self, provider: str, error: str, description: str = "") -> None:
        self.provider = provider
        self.error = error
        self.description = description
        super().__init__(f"{provider}: {error}" + (f": {description}" if description else ""))


@dataclass(frozen=True, slots=True)
class Where:
    """The account a problem is about, as the words need it."""

    host: str
    port: int
    login: str
    # The configuration section of its OAuth provider ("google"), "" for a password login.
    oauth_section: str = ""
    # The protocol's advice on the security setting, and which ports go with what.
    security_fix: str = "check the security setting"
    ports: str = "the port the provider documents"


def retry_hint(text: str) -> float | None:
    """Seconds from a server's "try again in N minutes" (or Microsoft's backoff), if any."""
    match = _BACKOFF_MS.search(text)
    if match:
        return min(int(match.group(1)) / 1000.0, MAX_HINT_SECONDS)
    match = _HINT.search(text)
    if not match:
        return None
    unit = (match.group(2) or "s").lower()
    factor = _UNITS.get(unit[:2], _UNITS.get(unit[:1], 1.0))
    return min(float(match.group(1)) * factor, MAX_HINT_SECONDS)


def reconnect(what: str, fix: str) -> SyncProblem:
    """A problem only the staff member can end: no more tries until they re-connect."""
    return SyncProblem(AccountStatus.RECONNECT, what, fix)


def error(what: str, fix: str, retry_after: float | None = None) -> SyncProblem:
    """A problem that may pass: tried again after a back-off."""
    return SyncProblem(AccountStatus.ERROR, what, fix, retry_after)


def oauth_problem(failure: OAuthError, section: str) -> SyncProblem:
    """A token endpoint's refusal in words (``section``: ``[oauth.SECTION]`` to check)."""
    detail = f": {failure.description}" if failure.description else ""
    if failure.error in ("invalid_grant", "unauthorized_client", "access_denied"):
        return reconnect(
            f"{failure.provider} no longer accepts this account's sign-in ({failure.error}"
            f"{detail}); it was revoked, expired, or the password was changed",
            f"re-connect the account with {failure.provider} sign-in",
        )
    if failure.error in ("invalid_client", "invalid_request", "invalid_scope", "not_configured"):
        return error(
            f"{failure.provider} refused our application ({failure.error}{detail})",
            f"an administrator must check [oauth.{section}] client_id, "
            "client_secret and scopes in the configuration",
        )
    return error(
        f"{failure.provider}'s token endpoint failed ({failure.error}{detail})",
        "nothing to do if it passes; the next pass tries again",
        retry_hint(failure.description),
    )


def network_problem(failure: OSError, where: Where) -> SyncProblem:
    """A network or TLS failure reaching ``where``, in words, with the protocol's advice."""
    place = f"{where.host} port {where.port}"
    if isinstance(failure, ssl.SSLCertVerificationError):
        reason = getattr(failure, "verify_message", "") or str(failure)
        return error(
            f"the server's certificate is not valid for {where.host} ({reason})",
            "ask your IT team, or tick 'allow non-secure certificate' if this is your own server",
        )
    if isinstance(failure, ssl.SSLError):
        return error(
            f"the secure connection to {place} failed "
            f"({getattr(failure, 'reason', None) or failure})",
            where.security_fix,
        )
    if isinstance(failure, socket.gaierror):
        return error(
            f"{where.host} cannot be found (the DNS lookup failed: {failure.strerror})",
            "check the spelling of the server name",
        )
    if isinstance(failure, ConnectionRefusedError):
        return error(
            f"{place} refused the connection", f"check the server name and port ({where.ports})"
        )
    if isinstance(failure, TimeoutError):
        return error(
            f"{place} did not answer in time",
            "check the server name and port, and that a firewall lets us reach it",
        )
    if isinstance(failure, ConnectionError):
        return error(
            f"the connection to {place} was cut ({failure.strerror or failure})",
            "nothing to do if it passes; the next pass resumes where this one stopped",
        )
    return error(
        f"{place} cannot be reached ({failure.strerror or failure})",
        "check the server name and port, and the network between us and it",
    )


def describe_common(failure: BaseException, where: Where) -> SyncProblem:
    """Any failure of a pass that is not a protocol answer, as words, a fix and a status."""
    if isinstance(failure, SyncProblem):
        return failure
    if isinstance(failure, OAuthError):
        return oauth_problem(failure, where.oauth_section)
    if isinstance(failure, OSError):
        return network_problem(failure, where)
    if isinstance(failure, SecretError):
        return reconnect(
            f"the stored credentials of {where.login} cannot be read: {failure}",
            "re-connect the account (or restore the [secrets] key file it was sealed with)",
        )
    if isinstance(failure, EOFError):
        return error(
            f"{where.host} closed the connection unexpectedly",
            "nothing to do if it passes; the next pass resumes where this one stopped",
        )
    return error(
        f"the pass failed unexpectedly: {type(failure).__name__}: {failure}"[:500],
        "if it repeats, report it with this error log to whoever runs mailledger",
    )
