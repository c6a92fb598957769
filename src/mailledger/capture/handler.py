"""The one seam between aiosmtpd and mailledger: the capture handler (STYLE: one handler object).

aiosmtpd calls ``handle_EHLO/HELO/MAIL/RCPT/DATA`` here. The handler holds no business rules:
it asks ``routing`` who a recipient is, ``screening`` whether the bytes are safe to keep, and
``intake`` to keep them, and turns each answer into a reply from ``replies``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException
from sqlalchemy.exc import SQLAlchemyError

from mailledger.capture import replies, screening
from mailledger.capture.intake import InsufficientStorageError, Intake, IntakeError, SessionFacts
from mailledger.capture.spool import SpooledMessage
from mailledger.config import CaptureSettings
from mailledger.logs import get_logger
from mailledger.metrics import Metrics
from mailledger.routing.addresses import AddressError, parse_address
from mailledger.routing.routes import RecipientRouter, Refusal, Route

log = get_logger(__name__)

NULL_SENDER = "<>"  # how aiosmtpd hands us the null reverse path (RFC 5321 §4.5.5)


class CaptureEnvelope(Envelope):
    """aiosmtpd's envelope with the routes decided at RCPT time."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: list[Route] = []


def routes_of(envelope: Envelope) -> list[Route]:
    """The routes kept on the envelope; the handler runs only under ``CaptureSMTP``."""
    if not isinstance(envelope, CaptureEnvelope):
        raise TypeError("CaptureHandler needs the envelopes CaptureSMTP creates")
    return envelope.routes


def format_peer(peer: Any) -> str:
    """``ip:port`` (IPv6 in brackets) from the socket's peer name."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = str(peer[0]), peer[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(peer or "")


def describe_tls(ssl_extra: Any) -> str:
    """The negotiated protocol and cipher after STARTTLS, or "" for a clear-text session."""
    if not ssl_extra:
        return ""
    cipher = ssl_extra.get("cipher") if isinstance(ssl_extra, dict) else None
    if isinstance(cipher, tuple) and len(cipher) >= 2:
        return f"{cipher[1]} {cipher[0]}"
    return "tls"


def trace_id_of(server: SMTP) -> str:
    """The connection's trace id, kept on the protocol (aiosmtpd rebuilds Session on STARTTLS)."""
    return str(getattr(server, "trace_id", "") or "")


