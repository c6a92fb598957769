"""The one seam between aiosmtpd and mailledger: the capture handler (STYLE: one handler object).

aiosmtpd calls ``handle_EHLO/HELO/MAIL/RCPT/DATA`` here. The handler holds no business rules:
it asks ``routing`` who a recipient is, ``screening`` whether the bytes are safe to keep, and
``intake`` to keep them, and turns each answer into a reply from ``replies``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy.exc import SQLAlchemyError

from mailledger.config import CaptureSettings
from mailledger.logs import get_logger
from mailledger.mail import replies
from mailledger.mail.addresses import AddressError, parse_address
from mailledger.mail.headerscan import message_id_in_head
from mailledger.mail.replies import Reply
from mailledger.metrics import Metrics
from mailledger.routing.routes import RecipientRouter, Refusal
from mailledger.smtp import screening
from mailledger.smtp.session import (
    NULL_SENDER,
    describe_tls,
    format_peer,
    routes_of,
    temporary_fault,
    trace_id_of,
)
from mailledger.smtp.spool import SpooledMessage
from mailledger.store.inbox import (
    InsufficientStorageError,
    Intake,
    IntakeError,
    SessionFacts,
)

log = get_logger(__name__)
_stdlib_log = logging.getLogger(__name__)  # the level check, without building a logger


class AcceptCounter(Protocol):
    """Where the handler counts its answers: ``Metrics``, or a listener process's relay of
    its counts to the server's ``Metrics`` (``service.listeners``)."""

    def message_accepted(self, listener: str = "capture") -> None:
        """A message was stored and answered 250."""

    def message_refused(self, stage: str, reply: Reply) -> None:
        """A command was refused with ``reply``."""


class CaptureHandler:
    """Answers one capture session's commands from routing, screening and intake."""

    def __init__(
        self,
        router: RecipientRouter,
        intake: Intake,
        capture: CaptureSettings,
        metrics: AcceptCounter | None = None,
    ) -> None:
        self._router = router
        self._intake = intake
        self._capture = capture
        self._metrics: AcceptCounter = metrics or Metrics()

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
                self._metrics.message_refused("mail", replies.BAD_SENDER_SYNTAX)
                return str(replies.BAD_SENDER_SYNTAX)
        # Refuse before the body travels when the disk is near full (RFC 1870 SIZE helps).
        size = next((o[5:] for o in mail_options if o.upper().startswith("SIZE=")), "0")
        shortage = self._intake.shortage(int(size) if size.isdigit() else 0)
        if shortage is not None:
            log.warning("sender refused: storage nearly full", shortage=str(shortage))
            self._metrics.message_refused("mail", replies.INSUFFICIENT_STORAGE)
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
            self._metrics.message_refused("rcpt", replies.TOO_MANY_RECIPIENTS)
            return str(replies.TOO_MANY_RECIPIENTS)
        try:
            decision = await asyncio.to_thread(self._router.route, address)
        except SQLAlchemyError as exc:
            log.exception("recipient lookup failed", error=type(exc).__name__)
            self._metrics.message_refused("rcpt", replies.DIRECTORY_UNAVAILABLE)
            return str(replies.DIRECTORY_UNAVAILABLE)
        if isinstance(decision, Refusal):
            log.info("recipient refused", rcpt=address, reply=str(decision.reply))
            self._metrics.message_refused("rcpt", decision.reply)
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
        if _stdlib_log.isEnabledFor(logging.DEBUG):
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
            self._metrics.message_refused("data", refusal)
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
            limit = self._capture.max_header_bytes + 4  # screening passed: the head fits
            head = raw.first_bytes(limit) if isinstance(raw, SpooledMessage) else raw[:limit]
            queue_id = await self._intake.store(
                facts, list(routes), content, message_id=message_id_in_head(head, limit)
            )
        except InsufficientStorageError as exc:
            mlog.warning("message not stored", error=str(exc), size=len(raw))
            self._metrics.message_refused("data", replies.INSUFFICIENT_STORAGE)
            return str(replies.INSUFFICIENT_STORAGE)
        except IntakeError as exc:
            mlog.warning("message not stored", error=str(exc), size=len(raw))
            self._metrics.message_refused("data", replies.STORAGE_FAILED)
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
        """An unexpected fault is temporary (``smtp.session.temporary_fault``)."""
        return str(temporary_fault(error))
