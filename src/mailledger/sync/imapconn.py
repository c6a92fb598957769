"""One IMAP connection to a mailbox account: TLS as the account says, then the login.

imapclient (BSD) over the standard library's imaplib speaks the protocol; this module decides
only how to reach the server: implicit TLS (993), STARTTLS (143, refused if the server does
not offer it: a downgrade would send the password in clear), or none (loopback and test
servers only). Certificates are verified against the system's trust store unless the account
allows an invalid one (its owner ticked "allow non-secure certificate" for their own server).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from dataclasses import dataclass

from imapclient import IMAPClient
from imapclient.exceptions import CapabilityError

from mailledger.store.models import MailboxAccount
from mailledger.sync.credentials import Login

SECURITIES = ("tls", "starttls", "none")
# Where imapclient sends imaplib's protocol trace (imapclient.imapclient: IMAPlibLoggerAdapter).
IMAPLIB_LOGGER = "imapclient.imaplib"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where an account's server is and how to reach it (read once from the account row)."""

    host: str
    port: int
    security: str  # tls | starttls | none
    allow_invalid_cert: bool

    @classmethod
    def of(cls, account: MailboxAccount) -> Endpoint:
        """The endpoint of ``account``."""
        return cls(account.host, account.port, account.security, account.allow_invalid_cert)


def tls_context(account: Endpoint, cafile: str | None = None) -> ssl.SSLContext:
    """The client TLS context for ``account``: verifying, unless it allows an invalid cert.

    ``cafile`` adds a trusted certificate (an operator's private CA; tests' own server).
    """
    context = ssl.create_default_context(cafile=cafile)
    if account.allow_invalid_cert:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def connect(
    account: Endpoint,
    credentials: Login,
    *,
    timeout_seconds: float,
    cafile: str | None = None,
) -> IMAPClient:
    """Connect to the account's server as its security setting says, and log in.

    Raises imapclient's errors (``LoginError`` for refused credentials), ``ssl`` errors and
    ``OSError``: ``sync.problems.describe`` turns each into words and a fix.
    """
    security = account.security
    if security not in SECURITIES:
        raise ValueError(f"unknown security {security!r}: tls, starttls or none")
    context = tls_context(account, cafile)
    imap = IMAPClient(
        account.host,
        port=account.port,
        ssl=security == "tls",
        ssl_context=context if security == "tls" else None,
        timeout=timeout_seconds,
    )
    # INTERNALDATEs with their zone, compared with the account's `since` in UTC.
    imap.normalise_times = False
    quiet_trace(imap)
    try:
        _secure_and_log_in(imap, account, credentials, context)
    except BaseException:
        close(imap)
        raise
    return imap


def quiet_trace(imap: IMAPClient) -> None:
    """Stop imaplib formatting a protocol trace nobody reads (unless its logger is at debug).

    imapclient sets imaplib's ``debug`` to 5 and routes the trace to the ``imapclient.imaplib``
    logger, so imaplib builds the ``repr`` of every line and every literal it reads, and of
    the whole answer once more when it hands it over, before the logger drops it: for a
    backfill, most of the CPU of reading the bodies. With that logger at debug level the trace
    stays on, as imapclient sets it.
    """
    if not logging.getLogger(IMAPLIB_LOGGER).isEnabledFor(logging.DEBUG):
        imap._imap.debug = 0  # imapclient offers no setting for it


def _secure_and_log_in(
    imap: IMAPClient, account: Endpoint, credentials: Login, context: ssl.SSLContext
) -> None:
    if account.security == "starttls":
        if b"STARTTLS" not in imap.capabilities():
            raise CapabilityError(f"{account.host} does not offer STARTTLS")
        imap.starttls(context)
    if credentials.bearer is not None:
        imap.oauth2_login(credentials.login, credentials.bearer)
    elif credentials.password is not None:
        imap.login(credentials.login, credentials.password)
    else:
        raise ValueError("credentials need a password or a bearer token")


def close(imap: IMAPClient) -> None:
    """Log out, or at least drop the connection; never raises."""
    try:
        imap.logout()
    except Exception:  # noqa: BLE001 - the connection may already be gone
        with contextlib.suppress(Exception):
            imap.shutdown()


def cipher(imap: IMAPClient) -> str:
    """The TLS cipher of the connection, "" without TLS (kept in the message's trace)."""
    sock = imap.socket()
    described = getattr(sock, "cipher", None)
    found = described() if callable(described) else None
    return f"{found[1]} {found[0]}" if found else ""


def capabilities(imap: IMAPClient) -> frozenset[str]:
    """The server's capabilities as upper-case text."""
    return frozenset(c.decode().upper() for c in imap.capabilities())
