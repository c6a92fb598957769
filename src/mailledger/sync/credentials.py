"""What a pass logs in with: the account's password, or a fresh OAuth access token.

The engine asks :func:`login_for` at the start of each connection and never sees a sealed
value; a :class:`Login` keeps its secret out of ``repr`` so it cannot reach a log line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from mailledger.config import OAuthSettingsAll
from mailledger.store.models import AccountKind, AccountStatus, MailboxAccount
from mailledger.store.secretbox import SecretBox, SecretError
from mailledger.sync import oauth
from mailledger.sync.problems import SyncProblem, describe


@dataclass(frozen=True)
class Login:
    """An IMAP login: ``password`` for LOGIN, or ``bearer`` for XOAUTH2 (exactly one is set)."""

    login: str
    password: str | None = field(repr=False)
    bearer: str | None = field(repr=False)

    def __post_init__(self) -> None:
        if (self.password is None) == (self.bearer is None):
            raise ValueError("a Login holds a password or a bearer token, exactly one")


def login_for(
    session: Session,
    account: MailboxAccount,
    box: SecretBox,
    oauth_settings: OAuthSettingsAll,
    now: datetime,
) -> Login:
    """How to log in to ``account`` now; raises SyncProblem when it cannot (``reconnect``).

    An OAuth access token expiring within five minutes is refreshed first, and a rotated
    refresh token stored, in ``session`` (the caller commits).
    """
    try:
        if account.kind is AccountKind.IMAP:
            if not account.secret:
                raise SyncProblem(
                    AccountStatus.RECONNECT,
                    f"no password is stored for {account.login}",
                    "re-connect the account with its password",
                )
            return Login(account.login, box.open(account.secret), None)
        return Login(
            account.login, None, oauth.access_token(session, account, box, oauth_settings, now)
        )
    except SecretError as error:
        raise describe(error, account) from None
