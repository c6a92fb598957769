"""OAuth 2.0 sign-in and tokens for synced accounts, mailboxes and calendars alike (RFC 6749).

The authorization-code flow with PKCE (RFC 7636, S256) and a ``state`` that finds the
account the sign-in is for: :func:`begin_authorization` stores the state and the sealed
verifier on the account and returns the provider's URL; :func:`complete_authorization` takes
the ``code`` the provider sent back (to the web page's callback, or pasted into ``account add
--oauth`` / ``calendar add --oauth`` from the browser's address bar on a headless server),
exchanges it, and stores the refresh token sealed. :func:`access_token` gives a pass a fresh
access token, refreshing it when it expires within five minutes.

Mailbox and calendar accounts carry the same token columns, so one flow serves both; what
differs is the scope asked for (``[oauth.google] scopes`` for mail, ``calendar_scopes`` for
CalDAV): each is a grant of its own, so a calendar's token can never read the mailbox. The
``state`` is unique in each table and random, so the callback finds the account, of either
kind, by it alone.

A refresh answer that carries a refresh token replaces the stored one, always: Microsoft
rotates them, and a server that keeps using the first one loses every account after 90 days.
``invalid_grant`` (revoked, expired, password changed) means the user must sign in again:
:func:`access_token` raises the :class:`~mailledger.accounts.problems.OAuthError`, and each
kind's ``describe`` says it as a ``reconnect`` problem with its own way to sign in again.

Tokens are httpx requests to the configured endpoints (``[oauth.google]``,
``[oauth.microsoft]``), so tests point them at ``mailledger.testing.oauthserver``.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, TypeAlias

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailledger.accounts.problems import OAuthError, SyncProblem, oauth_problem
from mailledger.config import OAuthSettings, OAuthSettingsAll
from mailledger.store.accountstatus import reset
from mailledger.store.models import (
    AccountKind,
    AccountStatus,
    CalendarAccount,
    CalendarKind,
    MailboxAccount,
)
from mailledger.store.secretbox import SecretBox

# An access token is refreshed when it expires within this long (a pass must not start with
# one that lapses halfway).
REFRESH_MARGIN: Final = timedelta(minutes=5)
# A sign-in not finished within this long must be started again.
AUTHORIZATION_LIFETIME: Final = timedelta(minutes=15)
TIMEOUT_SECONDS: Final = 30.0
# Where the provider sends the browser back, under [http] public_url, unless configured.
CALLBACK_PATH: Final = "/accounts/oauth/callback"
# The providers by the value of an account's kind, as a staff member would call them.
PROVIDER_NAMES: Final = {"google": "Google", "microsoft": "Microsoft 365"}

OAuthAccount: TypeAlias = MailboxAccount | CalendarAccount
AccountKindAny: TypeAlias = AccountKind | CalendarKind


class AuthorizationError(ValueError):
    """A sign-in cannot be completed (unknown or lapsed state, provider said no); says why."""


@dataclass(frozen=True)
class Tokens:
    """What a token endpoint answered: the access token, its expiry, maybe a refresh token."""

    access_token: str = field(repr=False)
    expires_at: datetime
    refresh_token: str | None = field(default=None, repr=False)


def provider_name(kind: AccountKindAny) -> str:
    """``Google`` or ``Microsoft 365`` for an OAuth account kind."""
    return PROVIDER_NAMES.get(kind.value, kind.value)


def provider(oauth: OAuthSettingsAll, kind: AccountKindAny) -> OAuthSettings:
    """The ``[oauth.*]`` settings of an account kind."""
    if kind.value == "google":
        return oauth.google
    if kind.value == "microsoft":
        return oauth.microsoft
    raise ValueError(f"{kind.value} accounts do not sign in with OAuth")


def noun(account: OAuthAccount) -> str:
    """What the account reads, in the words said to its owner."""
    return "calendar" if isinstance(account, CalendarAccount) else "mailbox"


def scopes_for(settings: OAuthSettings, account: OAuthAccount) -> list[str]:
    """The scopes a sign-in of ``account`` asks for: mail's, or the calendar's."""
    return settings.calendar_scopes if isinstance(account, CalendarAccount) else settings.scopes


def redirect_uri(settings: OAuthSettings, public_url: str) -> str:
    """Where the provider sends the browser back after sign-in."""
    return settings.redirect_uri or public_url.rstrip("/") + CALLBACK_PATH


def pkce_pair() -> tuple[str, str]:
    """A PKCE verifier and its S256 challenge (RFC 7636 §4.1, §4.2)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def begin_authorization(
    session: Session,
    account: OAuthAccount,
    box: SecretBox,
    oauth: OAuthSettingsAll,
    *,
    public_url: str,
    now: datetime,
) -> str:
    """Start a sign-in for ``account``: store its state and verifier, return the URL to open."""
    settings = provider(oauth, account.kind)
    name = provider_name(account.kind)
    section = f"[oauth.{account.kind.value}]"
    if not settings.client_id:
        raise AuthorizationError(
            f"{name} sign-in is not configured: set {section} client_id and client_secret "
            f"(the application registered with {name}) in the configuration"
        )
    scopes = scopes_for(settings, account)
    if not scopes:
        key = "calendar_scopes" if isinstance(account, CalendarAccount) else "scopes"
        raise AuthorizationError(
            f"{name} sign-in for a {noun(account)} has no scope: set {section} {key} "
            "in the configuration"
        )
    verifier, challenge = pkce_pair()
    account.oauth_state = secrets.token_urlsafe(32)
    account.oauth_verifier = box.seal(verifier)
    account.oauth_started_at = now
    session.flush()
    query = {
        "response_type": "code",
        "client_id": settings.client_id,
        "redirect_uri": redirect_uri(settings, public_url),
        "scope": " ".join(scopes),
        "state": account.oauth_state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "login_hint": account.login,
    }
    if account.kind.value == "google":
        # A refresh token comes only with offline access, and again only with consent.
        query |= {"access_type": "offline", "prompt": "consent"}
    separator = "&" if "?" in settings.auth_url else "?"
    return settings.auth_url + separator + urllib.parse.urlencode(query)


