"""What an SMTP session knows, shared by both listeners: envelope routes, peer, TLS, trace id.

Also the one answer to an unexpected fault, so capture and submission say the same thing.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, Envelope, TLSSetupException

from mailledger.logs import get_logger
from mailledger.mail import replies
from mailledger.mail.replies import Reply
from mailledger.store.inbox import Route

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


def temporary_fault(error: Exception) -> Reply:
    """An unexpected fault is temporary: log the traceback, answer 451 with the trace id.

    aiosmtpd's default answers 500 with the exception's text, which tells a stranger about our
    internals and makes the sender drop mail it should retry.
    """
    trace_id = str(structlog.contextvars.get_contextvars().get("trace_id", ""))
    if isinstance(error, TLSSetupException):
        # A client that gives up mid-handshake is common and not our fault; aiosmtpd closes
        # the connection and sends nothing.
        log.info("TLS handshake failed", error=repr(error.__cause__))
        return replies.LOCAL_ERROR
    log.error("error in SMTP session", exc_info=error)
    if trace_id:
        return replies.LOCAL_ERROR.with_text(f"Temporary local error (trace {trace_id})")
    return replies.LOCAL_ERROR
