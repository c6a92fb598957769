"""One delivery attempt over SMTP: the recipients of a row, to an ordered list of targets.

Each address is dialled in turn; one that refuses, times out or answers 4xx before the
transaction is skipped for the next. STARTTLS is used whenever offered, without certificate
checks, as opportunistic TLS permits (RFC 7435 §4); a failed handshake is retried in clear. To
a smarthost (``[relay] smarthost``) TLS is verified and required when ``smarthost_require_tls``,
and we AUTH with its credentials. A connection lost after DATA began is never retried on the
next host: that one may already have the message (RFC 5321 §6.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence

import aiosmtplib
import structlog

from mailledger.config import RelaySettings
from mailledger.mail.replies import Reply, parse_reply
from mailledger.relay.outcomes import (
    Attempt,
    Deferred,
    Delivered,
    Failed,
    NextHost,
    Outcome,
    Target,
)
from mailledger.store.outbox import Claim

log = structlog.get_logger("mailledger.relay")


def _opportunistic_context() -> ssl.SSLContext:
    # RFC 7435 §4: opportunistic TLS encrypts without authenticating; a certificate we can't
    # verify is still better than clear text, so nothing is checked.
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _remote(code: int, message: str, host: str) -> Reply:
    """A remote host's reply; aiosmtplib joins a multiline reply with "\\n", we keep one line."""
    return parse_reply(code, " ".join(message.split()), host)


