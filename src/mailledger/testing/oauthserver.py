"""A local OAuth 2.0 provider for tests: what Google's and Microsoft's sign-in servers do for us.

A real HTTP server on 127.0.0.1 with the endpoints mailbox sync and Dovecot use:

- ``GET /authorize``: the user "signs in" at once (as ``login_hint``, or ``approve_as``)
  and is redirected to ``redirect_uri`` with a ``code`` and the ``state``; with
  ``refuse_sign_in`` set, with ``error=access_denied`` instead.
- ``POST /token``: ``authorization_code`` (client, redirect URI and PKCE S256 verifier checked)
  and ``refresh_token`` grants. With ``rotate`` every refresh issues a new refresh token and
  the old one stops working at once (stricter than Microsoft, so forgetting to store the new
  one fails a test). A revoked or unknown grant is ``400 invalid_grant``.
- ``POST /introspect`` (RFC 7662, ``token=``) and ``GET /introspect?access_token=``: what
  Dovecot's oauth2 passdb asks; ``{"active": true, "email": USER}`` for a live access token.

Access tokens expire after ``expires_in`` seconds of the server's clock, or when a test calls
:meth:`OAuthServer.expire_access_tokens`. Every token request is recorded in ``requests``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

CLIENT_ID = "mailledger-test-client"
CLIENT_SECRET = "mailledger-test-secret"  # noqa: S105 - a test fixture's value


@dataclass
class _Grant:
    user: str
    client_id: str
    redirect_uri: str = ""
    challenge: str = ""
    scope: str = ""


@dataclass
class OAuthServer:
    """The provider; use as a context manager, read ``url`` for its base address."""

    expires_in: int = 3600
    rotate: bool = True
    approve_as: str | None = None
    refuse_sign_in: bool = False
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    requests: list[dict[str, str]] = field(default_factory=list)
    introspections: list[str] = field(default_factory=list)
    _codes: dict[str, _Grant] = field(default_factory=dict)
    _refresh: dict[str, _Grant] = field(default_factory=dict)
    _access: dict[str, tuple[str, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    # --- life --------------------------------------------------------------------------------

    def start(self) -> Self:
        """Listen on a free loopback port and serve in a thread."""
        handler = type("Handler", (_Handler,), {"server_owner": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base address, ``http://127.0.0.1:PORT``."""
        if self._server is None:
            raise RuntimeError("the OAuth server is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def auth_url(self) -> str:
        return self.url + "/authorize"

    @property
    def token_url(self) -> str:
        return self.url + "/token"

    @property
    def introspection_url(self) -> str:
        return self.url + "/introspect"

    # --- what a test does ----------------------------------------------------------------------

    def issue_refresh_token(self, user: str, scope: str = "") -> str:
        """A refresh token for ``user``, as if they had signed in before the test."""
        token = "rt-" + secrets.token_urlsafe(24)
        with self._lock:
            self._refresh[token] = _Grant(user, self.client_id, scope=scope)
        return token

    def revoke_user(self, user: str) -> int:
        """The user revoked our access (or changed their password): every grant dies."""
        with self._lock:
            doomed = [t for t, g in self._refresh.items() if g.user == user]
            for token in doomed:
                del self._refresh[token]
            for token in [t for t, (u, _) in self._access.items() if u == user]:
                del self._access[token]
        return len(doomed)

    def expire_access_tokens(self) -> None:
        """Every access token issued so far stops working (as after its hour)."""
        with self._lock:
            self._access.clear()

    def refresh_tokens(self, user: str) -> list[str]:
        """The refresh tokens that work for ``user`` now."""
        with self._lock:
            return [t for t, g in self._refresh.items() if g.user == user]

    def grants(self, grant_type: str) -> list[dict[str, str]]:
        """The token requests of one grant type, in order."""
        return [r for r in self.requests if r.get("grant_type") == grant_type]

    # --- the protocol -------------------------------------------------------------------------

    def _new_tokens(self, grant: _Grant, *, with_refresh: bool) -> dict[str, Any]:
        access = "at-" + secrets.token_urlsafe(24)
        self._access[access] = (grant.user, time.time() + self.expires_in)
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": grant.scope,
        }
        if with_refresh:
            refresh = "rt-" + secrets.token_urlsafe(24)
            self._refresh[refresh] = grant
            body["refresh_token"] = refresh
        return body

    def authorize(self, query: dict[str, str]) -> str:
        """The redirect for a sign-in request."""
        target = query.get("redirect_uri", "")
        if self.refuse_sign_in:
            params = {"error": "access_denied", "state": query.get("state", "")}
            return target + "?" + urllib.parse.urlencode(params)
        user = self.approve_as or query.get("login_hint", "")
        code = "code-" + secrets.token_urlsafe(16)
        with self._lock:
            self._codes[code] = _Grant(
                user,
                query.get("client_id", ""),
                redirect_uri=target,
                challenge=query.get("code_challenge", ""),
                scope=query.get("scope", ""),
            )
        return target + "?" + urllib.parse.urlencode({"code": code, "state": query.get("state")})

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The answer to a token request: status and JSON body."""
        self.requests.append(dict(form))
        if form.get("client_id") != self.client_id or form.get("client_secret") != (
            self.client_secret
        ):
            return 401, {"error": "invalid_client", "error_description": "unknown client"}
        kind = form.get("grant_type")
        with self._lock:
            if kind == "authorization_code":
                grant = self._codes.pop(form.get("code", ""), None)
                if grant is None or grant.redirect_uri != form.get("redirect_uri"):
                    return 400, {"error": "invalid_grant", "error_description": "bad code"}
                digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
                challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
                if challenge != grant.challenge:
                    return 400, {"error": "invalid_grant", "error_description": "PKCE mismatch"}
                return 200, self._new_tokens(grant, with_refresh=True)
            if kind == "refresh_token":
                token = form.get("refresh_token", "")
                grant = self._refresh.get(token)
                if grant is None:
                    return 400, {
                        "error": "invalid_grant",
                        "error_description": "the refresh token was revoked or has expired",
                    }
                if self.rotate:
                    del self._refresh[token]
                return 200, self._new_tokens(grant, with_refresh=self.rotate)
        return 400, {"error": "unsupported_grant_type"}

    def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662: whether an access token is live, and whose."""
        self.introspections.append(token)
        with self._lock:
            found = self._access.get(token)
        if found is None or found[1] < time.time():
            return {"active": False}
        return {"active": True, "email": found[0], "sub": found[0]}


class _Handler(BaseHTTPRequestHandler):
    server_owner: OAuthServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a test reads ``requests``, not stderr."""

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        text = self.rfile.read(length).decode("utf-8", "replace")
        return {k: v[0] for k, v in urllib.parse.parse_qs(text).items()}

    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(parts.query).items()}
        if parts.path == "/authorize":
            self.send_response(302)
            self.send_header("Location", self.server_owner.authorize(query))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif parts.path == "/introspect":
            token = query.get("access_token", "")
            header = self.headers.get("Authorization", "")
            if not token and header.lower().startswith("bearer "):
                token = header[7:].strip()
            self._json(200, self.server_owner.introspect(token))
        else:
            self._json(404, {"error": "not_found"})

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        form = self._form()
        if path == "/token":
            status, body = self.server_owner.token(form)
            self._json(status, body)
        elif path == "/introspect":
            self._json(200, self.server_owner.introspect(form.get("token", "")))
        else:
            self._json(404, {"error": "not_found"})