def parse_redirect(text: str) -> tuple[str | None, str]:
    """``(state, code)`` from a pasted redirected URL (or a bare code: no state)."""
    text = text.strip()
    if "?" not in text and "=" not in text:
        if not text:
            raise AuthorizationError("nothing was pasted: paste the address the browser shows")
        return None, text
    params = urllib.parse.parse_qs(urllib.parse.urlsplit(text).query or text)
    if "error" in params:
        detail = params.get("error_description", [""])[0]
        raise AuthorizationError(
            f"the sign-in was refused: {params['error'][0]}" + (f": {detail}" if detail else "")
        )
    if "code" not in params:
        raise AuthorizationError("the pasted address holds no code=...: copy the whole address")
    return params.get("state", [None])[0], params["code"][0]


def _token_request(
    settings: OAuthSettings, name: str, form: dict[str, str], now: datetime
) -> Tokens:
    """POST ``form`` to the token endpoint; the tokens, or an OAuthError naming what failed."""
    form = form | {"client_id": settings.client_id}
    if settings.client_secret:
        form["client_secret"] = settings.client_secret
    try:
        response = httpx.post(
            settings.token_url,
            data=form,
            headers={"Accept": "application/json"},
            timeout=TIMEOUT_SECONDS,
        )
    except httpx.HTTPError as error:
        raise OAuthError(name, "unreachable", f"{settings.token_url}: {error}") from None
    try:
        body: Any = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    if response.status_code >= 400 or "access_token" not in body:
        code = str(body.get("error") or f"http_{response.status_code}")
        description = str(body.get("error_description") or "")[:300]
        if response.status_code == 429 or response.status_code >= 500:
            retry = response.headers.get("Retry-After", "")
            if retry.isdigit():
                description = f"{description} (try again in {retry} seconds)".strip()
        raise OAuthError(name, code, description)
    try:
        lifetime = float(body.get("expires_in", 3600))
    except (TypeError, ValueError):
        lifetime = 3600.0
    refresh = body.get("refresh_token")
    return Tokens(
        access_token=str(body["access_token"]),
        expires_at=now + timedelta(seconds=lifetime),
        refresh_token=str(refresh) if refresh else None,
    )


def exchange_code(
    settings: OAuthSettings, name: str, code: str, *, verifier: str, uri: str, now: datetime
) -> Tokens:
    """Trade an authorization code (and the PKCE verifier) for tokens."""
    return _token_request(
        settings,
        name,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": uri,
            "code_verifier": verifier,
        },
        now,
    )


def refresh(
    settings: OAuthSettings,
    name: str,
    refresh_token: str,
    now: datetime,
    scopes: list[str] | None = None,
) -> Tokens:
    """A new access token (and, with Microsoft, a new refresh token) for a refresh token.

    ``scopes`` (default: mail's) is sent along, as Microsoft wants to be told again.
    """
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    asked = settings.scopes if scopes is None else scopes
    if asked:
        form["scope"] = " ".join(asked)
    return _token_request(settings, name, form, now)


