"""The one address parser: every decision about an address goes through here (DESIGN §4).

Header values (display names, encoded words, groups) are read by the standard library's
RFC 5322 parser, the one ``email.policy.default`` uses (``addresslist``): maintained with Python,
no dependency of ours. flanker, used before, was unmaintained, imported modules Python 3.13
removed and took about 190 ms to import. The parser is bounded before it sees anything: a value
of at most ``MAX_HEADER_VALUE_CHARS``, comments nested a few levels deep, entries of one line.

``normalize`` turns an address into the form we store and look up. Nothing in mailledger calls
``email.utils.parseaddr``, which disagrees with the modern parser on hostile input.
"""

from __future__ import annotations

import functools
import ipaddress
import unicodedata
from dataclasses import dataclass

import idna

from mailledger.mail.addresslist import read_address_list

# Providers that ignore dots in the local part and treat googlemail.com as gmail.com.
GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})
MAX_ADDRESS_CHARS = 320  # RFC 5321 §4.5.3.1: 64 local + @ + 255 domain
MAX_HEADER_VALUE_CHARS = 16 * 1024  # a parser's input bound for one address header


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One parsed mailbox: what users see (``name``, ``address``) and what we match (``key``)."""

    name: str
    local: str
    domain: str  # lowercase, IDNA (ASCII) form

    @property
    def address(self) -> str:
        """The address as stored and shown: local part as written, ASCII domain."""
        return f"{self.local}@{self.domain}"


@dataclass(frozen=True, slots=True)
class MailboxList:
    """A parsed address header: the mailboxes, and the pieces that did not parse."""

    mailboxes: tuple[Mailbox, ...]
    invalid: tuple[str, ...]


class AddressError(ValueError):
    """An address that cannot be used; the message says why."""


def _ascii_domain(domain: str) -> str:
    domain = domain.strip().rstrip(".").lower()
    if domain.startswith("[") and domain.endswith("]"):
        return _address_literal(domain)
    try:
        if domain.isascii():
            # An A-label must decode (RFC 5890 §2.3.2.1): "xn--zz" is no domain at all.
            for label in domain.split("."):
                if label.startswith("xn--"):
                    idna.decode(label)
            return domain
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise AddressError(f"bad domain {domain!r}: {exc}") from exc


def _address_literal(domain: str) -> str:
    """An address literal kept as written, if it is one (RFC 5321 §4.1.3): IPv4 or IPv6."""
    text = domain[1:-1]
    text = text[5:] if text.startswith("ipv6:") else text
    try:
        ip = ipaddress.ip_address(text)
    except ValueError as exc:
        raise AddressError(f"bad address literal {domain!r}") from exc
    if (ip.version == 6) != domain.startswith("[ipv6:"):
        raise AddressError(f"bad address literal {domain!r}")
    return domain


def parse_mailbox_list(value: str) -> MailboxList:
    """Parse an address header value (From, To, Cc, Reply-To) with the one parser.

    The same senders, recipients and envelope paths come back all day: short values are
    remembered (the result is immutable).
    """
    if len(value) <= CACHED_VALUE_CHARS:
        return _parse_mailbox_list_cached(value)
    return _parse_mailbox_list(value)


CACHED_VALUE_CHARS = 512  # longer values are rare and would make the cache large
CACHE_ENTRIES = 8192  # at most about 4 MB of remembered values


@functools.lru_cache(maxsize=CACHE_ENTRIES)
def _parse_mailbox_list_cached(value: str) -> MailboxList:
    return _parse_mailbox_list(value)


def _parse_mailbox_list(value: str) -> MailboxList:
    if len(value) > MAX_HEADER_VALUE_CHARS:
        return MailboxList((), (value[:80] + "…",))
    if not value.strip():
        return MailboxList((), ())
    written = read_address_list(value)
    if written is None:
        return MailboxList((), (value,))
    boxes = []
    for box in written:
        try:
            domain = _ascii_domain(box.domain)
        except AddressError:
            return MailboxList((), (value,))
        boxes.append(Mailbox(name=box.name, local=box.local, domain=domain))
    return MailboxList(tuple(boxes), ())


def parse_address(value: str) -> Mailbox:
    """Parse exactly one bare address (an SMTP path or a CLI argument), or raise."""
    text = value.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if not text or len(text) > MAX_ADDRESS_CHARS or "@" not in text:
        raise AddressError(f"{value!r} is not an email address")
    if any(c in text for c in ",;<>\r\n\0") or any(c.isspace() for c in text):
        raise AddressError(f"{value!r} is not a single email address")
    result = parse_mailbox_list(text)
    if len(result.mailboxes) != 1 or result.invalid:
        raise AddressError(f"{value!r} is not an email address")
    return result.mailboxes[0]


def fold_local(local: str) -> str:
    """A local part as we compare it: Unicode NFC, then lowercase.

    RFC 6532 §3.1 asks for NFC: "jörg" typed as o + U+0308 is the same name as with U+00F6.
    Lowercasing is our choice for capture addresses and matching (providers treat local parts
    case-insensitively in practice; RFC 5321 §2.4 lets the receiving host decide).
    """
    return unicodedata.normalize("NFC", local).lower()


def normalize(address: str | Mailbox, *, strip_plus: bool = True) -> str:
    """The key we store and look up: lowercase, ASCII domain, ``+tag`` and Gmail dots removed.

    ``strip_plus`` follows the tenant's setting; Gmail's dots are ignored only for Gmail's
    own domains, where the provider itself ignores them.
    """
    box = address if isinstance(address, Mailbox) else parse_address(address)
    local = fold_local(box.local)
    domain = box.domain
    if strip_plus and "+" in local[1:]:
        local = local[: local.index("+", 1)]
    if domain in GMAIL_DOMAINS:
        local = local.replace(".", "")
        domain = "gmail.com"
    return f"{local}@{domain}"


def domain_of(address: str) -> str:
    """The ASCII domain of a normalized address."""
    return address.rpartition("@")[2]


LOG_LOCAL_PART = "log"
# Role addresses every mail domain must accept (RFC 5321 §4.5.1, RFC 2142 §4-5).
OPERATOR_LOCAL_PARTS = frozenset({"postmaster", "abuse"})


def capture_address(username: str, capture_domain: str) -> str:
    """The address a staff member forwards to."""
    return f"{fold_local(username)}@{capture_domain.lower()}"