class CaptureHandler:
    """Answers one capture session's commands from routing, screening and intake."""

    def __init__(
        self,
        router: RecipientRouter,
        intake: Intake,
        capture: CaptureSettings,
        metrics: Metrics | None = None,
    ) -> None:
        self._router = router
        self._intake = intake
        self._capture = capture
        self._metrics = metrics or Metrics()

    def update_limits(self, capture: CaptureSettings) -> None:
        """Apply reloaded limits (recipients, headers, hops) to the next commands."""
        self._capture = capture

    async def handle_HELO(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        """Keep the HELO name for the message's session facts."""
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_EHLO(  # noqa: N802 - aiosmtpd's hook name
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """Keep the EHLO name; the capture listener takes no AUTH, so it does not offer it."""
        session.host_name = hostname
        return [line for line in responses if not line[4:].upper().startswith("AUTH")]

    async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook name
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        """Accept a syntactically valid reverse path, or the null sender of bounces.

        aiosmtpd has already refused a SIZE above ``data_size_limit`` (RFC 1870).
        """
        if address not in (NULL_SENDER, ""):
            try:
                parse_address(address)
            except AddressError:
                log.info("sender refused", reason="syntax")
                self._metrics.message_refused("mail", str(replies.BAD_SENDER_SYNTAX))
                return str(replies.BAD_SENDER_SYNTAX)
        # Refuse before the body travels when the disk is near full (RFC 1870 SIZE helps).
        size = next((o[5:] for o in mail_options if o.upper().startswith("SIZE=")), "0")
        shortage = self._intake.shortage(int(size) if size.isdigit() else 0)
        if shortage is not None:
            log.warning("sender refused: storage nearly full", shortage=str(shortage))
            self._metrics.message_refused("mail", str(replies.INSUFFICIENT_STORAGE))
            return str(replies.INSUFFICIENT_STORAGE)
        envelope.mail_from = address or NULL_SENDER
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
        """Route the recipient now, from the database, so a wrong address is refused here."""
        if len(envelope.rcpt_tos) >= self._capture.max_recipients:
            self._metrics.message_refused("rcpt", str(replies.TOO_MANY_RECIPIENTS))
            return str(replies.TOO_MANY_RECIPIENTS)
        try:
            decision = await asyncio.to_thread(self._router.route, address)
        except SQLAlchemyError as exc:
            log.exception("recipient lookup failed", error=type(exc).__name__)
            self._metrics.message_refused("rcpt", str(replies.DIRECTORY_UNAVAILABLE))
            return str(replies.DIRECTORY_UNAVAILABLE)
        if isinstance(decision, Refusal):
            log.info("recipient refused", rcpt=address, reply=str(decision.reply))
            self._metrics.message_refused("rcpt", str(decision.reply))
            return str(decision.reply)
        routes = routes_of(envelope)
        if decision not in routes:
            # The same capture address twice (or richard@ and Richard@) is one route: the
            # message is stored once for it.
            routes.append(decision)
        # aiosmtpd's contract: a handle_RCPT that answers must record the recipient itself.
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        # Debug: the accepted recipients are in the one "message accepted" line.
        log.debug("recipient accepted", rcpt=address, kind=str(decision.kind))
        return str(replies.RECIPIENT_OK)

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        """Screen the exact bytes, store them durably, and only then answer 250."""
        raw: bytes | SpooledMessage = envelope.original_content or b""
        refusal = screening.screen(raw, self._capture)
        if refusal is not None:
            log.info("message refused", size=len(raw), reply=str(refusal))
            self._metrics.message_refused("data", str(refusal))
            return str(refusal)
        routes = routes_of(envelope)
        if not routes:  # aiosmtpd refuses DATA without RCPT; this guards a misuse
            return str(replies.LOCAL_ERROR)
        # Every line about this message names its tenant(s); the trace id is bound already.
        mlog = log.bind(tenant_id=sorted({route.tenant_id for route in routes}))
        mail_from = "" if envelope.mail_from == NULL_SENDER else str(envelope.mail_from)
        facts = SessionFacts(
            peer=format_peer(session.peer),
            helo=str(session.host_name or ""),
            mail_from=mail_from,
            rcpt_to=list(dict.fromkeys(envelope.rcpt_tos)),
            tls=describe_tls(session.ssl),
            trace_id=trace_id_of(server),
        )
        try:
            content = raw.file if isinstance(raw, SpooledMessage) else raw
            queue_id = await self._intake.store(facts, list(routes), content)
        except InsufficientStorageError as exc:
            mlog.warning("message not stored", error=str(exc), size=len(raw))
            self._metrics.message_refused("data", str(replies.INSUFFICIENT_STORAGE))
            return str(replies.INSUFFICIENT_STORAGE)
        except IntakeError as exc:
            mlog.warning("message not stored", error=str(exc), size=len(raw))
            self._metrics.message_refused("data", str(replies.STORAGE_FAILED))
            return str(replies.STORAGE_FAILED)
        mlog.info(
            "message accepted",
            queue_id=queue_id,
            size=len(raw),
            routes=len(routes),
            rcpt=facts.rcpt_to,
        )
        self._metrics.message_accepted("capture")
        return f"{replies.QUEUED} {queue_id}"

    async def handle_exception(self, error: Exception) -> str:
        """An unexpected fault is temporary: log the traceback, answer 451 with the trace id.

        aiosmtpd's default answers 500 with the exception's text, which tells a stranger
        about our internals and makes the sender drop mail it should retry.
        """
        trace_id = str(structlog.contextvars.get_contextvars().get("trace_id", ""))
        if isinstance(error, TLSSetupException):
            # A client that gives up mid-handshake is common and not our fault; aiosmtpd
            # closes the connection and sends nothing.
            log.info("TLS handshake failed", error=repr(error.__cause__))
            return str(replies.LOCAL_ERROR)
        log.error("error in SMTP session", exc_info=error)
        reply = replies.LOCAL_ERROR
        if trace_id:
            reply = reply.with_text(f"Temporary local error (trace {trace_id})")
        return str(reply)
