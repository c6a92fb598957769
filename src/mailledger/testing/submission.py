"""Talking to the submission listeners as a mail client does: TLS, AUTH, then the message.

``smtplib`` blocks, so the async helper runs it in a thread while the server under test keeps
answering in the test's event loop. Every reply is recorded and nothing is raised for a
refusal, so a test can assert the exact code of each step.
"""

from __future__ import annotations

import asyncio
import base64
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

from mailledger.testing.smtp import dot_stuff

Reply = tuple[int, str]


@dataclass
class Submission:
    """The replies of one submission dialogue, in order."""

    ehlo_features: dict[str, str] = field(default_factory=dict)
    auth: Reply = (0, "")
    mail: Reply = (0, "")
    rcpt: list[Reply] = field(default_factory=list)
    data: Reply | None = None

    @property
    def accepted(self) -> bool:
        """Whether the message got its 250 after DATA."""
        return self.data is not None and self.data[0] == 250


def _reply(code: int, message: bytes) -> Reply:
    return code, message.decode("utf-8", "replace")


def auth_plain(user: str, password: str, authzid: str = "") -> str:
    """The RFC 4616 initial response for ``AUTH PLAIN``."""
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode("ascii")


def submit(
    port: int,
    *,
    user: str | None,
    password: str = "",
    mail_from: str,
    rcpt_to: Sequence[str],
    data: bytes,
    implicit_tls: bool = False,
    starttls: bool = True,
    mechanism: str = "PLAIN",
    authzid: str = "",
    source_address: str | None = None,
    host: str = "127.0.0.1",
) -> Submission:
    """One submission: TLS (STARTTLS or implicit), AUTH (unless ``user`` is None), the message.

    ``authzid`` asks, with PLAIN, to act as another user (RFC 4616 §2).

    The certificate is not verified: these tests are about the dialogue, not the PKI.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    source = (source_address, 0) if source_address else None
    client: smtplib.SMTP
    if implicit_tls:
        client = smtplib.SMTP_SSL(host, port, context=context, timeout=30, source_address=source)
    else:
        client = smtplib.SMTP(host, port, timeout=30, source_address=source)
    result = Submission()
    try:
        client.ehlo("laptop.test")
        if starttls and not implicit_tls:
            client.starttls(context=context)
            client.ehlo("laptop.test")
        result.ehlo_features = dict(client.esmtp_features)
        if user is not None:
            if mechanism == "PLAIN":
                result.auth = _reply(
                    *client.docmd("AUTH", f"PLAIN {auth_plain(user, password, authzid)}")
                )
            else:
                code, message = client.docmd("AUTH", "LOGIN")
                if code == 334:
                    code, message = client.docmd(base64.b64encode(user.encode()).decode())
                if code == 334:
                    code, message = client.docmd(base64.b64encode(password.encode()).decode())
                result.auth = _reply(code, message)
        result.mail = _reply(*client.docmd("MAIL", f"FROM:<{mail_from}>"))
        if result.mail[0] != 250:
            return result
        for rcpt in rcpt_to:
            result.rcpt.append(_reply(*client.docmd("RCPT", f"TO:<{rcpt}>")))
        if not any(code == 250 for code, _ in result.rcpt):
            return result
        code, message = client.docmd("DATA")
        if code != 354:
            result.data = _reply(code, message)
            return result
        client.send(dot_stuff(data))
        result.data = _reply(*client.getreply())
        return result
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


async def submit_async(port: int, **kwargs: object) -> Submission:
    """``submit`` in a thread, so a server in this event loop can answer meanwhile."""
    return await asyncio.to_thread(submit, port, **kwargs)  # type: ignore[arg-type]