def store_tokens(account: OAuthAccount, box: SecretBox, tokens: Tokens) -> None:
    """Keep the tokens sealed; a refresh token in the answer always replaces the stored one."""
    account.access_token = box.seal(tokens.access_token)
    account.access_token_expires_at = tokens.expires_at
    if tokens.refresh_token:
        account.secret = box.seal(tokens.refresh_token)


def pending_account(session: Session, state: str, now: datetime) -> OAuthAccount:
    """The account (mailbox or calendar) whose sign-in ``state`` names, if not lapsed."""
    account: OAuthAccount | None = session.scalars(
        select(MailboxAccount).where(MailboxAccount.oauth_state == state)
    ).one_or_none()
    if account is None:
        account = session.scalars(
            select(CalendarAccount).where(CalendarAccount.oauth_state == state)
        ).one_or_none()
    if account is None:
        raise AuthorizationError("this sign-in is unknown or was already used: start it again")
    started = account.oauth_started_at
    if started is None or now - started > AUTHORIZATION_LIFETIME:
        raise AuthorizationError(
            "this sign-in took longer than 15 minutes and lapsed: start it again"
        )
    return account


def forget_sign_in(account: OAuthAccount) -> None:
    """The sign-in under way is over (used, or refused): its state and verifier go."""
    account.oauth_state = None
    account.oauth_verifier = ""
    account.oauth_started_at = None


def complete_authorization(
    session: Session,
    state: str,
    code: str,
    *,
    box: SecretBox,
    oauth: OAuthSettingsAll,
    public_url: str,
    now: datetime,
) -> OAuthAccount:
    """Finish the sign-in ``state`` began: exchange ``code``, store the tokens, ``pending``.

    Raises AuthorizationError with words for the person signing in. The caller commits.
    """
    account = pending_account(session, state, now)
    settings = provider(oauth, account.kind)
    name = provider_name(account.kind)
    verifier = box.open(account.oauth_verifier)
    try:
        tokens = exchange_code(
            settings, name, code, verifier=verifier, uri=redirect_uri(settings, public_url), now=now
        )
    except OAuthError as error:
        problem = oauth_problem(error, account.kind.value)
        raise AuthorizationError(f"{problem.what}; {problem.fix}") from None
    if not tokens.refresh_token:
        raise AuthorizationError(
            f"{name} gave no refresh token, so the {noun(account)} could be read for an hour "
            "only: remove mailledger from the account's connected apps and sign in again"
        )
    store_tokens(account, box, tokens)
    forget_sign_in(account)
    reset(session, account, now)
    return account


def _lock(session: Session, account: OAuthAccount) -> None:
    """Re-read the account under a row lock (PostgreSQL), so two passes refresh only once."""
    if session.get_bind().dialect.name == "postgresql":
        session.refresh(account, with_for_update=True)


def _fresh(account: OAuthAccount, now: datetime) -> bool:
    expires = account.access_token_expires_at
    return bool(account.access_token) and expires is not None and expires - REFRESH_MARGIN > now


def access_token(
    session: Session,
    account: OAuthAccount,
    box: SecretBox,
    oauth: OAuthSettingsAll,
    now: datetime,
    *,
    sign_in_again: str = "",
) -> str:
    """A fresh access token for ``account``, refreshed (and stored) when it expires soon.

    Raises :class:`OAuthError` when the provider refuses the refresh (the caller's
    ``describe`` says it), and a ``reconnect`` problem when the sign-in never finished
    (``sign_in_again``: how to, in the caller's words).
    """
    if _fresh(account, now):
        return box.open(account.access_token)
    _lock(session, account)
    if _fresh(account, now):
        return box.open(account.access_token)  # another pass refreshed it meanwhile
    name = provider_name(account.kind)
    if not account.secret:
        raise SyncProblem(
            AccountStatus.RECONNECT,
            f"{name} sign-in was never completed for {account.login}",
            sign_in_again or f"connect the {noun(account)} with {name} sign-in",
        )
    settings = provider(oauth, account.kind)
    tokens = refresh(settings, name, box.open(account.secret), now, scopes_for(settings, account))
    store_tokens(account, box, tokens)
    session.flush()
    return tokens.access_token


__all__ = [
    "AUTHORIZATION_LIFETIME",
    "CALLBACK_PATH",
    "PROVIDER_NAMES",
    "REFRESH_MARGIN",
    "AuthorizationError",
    "OAuthAccount",
    "Tokens",
    "access_token",
    "begin_authorization",
    "complete_authorization",
    "exchange_code",
    "forget_sign_in",
    "noun",
    "parse_redirect",
    "pending_account",
    "pkce_pair",
    "provider",
    "provider_name",
    "redirect_uri",
    "refresh",
    "scopes_for",
    "store_tokens",
]
