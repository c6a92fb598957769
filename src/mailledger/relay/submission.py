"""The submission listeners: staff send through us after TLS and SMTP AUTH (DESIGN §6).

Two styles, as RFC 8314 describes them: port 587 (``[submission] listen``), where STARTTLS
is required before AUTH and before any mail command (RFC 3207 §4, RFC 6409), and port 465
(``listen_tls``), where TLS starts before the first byte. Both need ``[tls] cert_file``.

The protocol is the capture listener's (``capture.protocol.CaptureSMTP``: trace ids, complete
enhanced replies, session limits, graceful stop) with AUTH and its own limits added; the
handler is the one seam with business rules, as on the capture side. An accepted message
goes through ``relay.outgoing.StaffSender``, the steps ``POST /v1/messages`` shares: screened
(bare CR or LF: refused), checked against the sender rules (``relay.ownership``), DKIM-signed
(``domains.signing``), and then, in one transaction committed before ``250``: queued for
delivery (``store.outbox``) and stored as a received message on the tenant's log route by the
one writer of received messages (``store.inbox.add_received``), so the processing worker
records it as an outbound activity by the same steps as a ``log@`` BCC (and merges the two
when both arrive).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session, syntax
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session as DBSession
from sqlalchemy.orm import sessionmaker

from mailledger.config import Settings, split_listen
from mailledger.dnsauth.resolver import Resolver
from mailledger.logs import get_logger
from mailledger.mail import replies
from mailledger.mail.addresses import AddressError, parse_address
from mailledger.mail.replies import Reply
from mailledger.relay import submission_replies as answers
from mailledger.relay.credentials import CredentialError, verify_password
from mailledger.relay.lockout import LoginGuard
from mailledger.relay.outgoing import SUBMISSION_PROTOCOL, StaffSender, login_for
from mailledger.relay.ownership import Login, check_envelope_sender
from mailledger.smtp.listener import CaptureListener
from mailledger.smtp.protocol import CaptureSMTP, SessionGate
from mailledger.smtp.session import describe_tls, format_peer, temporary_fault, trace_id_of
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.engine import reading
from mailledger.store.inbox import SessionFacts
from mailledger.store.models import Staff, Tenant

log = get_logger(__name__)

MECHANISMS = ("LOGIN", "PLAIN")  # RFC 4616 and the LOGIN draft every mail client speaks
# Per-connection limits: a client that needs more is misbehaving or guessing.
MAX_AUTH_PER_SESSION = 3
MAX_MESSAGES_PER_SESSION = 50
MAX_SESSIONS_PER_CLIENT = 20
MAX_LOGIN_CHARS = 320  # RFC 5321 §4.5.3.1.3: no address is longer


def client_address(peer: Any) -> str:
    """The IP address of a peer (without the port), the key failed logins are counted by."""
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "")


def login_of(session: Session) -> Login:
    """The login of an authenticated session; the handler runs only after AUTH."""
    login = session.auth_data
    if not session.authenticated or not isinstance(login, Login):
        raise PermissionError("submission command without a login")
    return login


def is_encrypted(server: SMTP) -> bool:
    """Whether the session runs over TLS (after STARTTLS, or implicit TLS from the start)."""
    transport = server.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None


def tls_description(server: SMTP) -> str:
    """The protocol and cipher of the session, for the stored message's facts."""
    transport = server.transport
    if transport is None:
        return ""
    return describe_tls({"cipher": transport.get_extra_info("cipher")})


