"""Screening: set aside what is not client correspondence before anyone is matched.

Mail for the operator's role addresses, mail claiming to come from a capture address (a loop
or a forgery), and robots (auto-replies, bulk, bounces, DESIGN §5) never become activities.
"""

from __future__ import annotations

from mailledger.capture.pipeline.context import Context
from mailledger.capture.pipeline.decisions import CONTINUE, Decision, Quarantine
from mailledger.mail.automated import automated_reason
from mailledger.store.models import RouteKind


class Screen:
    """Role addresses are the operator's; a capture address never writes mail."""

    name = "screen"

    def run(self, context: Context) -> Decision:
        """Quarantine operator mail and mail From a capture address."""
        route, sender = context.route, context.mail.sender
        if route.kind is RouteKind.OPERATOR:
            return Quarantine(f"operator: mail for {route.rcpt}, kept for the operator to read")
        if sender.domain == context.tenant.capture_domain:
            # Nobody writes from a capture address: a loop, or a forgery.
            return Quarantine(f"loop: From {sender.address} is a capture address")
        return CONTINUE


class Automated:
    """Auto-replies, bulk, bounces and our own mail coming back are not correspondence."""

    name = "automated"

    def run(self, context: Context) -> Decision:
        """Quarantine automated mail, unless the operator forced it through."""
        mail = context.mail
        if not mail.force:
            reason = automated_reason(
                mail.parsed.headers,
                _envelope_sender(context),
                mail.parsed.message_id,
                mail.settings.service.hostname,
            )
            if reason is not None:
                return Quarantine(reason)
        mail.trace("automated", "person", "no auto-reply, bulk, bounce or loop markers")
        return CONTINUE


def _envelope_sender(context: Context) -> str:
    """The return path the automated-mail rules look at.

    Mail fetched by sync has no SMTP envelope of ours: the receiving server's Return-Path
    says what it was (``<>`` for a bounce). Mail in a Sent folder, or saved by a client, has
    no Return-Path at all; that is not a null return path, so the From stands in for it.
    """
    mail = context.mail
    fetched = context.route.kind is RouteKind.SYNC
    if fetched and not mail.message.mail_from and "return-path" not in mail.parsed.headers:
        return mail.sender.address
    return mail.message.mail_from
