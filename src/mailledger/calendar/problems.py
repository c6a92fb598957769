"""What went wrong with a calendar account, in words, with how to fix it.

CalDAV's own answers (a refused login, a calendar that is gone, a server error) are said
here; the network, TLS, credentials and the unexpected are said the way mailbox accounts
say them (``accounts.problems``), so both kinds read alike in the error log.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from caldav.lib import error as caldav_error

from mailledger.accounts.problems import (
    OAuthError,
    SyncProblem,
    Where,
    describe_common,
    error,
    oauth_problem,
    reconnect,
    retry_hint,
)
from mailledger.calendar.connection import CalendarChoiceError, CalendarProtocolError
from mailledger.store.models import AccountStatus, CalendarAccount, CalendarKind


def where(account: CalendarAccount) -> Where:
    """The account as the shared words need it."""
    parts = urlsplit(account.calendar_url or account.url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    section = account.kind.value if account.kind is not CalendarKind.CALDAV else ""
    return Where(
        parts.hostname or account.url,
        port,
        account.login,
        section,
        security_fix="check the address: https:// for a secure connection (port 443)",
        ports="443 for https://, 80 for http://, unless the address names one",
    )


def describe(failure: BaseException, account: CalendarAccount) -> SyncProblem:
    """``failure``, raised during a pass of ``account``, as words, a fix and a status."""
    host = where(account).host
    if isinstance(failure, caldav_error.AuthorizationError):
        status = getattr(failure, "status", None)
        reason = str(getattr(failure, "reason", "") or "")
        if status == 403 or "forbidden" in reason.lower():
            return error(
                f"{host} does not let {account.login} read or change this calendar "
                f"({account.calendar_url})",
                "check that the calendar belongs to this login, or share it with it",
            )
        if account.kind is not CalendarKind.CALDAV:
            return reconnect(
                f"{host} refused the access token of {account.login}: the sign-in was revoked "
                "or no longer allows the calendar",
                f"sign in again: `mailledger calendar reconnect {account.id}`",
            )
        return reconnect(
            f"{host} refused the login {account.login}: the password is wrong or was changed",
            "re-connect the calendar with the current password (or an app password): "
            f"`mailledger calendar reconnect {account.id} --password-file FILE`",
        )
    if isinstance(failure, CalendarProtocolError):
        said = f" (the server said: {failure.body})" if failure.body else ""
        if failure.status == 404:
            return error(
                f"the calendar {account.calendar_url} is not on {host} any more{said}",
                "it was deleted or moved: remove this calendar account and add it again",
            )
        if failure.status in (429, 503):
            return error(
                f"{host} asked us to slow down ({failure.status}){said}",
                "nothing to do: the next pass waits",
                retry_hint(failure.body) or 600.0,
            )
        if failure.status == 507:
            return error(
                f"the calendar on {host} is full (507){said}",
                "make room in the calendar, or ask its provider for more",
            )
        if failure.status >= 500:
            return error(
                f"{host} failed to answer {failure.method} ({failure.status}){said}",
                "nothing to do if it passes; if it lasts, ask the calendar's provider",
            )
        return error(
            f"{host} refused {failure.method} {failure.url} ({failure.status}){said}",
            "if it repeats, check the calendar address, and ask the calendar's provider",
        )
    if isinstance(failure, CalendarChoiceError):
        return error(str(failure), "choose the calendar with --calendar NAME")
    if isinstance(failure, OAuthError):
        # The token endpoint refused a refresh: said as for mailboxes, signed in again here.
        problem = oauth_problem(failure, where(account).oauth_section)
        if problem.status is AccountStatus.RECONNECT:
            return reconnect(
                problem.what,
                f"sign in to {failure.provider} again: "
                f"`mailledger calendar reconnect {account.id}`",
            )
        return problem
    if isinstance(failure, caldav_error.DAVError):
        return error(
            f"{host} answered with an error: {failure}"[:500],
            "if it repeats, check the calendar address, and ask the calendar's provider",
        )
    return describe_common(failure, where(account))