class SubmissionHandler:
    """Answers a submission session: AUTH, MAIL, RCPT and DATA for authenticated staff."""

    def __init__(
        self,
        sessions: sessionmaker[DBSession],
        blobs: BlobBackend,
        settings: Settings,
        resolver: Resolver,
        *,
        guard: LoginGuard | None = None,
        on_stored: Sequence[Callable[[], None]] = (),
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        # What happens to an accepted message is shared with POST /v1/messages.
        self.sender = StaffSender(sessions, blobs, settings, resolver)
        sub = settings.submission
        # Failure counts live in the database, shared by every node on it (relay.lockout).
        self.guard = guard or LoginGuard(
            sessions,
            max_failures=sub.max_auth_failures,
            window_seconds=sub.auth_window_seconds,
            lockout_seconds=sub.auth_lockout_seconds,
        )
        self.on_stored = list(on_stored)

    # --- AUTH -----------------------------------------------------------------------------

    async def authenticate(self, client: str, username: str, password: str) -> Login | Reply:
        """The login for these credentials, or the refusal to send (never no answer)."""
        # The guard reads and writes the shared failure counts: off the event loop, as the
        # credential lookup.
        try:
            verdict = await asyncio.to_thread(self.guard.check, client, username)
            if not verdict.allowed:
                log.warning("login refused: locked", user=username[:100], why=verdict.reason)
                return answers.AUTH_LOCKED
            login = await asyncio.to_thread(self._check_credentials, username, password)
        except SQLAlchemyError as exc:
            log.exception("login lookup failed", error=type(exc).__name__)
            return answers.AUTH_UNAVAILABLE
        if login is None:
            try:
                delay = await asyncio.to_thread(self.guard.failed, client, username)
            except SQLAlchemyError as exc:
                # Uncounted, the guess still waits the longest back-off before its answer.
                log.exception("login failure not counted", error=type(exc).__name__)
                delay = self.guard.backoff_cap_seconds
            log.warning("login failed", user=username[:100], backoff_seconds=delay)
            # The back-off: the next guess from here waits for this answer (RFC 4954 §4
            # leaves failure handling to the server).
            await asyncio.sleep(delay)
            return answers.AUTH_INVALID
        try:
            await asyncio.to_thread(self.guard.succeeded, username, client)
        except SQLAlchemyError as exc:
            # The password was right: the old failures just expire with their window.
            log.exception("login failures not forgotten", error=type(exc).__name__)
        log.info("login", user=login.username)
        return login

    def _check_credentials(self, username: str, password: str) -> Login | None:
        with reading(self._sessions) as session:
            staff, tenant = _find_login(session, username)
            stored = staff.password_hash if staff is not None else None
            try:
                ok = verify_password(password, stored)
            except CredentialError:
                log.exception("unreadable password hash", user=username[:100])
                ok = False
            if not ok or staff is None or tenant is None:
                return None
            return login_for(session, staff, tenant)

    # --- the SMTP hooks -------------------------------------------------------------------

    async def handle_EHLO(  # noqa: N802 - aiosmtpd's hook name
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """Offer AUTH only over TLS (RFC 4954 §4: no plain-text passwords in the clear)."""
        session.host_name = hostname
        lines = [line for line in responses if not line[4:].upper().startswith("AUTH")]
        if is_encrypted(server):
            lines.insert(len(lines) - 1, "250-AUTH " + " ".join(MECHANISMS))
        return lines

    async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook name
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        """Only the login's own addresses, never the null sender (DESIGN §4, relay rule)."""
        login = login_of(session)
        refusal = check_envelope_sender(login, address)
        if refusal is not None:
            log.warning("sender refused", user=login.username, mail_from=address[:100])
            return str(refusal)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return str(replies.SENDER_OK)

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """Any syntactically valid recipient: the login is what makes relaying allowed."""
        login_of(session)
        if len(envelope.rcpt_tos) >= self._settings.capture.max_recipients:
            return str(replies.TOO_MANY_RECIPIENTS)
        try:
            parse_address(address)
        except AddressError:
            return str(replies.BAD_RECIPIENT_SYNTAX)
        # aiosmtpd's contract: a handle_RCPT that answers must record the recipient itself.
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return str(replies.RECIPIENT_OK)

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        """Screen, check the From, sign, then queue and capture in one commit before 250."""
        login = login_of(session)
        facts = SessionFacts(
            peer=format_peer(session.peer),
            helo=str(session.host_name or ""),
            mail_from=str(envelope.mail_from),
            rcpt_to=list(envelope.rcpt_tos),
            tls=tls_description(server),
            trace_id=trace_id_of(server),
        )
        result = await self.sender.send(
            login, envelope.original_content or b"", facts, protocol=SUBMISSION_PROTOCOL
        )
        if isinstance(result, Reply):
            return str(result)
        for callback in self.on_stored:
            callback()
        return f"{replies.QUEUED} {result.queue_id}"

    async def handle_exception(self, error: Exception) -> str:
        """As on the capture side: a fault is temporary, answered with the trace id."""
        return str(temporary_fault(error))


def _find_login(session: DBSession, username: str) -> tuple[Staff | None, Tenant | None]:
    """The staff member whose capture address is ``username`` (unique across tenants)."""
    if len(username) > MAX_LOGIN_CHARS:
        return None, None
    try:
        box = parse_address(username)
    except AddressError:
        return None, None
    tenant = session.scalars(
        select(Tenant).where(Tenant.capture_domain == box.domain, Tenant.disabled_at.is_(None))
    ).first()
    if tenant is None:
        return None, None
    staff = session.scalars(
        select(Staff).where(
            Staff.tenant_id == tenant.id,
            Staff.username == box.local.lower(),
            Staff.disabled_at.is_(None),
            Staff.removed_at.is_(None),
        )
    ).first()
    return staff, tenant


# --- the protocol ---------------------------------------------------------------------------


class SubmissionGate(SessionGate):
    """The capture gate's session limit, plus a limit per client address."""

    def __init__(self, max_sessions: int, max_per_client: int = MAX_SESSIONS_PER_CLIENT) -> None:
        super().__init__(max_sessions)
        self.max_per_client = max_per_client

    def admit(self, session: CaptureSMTP) -> Reply | None:
        """Refuse a client that already holds its share of sessions."""
        client = client_address(session.session.peer if session.session else None)
        same = sum(
            1
            for other in self.sessions
            if other.session is not None and client_address(other.session.peer) == client
        )
        if same >= self.max_per_client and not self.stopping:
            return answers.TOO_MANY_FROM_CLIENT
        return super().admit(session)


class SubmissionSMTP(CaptureSMTP):
    """The capture protocol with TLS required, SMTP AUTH, and per-connection limits."""

    def __init__(
        self,
        handler: SubmissionHandler,
        *,
        settings: Settings,
        gate: SessionGate,
        tls_context: ssl.SSLContext | None,
        implicit_tls: bool,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # The session timeout is the submission listener's own.
        capture = settings.capture.model_copy(
            update={
                "timeout_seconds": settings.submission.timeout_seconds,
                "max_session_seconds": settings.submission.max_session_seconds,
                "max_junk_commands": settings.submission.max_junk_commands,
            }
        )
        super().__init__(
            handler,
            settings=settings.model_copy(update={"capture": capture}),
            gate=gate,
            # Implicit TLS is set up by the server socket: no STARTTLS on top of it.
            tls_context=None if implicit_tls else tls_context,
            loop=loop,
        )
        self._submission = handler
        # RFC 3207 §4 / RFC 8314 §3.3: nothing but EHLO, STARTTLS, NOOP and QUIT in the clear.
        self.require_starttls = not implicit_tls
        self.auth_attempts = 0
        self.messages = 0

    async def check_auth_needed(self, caller_method: str) -> bool:
        """Every mail command needs a login first (RFC 6409 §4.3: we are no open relay)."""
        assert self.session is not None
        if not self.session.authenticated:
            log.info("command before AUTH refused", command=caller_method)
            await self.push(str(answers.AUTH_REQUIRED))
            return True
        return False

    @syntax("AUTH <mechanism> [initial-response]")
    async def smtp_AUTH(  # noqa: N802 - aiosmtpd dispatches on this name
        self, arg: str
    ) -> None:
        """RFC 4954 AUTH with PLAIN (RFC 4616) or LOGIN; every failure gets an answer."""
        if await self.check_helo_needed("EHLO"):
            return
        assert self.session is not None
        refusal = self._auth_refusal(arg)
        if refusal is not None:
            await self.push(str(refusal))
            return
        self.auth_attempts += 1
        if self.auth_attempts > MAX_AUTH_PER_SESSION:
            log.warning("too many AUTH attempts on one connection")
            await self.push(str(answers.TOO_MANY_AUTH))
            self._close()
            return
        client = client_address(self.session.peer)
        # The client address is checked before any credentials are read or verified.
        if not self._submission.guard.check(client).allowed:
            log.warning("login refused: client address locked")
            await self.push(str(answers.AUTH_LOCKED))
            return
        args = arg.split()
        credentials = await self._read_credentials(args[0].upper(), args[1:])
        if credentials is None:
            return
        result = await self._submission.authenticate(client, *credentials)
        if isinstance(result, Reply):
            await self.push(str(result))
            return
        self.session.authenticated = True
        # aiosmtpd declares auth_data as None; it holds whatever the server authenticated.
        self.session.auth_data = result  # type: ignore[assignment]
        structlog.contextvars.bind_contextvars(login=result.username)
        await self.push(str(answers.AUTH_OK))

    def _auth_refusal(self, arg: str) -> Reply | None:
        assert self.session is not None
        if not self.session.extended_smtp:
            return Reply(500, "5.5.1", "Command not recognized")
        if not is_encrypted(self):
            return answers.AUTH_NEEDS_TLS
        if self.session.authenticated:
            return answers.AUTH_ALREADY
        if self.envelope is not None and self.envelope.mail_from:
            # RFC 4954 §4: AUTH is not permitted during a mail transaction.
            return Reply(503, "5.5.1", "AUTH not allowed during a mail transaction")
        args = (arg or "").split()
        if not args or len(args) > 2:
            return answers.AUTH_SYNTAX
        if args[0].upper() not in MECHANISMS:
            return answers.AUTH_MECHANISM
        return None

    async def _read_credentials(self, mechanism: str, rest: list[str]) -> tuple[str, str] | None:
        """(username, password) from the client, or None after answering its mistake."""
        if mechanism == "PLAIN":
            blob = await self._response(rest, "")
            if blob is None:
                return None
            parts = blob.split(b"\x00")
            if len(parts) != 3:
                await self.push(str(answers.AUTH_SYNTAX))
                return None
            authzid, user, password = parts
            if authzid and authzid != user:
                # RFC 4616 §2: we do not let one login act as another.
                await self.push(str(answers.AUTH_INVALID))
                return None
        else:
            user_blob = await self._response(rest, "Username:")
            if user_blob is None:
                return None
            password_blob = await self._response([], "Password:")
            if password_blob is None:
                return None
            user, password = user_blob, password_blob
        try:
            return user.decode("utf-8"), password.decode("utf-8")
        except UnicodeDecodeError:
            await self.push(str(answers.AUTH_SYNTAX))
            return None

    async def _response(self, rest: list[str], challenge: str) -> bytes | None:
        """The initial response if the client sent one, else the answer to a 334 challenge.

        None means the client's mistake (bad base64, ``*`` to abort) has been answered.
        """
        if rest:
            try:
                return base64.b64decode(rest[0].encode("ascii"), validate=True)
            except (binascii.Error, UnicodeEncodeError):
                await self.push(str(answers.AUTH_SYNTAX))
                return None
        answer = await self.challenge_auth(challenge)
        return answer if isinstance(answer, bytes) else None

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(  # noqa: N802 - aiosmtpd dispatches on this name
        self, arg: str | None
    ) -> None:
        """MAIL, within the per-connection message limit."""
        authenticated = self.session is not None and self.session.authenticated
        if authenticated and self.messages >= MAX_MESSAGES_PER_SESSION:
            await self.push(str(answers.TOO_MANY_MESSAGES))
            self._close()
            return
        await super().smtp_MAIL(arg)
        if self.envelope is not None and self.envelope.mail_from:
            self.messages += 1

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


# --- the listener ---------------------------------------------------------------------------


class SubmissionListener(CaptureListener):
    """Binds ``[submission] listen`` (STARTTLS) and ``listen_tls`` (implicit TLS).

    Stopping is the capture listener's: new sessions get 421, idle ones are closed, a DATA in
    progress may finish within the grace time.
    """

    def __init__(
        self, settings: Settings, handler: SubmissionHandler, *, tls_context: ssl.SSLContext
    ) -> None:
        super().__init__(settings, handler, tls_context=tls_context)
        self._submission = handler
        self.gate = SubmissionGate(settings.submission.max_sessions)

    def _factory(self, *, implicit_tls: bool) -> Callable[[], SubmissionSMTP]:
        def make() -> SubmissionSMTP:
            return SubmissionSMTP(
                self._submission,
                settings=self._settings,
                gate=self.gate,
                tls_context=self._tls_context,
                implicit_tls=implicit_tls,
                loop=asyncio.get_running_loop(),
            )

        return make

    async def start(self) -> list[tuple[str, int]]:
        """Bind every listen address (port 0 picks a free port) and return what was bound."""
        loop = asyncio.get_running_loop()
        plans = [(value, False) for value in self._settings.submission.listen]
        plans += [(value, True) for value in self._settings.submission.listen_tls]
        started = time.monotonic()
        try:
            for value, implicit in plans:
                host, port = split_listen(value)
                server = await loop.create_server(
                    self._factory(implicit_tls=implicit),
                    host or None,
                    port,
                    reuse_address=True,
                    ssl=self._tls_context if implicit else None,
                )
                self._servers.append(server)
                for sock in server.sockets:
                    name = sock.getsockname()
                    self.addresses.append((str(name[0]), int(name[1])))
        except OSError:
            await self._close_servers()
            raise
        log.info(
            "submission listener started",
            addresses=self.addresses,
            seconds=round(time.monotonic() - started, 3),
        )
        return list(self.addresses)
