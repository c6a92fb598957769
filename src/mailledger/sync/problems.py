"""What went wrong with a mailbox account, in words, with how to fix it (DESIGN §12).

Every failure of a pass ends here: :func:`describe` turns whatever was raised (an IMAP
answer, a TLS or network error, a token endpoint's refusal) into a :class:`SyncProblem` that
says what happened and what the staff member or their IT team can do about it, and whether
the account must wait for them (``reconnect``: the credentials no longer work, trying again
would only get the login locked) or may be retried (``error``). The error log and the mails
show these words as they are, so they name the host and never a password or token.
"""

from __future__ import annotations

import re

from imapclient.exceptions import (
    CapabilityError,
    IMAPClientAbortError,
    IMAPClientError,
    LoginError,
)

# The shared words (network, TLS, OAuth, credentials, the unexpected) live with calendar
# accounts' in ``accounts.problems``; these names stay importable from here.
from mailledger.accounts.problems import (
    MAX_HINT_SECONDS,
    OAuthError,
    SyncProblem,
    Where,
    describe_common,
    oauth_problem,
    retry_hint,
)
from mailledger.accounts.problems import error as _error
from mailledger.accounts.problems import reconnect as _reconnect
from mailledger.store.models import AccountKind, MailboxAccount

_AUTH_WORDS = (
    "[authenticationfailed]",
    "[authorizationfailed]",
    "authentication failed",
    "authenticate failed",
    "invalid credentials",
    "login failed",
    "logon failure",
    "[auth]",
)


def provider_name(account: MailboxAccount) -> str:
    """Who runs the mailbox, as a staff member would call them."""
    host = account.host.lower()
    if account.kind is AccountKind.GOOGLE or host.endswith(("gmail.com", "googlemail.com")):
        return "Google"
    if account.kind is AccountKind.MICROSOFT or host.endswith(
        ("office365.com", "outlook.com", "hotmail.com")
    ):
        return "Microsoft 365"
    return account.host


def _answer(error: BaseException) -> str:
    """The server's words from an IMAP error (imapclient wraps them as ``b'...'``)."""
    text = str(error).strip()
    match = re.fullmatch(r"b(['\"])(.*)\1", text, re.DOTALL)
    return (match.group(2) if match else text)[:500]


def _login_refused(account: MailboxAccount, answer: str) -> SyncProblem:
    who = provider_name(account)
    said = f" (the server said: {answer})" if answer else ""
    if account.kind is AccountKind.IMAP and who == "Google":
        return _reconnect(
            "Google refused the password: Google no longer accepts account passwords for IMAP"
            + said,
            "connect with Google sign-in instead (or re-connect with an app password)",
        )
    if account.kind is AccountKind.IMAP and who == "Microsoft 365":
        return _reconnect(
            "Microsoft 365 refused the password: Microsoft no longer accepts passwords for IMAP"
            + said,
            "connect with Microsoft sign-in instead",
        )
    if account.kind is not AccountKind.IMAP:
        return _reconnect(
            f"{who} refused the sign-in for {account.login}: the access was revoked or expired"
            + said,
            f"re-connect the account with {who} sign-in",
        )
    return _reconnect(
        f"{account.host} refused the login {account.login}: the password is wrong or was "
        "changed" + said,
        "re-connect the account with the current password (or an app password)",
    )


def _imap_problem(error: IMAPClientError, account: MailboxAccount) -> SyncProblem:
    answer = _answer(error)
    lowered = answer.lower()
    if isinstance(error, LoginError) or any(word in lowered for word in _AUTH_WORDS):
        return _login_refused(account, answer)
    if "application-specific password" in lowered or "web browser" in lowered:
        return _reconnect(
            f"{provider_name(account)} asks for a sign-in in a web browser first: {answer}",
            "sign in to the mailbox once in a browser, then re-connect the account",
        )
    hint = retry_hint(answer)
    if "[limit]" in lowered or "[overquota]" in lowered or "throttl" in lowered or hint:
        return _error(
            f"{account.host} asked us to slow down: {answer}",
            "nothing to do: the next pass waits as long as the server asked",
            hint,
        )
    if "[unavailable]" in lowered or "[inuse]" in lowered:
        return _error(
            f"{account.host} is temporarily unavailable: {answer}",
            "nothing to do if it passes; if it lasts, ask the mailbox's provider",
            hint,
        )
    if isinstance(error, CapabilityError):
        fix = "choose security 'tls' (port 993) or 'none' for this server"
        if "starttls" not in lowered:
            fix = "this server lacks an IMAP feature we need; ask its provider"
        return _error(f"{account.host} does not offer what we asked for: {answer}", fix)
    if isinstance(error, IMAPClientAbortError):
        return _error(
            f"{account.host} closed the connection during the pass: {answer}",
            "nothing to do if it passes; the next pass resumes where this one stopped",
        )
    return _error(
        f"{account.host} answered with an error: {answer}",
        "if it repeats, check the account's folders and ask the mailbox's provider",
    )


def where(account: MailboxAccount) -> Where:
    """The account as the shared words need it, with IMAP's advice on ports."""
    return Where(
        account.host,
        account.port,
        account.login,
        account.kind.value,
        security_fix="check the security setting: port 993 is usually 'tls', port 143 'starttls'",
        ports="993 for 'tls', 143 for 'starttls'",
    )


def describe(error: BaseException, account: MailboxAccount) -> SyncProblem:
    """``error``, raised during a pass of ``account``, as words, a fix and a status."""
    if isinstance(error, IMAPClientError):
        return _imap_problem(error, account)
    return describe_common(error, where(account))


__all__ = [
    "MAX_HINT_SECONDS",
    "OAuthError",
    "SyncProblem",
    "describe",
    "oauth_problem",
    "provider_name",
    "retry_hint",
    "where",
]
