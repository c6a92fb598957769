"""OAuth 2.0 for Gmail and Microsoft 365 mailboxes: the flow of ``accounts.oauth``, for mail.

The sign-in (authorization code with PKCE and a one-time ``state``), the code exchange, the
refresh before expiry and the storing of a rotated refresh token are written once, in
:mod:`mailledger.accounts.oauth`, for mailbox and calendar accounts alike; their names stay
importable from here. What is a mailbox's own is how a refused refresh is said:
:func:`access_token` turns the provider's ``OAuthError`` into the mailbox's words
(``invalid_grant``: a ``reconnect`` problem, "re-connect the account with Google sign-in").
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from mailledger.accounts.oauth import (
    AUTHORIZATION_LIFETIME,
    CALLBACK_PATH,
    REFRESH_MARGIN,
    TIMEOUT_SECONDS,
    AuthorizationError,
    Tokens,
    begin_authorization,
    complete_authorization,
    exchange_code,
    parse_redirect,
    pending_account,
    pkce_pair,
    provider,
    provider_name,
    redirect_uri,
    refresh,
    store_tokens,
)
from mailledger.accounts.oauth import access_token as _access_token
from mailledger.config import OAuthSettingsAll
from mailledger.store.models import MailboxAccount
from mailledger.store.secretbox import SecretBox
from mailledger.sync.problems import OAuthError, describe


def access_token(
    session: Session,
    account: MailboxAccount,
    box: SecretBox,
    oauth: OAuthSettingsAll,
    now: datetime,
) -> str:
    """A fresh access token for the mailbox; a refused refresh raised in the mailbox's words."""
    try:
        return _access_token(
            session,
            account,
            box,
            oauth,
            now,
            sign_in_again=f"connect the account with {provider_name(account.kind)} sign-in",
        )
    except OAuthError as error:
        raise describe(error, account) from None


__all__ = [
    "AUTHORIZATION_LIFETIME",
    "CALLBACK_PATH",
    "REFRESH_MARGIN",
    "TIMEOUT_SECONDS",
    "AuthorizationError",
    "Tokens",
    "access_token",
    "begin_authorization",
    "complete_authorization",
    "exchange_code",
    "parse_redirect",
    "pending_account",
    "pkce_pair",
    "provider",
    "provider_name",
    "redirect_uri",
    "refresh",
    "store_tokens",
]
