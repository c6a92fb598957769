"""One bounded parse of a stored message into the facts every later step decides on.

The raw bytes are measured first (``mimebounds``), then parsed once with the ``compat32``
policy (several times cheaper than ``policy.default`` and not recursive in header folding);
addresses go through ``mail.addresses`` only, so DMARC, matching and display agree.

A header RFC 5322 §3.6 allows once, found more than once, makes the whole header section
ambiguous: a DKIM signature covers only the last instance (RFC 6376 §5.4.2) while mail
readers tend to show the first, so no instance is believed and the message has no sender.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.errors import HeaderParseError
from email.feedparser import BytesFeedParser
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from typing import BinaryIO

from mailledger.mail import mimebounds
from mailledger.mail.addresses import Mailbox, MailboxList, parse_mailbox_list
from mailledger.mail.content import Body, extract_body
from mailledger.mail.headerscan import body_start

_MSGID = re.compile(r"<([^<>\s]{1,900})>")
MAX_SUBJECT_CHARS = 998  # RFC 5322 §2.1.1 line limit; longer is folded junk

# RFC 5322 §3.6: the fields a message carries at most once, in the order its table lists them.
SINGLE_INSTANCE_HEADERS = (
    "Date",
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Bcc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Subject",
)


class ParseFailure(Exception):  # noqa: N818 - carries a quarantine reason
    """The message cannot be parsed safely; the text is the quarantine reason."""


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """The facts of one message that processing steps use."""

    from_fields: int
    from_list: MailboxList
    to: tuple[Mailbox, ...]
    cc: tuple[Mailbox, ...]
    subject: str
    date: datetime | None
    message_id: str
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    # Each SINGLE_INSTANCE_HEADERS name found more than once, with its count, in RFC order.
    repeated: tuple[tuple[str, int], ...]
    # Lowercased header name → raw values, for the auto-reply and bulk rules.
    headers: dict[str, list[str]] = field(repr=False)
    body: Body = field(repr=False)

    @property
    def ambiguity(self) -> str:
        """The once-only headers found more than once ("2 To headers, 2 Subject headers").

        Empty when every header RFC 5322 §3.6 allows once appears at most once.
        """
        return ", ".join(f"{count} {name} headers" for name, count in self.repeated)

    @property
    def sender(self) -> Mailbox | None:
        """The single From mailbox, or None when From is missing or ambiguous.

        A repeated once-only header (``repeated``) leaves no sender either: the instance a
        signature covers (the last, RFC 6376 §5.4.2) may not be the one a reader sees, so the
        parties, thread, dedupe key, subject, date and DMARC alignment of such a message are
        never decided; it is quarantined as ambiguous, like a message with two From headers.
        """
        if self.repeated:
            return None
        boxes = self.from_list.mailboxes
        if self.from_fields == 1 and len(boxes) == 1 and not self.from_list.invalid:
            return boxes[0]
        return None


def header_text(value: str) -> str:
    """Decode a header value: 8-bit UTF-8 (RFC 6532) and RFC 2047 encoded words."""
    value = header_text_for_addresses(value)
    if "=?" in value:
        with contextlib.suppress(HeaderParseError, LookupError, UnicodeError, ValueError):
            value = str(make_header(decode_header(value)))
    return " ".join(value.split())


def _raw_values(message: Message, name: str) -> list[str]:
    # raw_items keeps 8-bit bytes as surrogates; get_all would turn them into U+FFFD.
    wanted = name.lower()
    return [str(v) for k, v in message.raw_items() if k.lower() == wanted]


def _repeated(headers: dict[str, list[str]]) -> tuple[tuple[str, int], ...]:
    """Each once-only header (RFC 5322 §3.6) with more than one instance, and its count.

    Names are matched without regard to case, as a DKIM signature's h= list is (RFC 6376 §3.5).
    """
    counts = ((name, len(headers.get(name.lower(), ()))) for name in SINGLE_INSTANCE_HEADERS)
    return tuple((name, count) for name, count in counts if count > 1)


def _all_headers(message: Message) -> dict[str, list[str]]:
    """Lowercased name → raw values in order: ``_raw_values`` of every name, in one pass."""
    headers: dict[str, list[str]] = {}
    for name, value in message.raw_items():
        headers.setdefault(name.lower(), []).append(str(value))
    return headers


def _first(headers: dict[str, list[str]], name: str) -> str:
    values = headers.get(name.lower(), [])
    return values[0] if values else ""


def _addresses(headers: dict[str, list[str]], name: str) -> tuple[Mailbox, ...]:
    found: list[Mailbox] = []
    for value in headers.get(name.lower(), []):
        found.extend(parse_mailbox_list(header_text_for_addresses(value)).mailboxes)
    return tuple(found)


# The bytes 0x80-0xFF of an 8-bit header, as the parser's surrogateescape decoding left them.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def header_text_for_addresses(value: str) -> str:
    """Undo 8-bit transport decoding but keep encoded words for the address parser."""
    if _ESCAPED_BYTE.search(value):
        value = value.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    return " ".join(value.split())


def message_ids(value: str) -> tuple[str, ...]:
    """The ``<id>`` tokens of a Message-ID, In-Reply-To or References value, without brackets."""
    return tuple(dict.fromkeys(_MSGID.findall(value)))


def _date(headers: dict[str, list[str]], received_at: datetime) -> datetime | None:
    value = _first(headers, "Date")
    if not value:
        return None
    try:
        when = parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    # A Date far in the future is a broken clock or a forgery; don't let it reorder a timeline.
    if when > received_at + timedelta(days=1):
        return None
    return when.astimezone(UTC)


FEED_BYTES = 64 * 1024


def _parse_bytes(raw: bytes | BinaryIO) -> Message:
    """``BytesParser.parsebytes``, fed in slices: the same message, far less memory.

    ``parsebytes`` decodes the whole message into one string and wraps it in a ``StringIO``
    before feeding the same parser 8 KB at a time: a 10 MB message peaked at about 78 MB.
    ASCII with surrogateescape decodes byte by byte, so slices decode to the same text.
    """
    if isinstance(raw, bytes):
        single = _single_part(raw)
        if single is not None:
            return single
    parser = BytesFeedParser(policy=policy.compat32)
    stream = io.BytesIO(raw) if isinstance(raw, bytes) else raw  # BytesIO shares the bytes
    while piece := stream.read(FEED_BYTES):
        parser.feed(piece)
    return parser.close()


def _single_part(raw: bytes) -> Message | None:
    """The same parse of a message whose body is not MIME parts, by the header section alone.

    For such a message the parser makes the whole rest of the input its payload, but it gets
    there line by line: on a 10 KB text body, most of the parse. So the header section,
    through its blank line, goes through the parser; when the parser took all of it as
    headers and the type is neither ``multipart/*`` nor ``message/*``, the rest is set as
    the payload, decoded as the parser decodes it. Anything else (no blank line, a line the
    parser did not take as a header, parts) returns None: the caller parses it all.
    """
    end = body_start(raw)
    if end < 0:
        return None
    parser = BytesFeedParser(policy=policy.compat32)
    parser.feed(raw[:end])
    message = parser.close()
    if message.get_content_maintype() in ("multipart", "message") or message.get_payload():
        return None
    message.set_payload(str(memoryview(raw)[end:], "ascii", "surrogateescape"))
    return message


def parse_message(
    raw: bytes | BinaryIO, *, received_at: datetime, max_depth: int, max_parts: int
) -> ParsedMessage:
    """Parse within the limits, or raise ParseFailure with the quarantine reason.

    ``raw`` may be a seekable file, read from its start: a large message is then never whole
    in memory beside the parser's own copy of its text.
    """
    reason = mimebounds.check(raw, max_depth=max_depth, max_parts=max_parts)
    if reason is not None:
        raise ParseFailure(reason)
    if not isinstance(raw, bytes):
        raw.seek(0)
    message = _parse_bytes(raw)
    headers = _all_headers(message)
    from_values = headers.get("from", [])
    from_list = MailboxList((), ())
    if from_values:
        merged = [parse_mailbox_list(header_text_for_addresses(v)) for v in from_values]
        from_list = MailboxList(
            tuple(box for item in merged for box in item.mailboxes),
            tuple(bad for item in merged for bad in item.invalid),
        )
    message_id_values = message_ids(_first(headers, "Message-ID"))
    return ParsedMessage(
        from_fields=len(from_values),
        from_list=from_list,
        to=_addresses(headers, "To"),
        cc=_addresses(headers, "Cc"),
        subject=header_text(_first(headers, "Subject"))[:MAX_SUBJECT_CHARS],
        date=_date(headers, received_at),
        message_id=message_id_values[0] if message_id_values else "",
        in_reply_to=message_ids(_first(headers, "In-Reply-To")),
        references=message_ids(" ".join(headers.get("references", []))),
        repeated=_repeated(headers),
        headers=headers,
        body=extract_body(message),
    )


def sender_domain(raw: bytes) -> str | None:
    """The From domain from the header section alone, or None when From is not one mailbox.

    The same parser and the same From rule as ``parse_message`` (one From header holding one
    mailbox), for work that needs only the From domain before the full parse (the relay's DMARC
    lookups ahead of signing); the other once-only headers are not looked at here.
    """
    headers = BytesParser(policy=policy.compat32).parsebytes(raw, headersonly=True)
    values = _raw_values(headers, "From")
    if len(values) != 1:
        return None
    parsed = parse_mailbox_list(header_text_for_addresses(values[0]))
    if len(parsed.mailboxes) != 1 or parsed.invalid:
        return None
    return parsed.mailboxes[0].domain
