"""Who may send as whom through the relay (DESIGN §4, relay rule): pure functions.

Every tenant's SPF record includes our relay, so receivers believe anything we send for any
tenant's domain. These checks are all that stops one tenant, or a stolen login, from sending as
another: an authenticated staff member may use only their own, verified addresses, in the
envelope (MAIL FROM, never the null sender) and in exactly one From header holding exactly one
mailbox. Addresses are compared after the one normalization (``routing.addresses``), the
same one that decides whose mail a capture is.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailledger.mail.addresses import AddressError, Mailbox, normalize, parse_address
from mailledger.mail.parsing import ParsedMessage
from mailledger.mail.replies import Reply
from mailledger.relay import submission_replies as replies

MAX_ECHO_CHARS = 100  # how much of a refused address the reply repeats


@dataclass(frozen=True, slots=True)
class Login:
    """An authenticated staff member and the addresses they may send as."""

    staff_id: int
    tenant_id: int
    username: str  # what they logged in with: their capture address
    # Normalized (``routing.addresses.normalize``) and verified own addresses only.
    own_addresses: frozenset[str]
    strip_plus: bool = True  # the tenant's +tag setting, as for capture
    # The tenant's log@ capture address: a BCC to it is captured, never relayed.
    log_address: str = ""


def _echo(value: str) -> str:
    text = "".join(c if c.isprintable() else "?" for c in value)
    return text if len(text) <= MAX_ECHO_CHARS else text[: MAX_ECHO_CHARS - 1] + "…"


def _not_yours(what: str, address: str, login: Login) -> Reply:
    return replies.NOT_YOUR_ADDRESS.with_text(
        f"{what} {_echo(address)} is not an address of {login.username}"
    )


def owns(login: Login, mailbox: Mailbox) -> bool:
    """Whether a parsed mailbox is one of the login's own addresses."""
    try:
        key = normalize(mailbox, strip_plus=login.strip_plus)
    except AddressError:
        return False
    return key in login.own_addresses


def check_envelope_sender(login: Login, mail_from: str) -> Reply | None:
    """The refusal for a MAIL FROM the login may not use, or None.

    The null reverse path is for bounces (RFC 5321 §4.5.5), which staff never submit; allowing
    it would let anyone send mail no SPF or DMARC check can tie to a tenant.
    """
    if mail_from in ("", "<>"):
        return replies.NULL_SENDER
    try:
        mailbox = parse_address(mail_from)
    except AddressError:
        return _not_yours("MAIL FROM", mail_from, login)
    if not owns(login, mailbox):
        return _not_yours("MAIL FROM", mail_from, login)
    return None


def check_from_header(login: Login, parsed: ParsedMessage) -> Reply | None:
    """The refusal for a From the login may not use, or None.

    Exactly one From header with exactly one mailbox (RFC 5322 §3.6.2 allows several
    mailboxes with a Sender; DMARC and users see only one, so we allow only one), owned by
    the login.
    """
    if parsed.from_fields == 0:
        return replies.NOT_YOUR_ADDRESS.with_text("Message has no From header")
    if parsed.from_fields > 1:
        return replies.NOT_YOUR_ADDRESS.with_text(
            f"Message has {parsed.from_fields} From headers; exactly one is allowed"
        )
    if parsed.repeated:
        # Capture quarantines such mail as ambiguous; the relay must not send it on either.
        return replies.REPEATED_HEADER.with_text(
            f"Message has {parsed.ambiguity}; each is allowed once (RFC 5322 §3.6)"
        )
    boxes, invalid = parsed.from_list.mailboxes, parsed.from_list.invalid
    if invalid:
        return replies.NOT_YOUR_ADDRESS.with_text(f"From {_echo(invalid[0])} cannot be parsed")
    if len(boxes) != 1:
        return replies.NOT_YOUR_ADDRESS.with_text(
            f"From holds {len(boxes)} mailboxes; exactly one is allowed"
        )
    if not owns(login, boxes[0]):
        return _not_yours("From", boxes[0].address, login)
    return None
