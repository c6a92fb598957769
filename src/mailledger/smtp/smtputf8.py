"""Which envelope paths need the SMTPUTF8 parameter (RFC 6531), over plain strings.

We offer SMTPUTF8: Gmail and Microsoft 365 send internationalized mail, and a capture address
may have a UTF-8 local part. Without the parameter on MAIL, a path is RFC 5321's, ASCII only
(RFC 6531 §3.4), U-labels in the domain included: the client should have sent A-labels.
"""

from __future__ import annotations

from mailledger.mail import replies
from mailledger.mail.replies import Reply


def is_utf8(text: str) -> bool:
    """Whether the text came from valid UTF-8 (aiosmtpd keeps other bytes as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def path_refusal(address: str, *, smtputf8: bool, sender: bool) -> Reply | None:
    """The refusal for a MAIL (``sender``) or RCPT path, or None when it may go on.

    553 5.6.7 for a non-ASCII path without SMTPUTF8, as Postfix answers (RFC 6531 §3.5 names
    X.6.7; 553 is RFC 5321's "mailbox name not allowed", the fit for a path outside the
    syntax in force); bytes that are not UTF-8 are bad syntax even with it (RFC 6531 §3.3).
    """
    if address.isascii():
        return None
    if not smtputf8:
        return replies.NON_ASCII_SENDER if sender else replies.NON_ASCII_RECIPIENT
    if not is_utf8(address):
        return replies.BAD_SENDER_SYNTAX if sender else replies.BAD_RECIPIENT_SYNTAX
    return None