class DeliveryClient:
    """Speaks SMTP to remote hosts (or the smarthost) for the delivery worker."""

    def __init__(
        self,
        relay: RelaySettings,
        hostname: str,
        *,
        smarthost_tls_context: ssl.SSLContext | None = None,
    ) -> None:
        """``hostname`` is our EHLO name; ``smarthost_tls_context`` replaces the system CAs."""
        self._relay = relay
        self._hostname = hostname
        self._opportunistic = _opportunistic_context()
        self._smarthost_tls = smarthost_tls_context

    async def send(
        self, targets: Sequence[Target], claim: Claim, recipients: Sequence[str], data: bytes
    ) -> Attempt:
        """Offer ``data`` for ``recipients`` to each target in order until one takes the attempt.

        A target that could not begin the transaction is logged and skipped; when every one
        was, each recipient is deferred with what each host said.
        """
        pending = list(recipients)
        skipped: list[str] = []
        for target in targets:
            result = await self._try_target(target, claim, pending, data, tls_allowed=True)
            if isinstance(result, NextHost):
                skipped.append(f"{target}: {result.reason.code} {result.reason.message}")
                log.info(
                    "delivery host skipped",
                    queue_id=claim.queue_id,
                    domain=claim.domain,
                    host=str(target),
                    reason=f"{result.reason.code} {result.reason.message}",
                )
                continue
            return result
        text = "; ".join(skipped) if skipped else "no host to deliver to"
        reason = parse_reply(421, f"4.4.1 no host accepted the connection: {text}"[:900])
        return Attempt(dict.fromkeys(pending, Deferred(None, reason)))

    async def _try_target(
        self, target: Target, claim: Claim, pending: list[str], data: bytes, *, tls_allowed: bool
    ) -> Attempt | NextHost:
        smarthost = bool(self._relay.smarthost)
        require_tls = smarthost and self._relay.smarthost_require_tls
        smtp = aiosmtplib.SMTP(
            hostname=target.address,
            port=target.port,
            local_hostname=self._hostname,
            timeout=self._relay.command_timeout_seconds,
            start_tls=False,
            use_tls=False,
        )
        host = str(target)
        tls = ""
        try:
            try:
                await smtp.connect(timeout=self._relay.connect_timeout_seconds)
            except aiosmtplib.SMTPConnectResponseError as exc:
                return NextHost(_remote(exc.code, exc.message, host))
            except (aiosmtplib.SMTPException, OSError) as exc:
                return NextHost(Reply(421, "4.4.1", f"connection failed: {exc}", host))
            step = await self._hello(smtp, host)
            if step is not None:
                return step
            if tls_allowed and smtp.supports_extension("starttls"):
                context = self._opportunistic
                if require_tls:
                    context = self._smarthost_tls or ssl.create_default_context()
                try:
                    await smtp.starttls(server_hostname=target.name, tls_context=context)
                except aiosmtplib.SMTPResponseException as exc:
                    # STARTTLS refused: the session is still usable in clear (RFC 3207 §4).
                    if require_tls:
                        return NextHost(_remote(exc.code, exc.message, host))
                except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as exc:
                    smtp.close()
                    if require_tls:
                        reason = Reply(421, "4.7.0", f"TLS handshake failed: {exc}", host)
                        return NextHost(reason)
                    log.info("TLS handshake failed; retrying in clear", host=host, error=str(exc))
                    return await self._try_target(target, claim, pending, data, tls_allowed=False)
                else:
                    cipher = smtp.get_transport_info("cipher")
                    tls = f"{cipher[1]} {cipher[0]}" if cipher else "tls"
                    step = await self._hello(smtp, host)
                    if step is not None:
                        return step
            elif require_tls:
                return NextHost(Reply(421, "4.7.0", "smarthost does not offer STARTTLS", host))
            if smarthost and self._relay.smarthost_username:
                step = await self._login(smtp, host)
                if step is not None:
                    return step
            attempt = await self._transaction(smtp, claim, pending, data, host)
            if isinstance(attempt, Attempt):
                attempt.host, attempt.tls = host, tls
            return attempt
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            # Lost before DATA: nothing was delivered, so the next host may have it.
            return NextHost(Reply(421, "4.4.2", f"connection lost: {exc}", host))
        finally:
            task = asyncio.current_task()
            # Say QUIT politely, unless shutdown is cutting this delivery off.
            if smtp.is_connected and not (task is not None and task.cancelling()):
                with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                    await asyncio.wait_for(smtp.quit(), 5)
            smtp.close()

    async def _hello(self, smtp: aiosmtplib.SMTP, host: str) -> NextHost | None:
        try:
            await smtp.ehlo(hostname=self._hostname)
        except aiosmtplib.SMTPHeloError as exc:
            if not smtp.is_connected:
                return NextHost(_remote(exc.code, exc.message, host))
            try:
                await smtp.helo(hostname=self._hostname)
            except aiosmtplib.SMTPHeloError as helo_exc:
                return NextHost(_remote(helo_exc.code, helo_exc.message, host))
        return None

    async def _login(self, smtp: aiosmtplib.SMTP, host: str) -> NextHost | None:
        try:
            await smtp.login(self._relay.smarthost_username, self._relay.smarthost_password)
        except aiosmtplib.SMTPAuthenticationError as exc:
            # A credential problem is the operator's to fix, not the sender's: defer, never
            # bounce. The reply is logged; the password never is.
            log.error("smarthost refused our credentials", host=host, code=exc.code)  # noqa: TRY400
            reason = Reply(451, "4.7.8", f"smarthost authentication failed: {exc.code}", host)
            return NextHost(reason)
        except aiosmtplib.SMTPException as exc:
            return NextHost(Reply(451, "4.7.0", f"smarthost authentication: {exc}", host))
        return None

    async def _transaction(
        self, smtp: aiosmtplib.SMTP, claim: Claim, pending: list[str], data: bytes, host: str
    ) -> Attempt | NextHost:
        outcomes: dict[str, Outcome] = {}
        # RFC 1870: a host that states its limit is told our size, and not sent more.
        options: list[bytes] = []
        if smtp.supports_extension("size"):
            limit_text = smtp.esmtp_extensions.get("size", "").strip()
            limit = int(limit_text) if limit_text.isdigit() else 0
            if limit and claim.size > limit:
                reason = Reply(552, "5.3.4", f"message size {claim.size} exceeds {limit}", host)
                return Attempt(dict.fromkeys(pending, Failed(reason)))
            options.append(f"SIZE={claim.size}".encode("ascii"))
        if smtp.supports_extension("8bitmime") and any(b > 0x7F for b in data):
            options.append(b"BODY=8BITMIME")
        addresses = [claim.mail_from, *pending]
        if not all(a.isascii() for a in addresses):
            if not smtp.supports_extension("smtputf8"):
                reason = Reply(553, "5.6.7", "non-ASCII address and no SMTPUTF8 (RFC 6531)", host)
                return Attempt(dict.fromkeys(pending, Failed(reason)))
            options.append(b"SMTPUTF8")
        mail = await smtp.execute_command(
            b"MAIL", b"FROM:<" + claim.mail_from.encode("utf-8") + b">", *options
        )
        mail_reply = _remote(mail.code, mail.message, host)
        if mail.code >= 500:
            return Attempt(dict.fromkeys(pending, Failed(mail_reply)))
        if mail.code != 250:
            return NextHost(mail_reply)
        accepted: list[str] = []
        for rcpt in pending:
            answer = await smtp.execute_command(b"RCPT", b"TO:<" + rcpt.encode("utf-8") + b">")
            reply = _remote(answer.code, answer.message, host)
            if answer.code in (250, 251):
                accepted.append(rcpt)
            elif answer.code >= 500:
                outcomes[rcpt] = Failed(reply)
            else:
                outcomes[rcpt] = Deferred(None, reply)
        if not accepted:
            with contextlib.suppress(aiosmtplib.SMTPException):
                await smtp.rset()
            return Attempt(outcomes)
        try:
            # aiosmtplib dot-stuffs and would turn a bare CR or LF into CRLF; outbox refused
            # those, so the bytes on the wire are exactly the stored ones.
            done = await smtp.data(data)
        except aiosmtplib.SMTPResponseException as exc:
            reply = _remote(exc.code, exc.message, host)
            outcome: Outcome = Failed(reply) if exc.code >= 500 else Deferred(None, reply)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            # After DATA the host may have the message already; trying the next host now could
            # deliver it twice, so wait for the schedule (RFC 5321 §6.1 accepts the duplicate
            # a retry may cause, never the loss).
            lost = Reply(451, "4.4.2", f"connection lost during DATA: {exc}", host)
            outcome = Deferred(None, lost)
        else:
            outcome = Delivered(_remote(done.code, done.message, host))
        outcomes.update(dict.fromkeys(accepted, outcome))
        return Attempt(outcomes)
