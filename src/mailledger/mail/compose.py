"""Composing a message from its parts: what ``POST /v1/messages`` hands to the relay.

The MIME structure is the usual one (RFC 2046): text/plain, text/html, or both as
multipart/alternative (plain first: the last part is the preferred one, §5.1.4), inside
multipart/mixed when there are attachments. Python's ``email`` package writes the bodies and
the headers that need encoding: RFC 2047 encoded words for non-ASCII names and subjects,
RFC 2231 parameters for non-ASCII file names. Bodies are 7-bit only (quoted-printable or
base64 where needed), so no relay on the way needs 8BITMIME.

Date, Message-ID, In-Reply-To and References are written here by hand: the ``email`` package
folds a long Message-ID in an unstructured header into encoded words, which no reader
recognises as an identifier any more (RFC 5322 §3.6.4 needs them as ``<id>`` tokens).
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Final

from mailledger.mail.addresses import Mailbox

# Bodies in 7 bits; the ``email`` package picks quoted-printable or base64 for the rest.
_POLICY: Final = policy.SMTP.clone(cte_type="7bit")
# RFC 2045 §5.1: type "/" subtype, each a token; multipart and message are built, not taken.
_MEDIA_NAME: Final = r"[a-z0-9][a-z0-9!#$&^_.+-]{0,62}"
_MEDIA_TYPE: Final = re.compile(rf"^({_MEDIA_NAME})/({_MEDIA_NAME})$")
_REFUSED_TYPES: Final = frozenset({"multipart", "message"})
# A message id as References may carry it: printable ASCII, no brackets or space.
_ID: Final = re.compile(r"^[!-;=?-~]{1,900}$")
MAX_SUBJECT_CHARS: Final = 998  # RFC 5322 §2.1.1: one line's limit, before folding
MAX_FILENAME_CHARS: Final = 255
MAX_REFERENCES: Final = 20  # the newest ids of a long thread are the ones readers use
SIGNATURE_DELIMITER: Final = "-- \n"  # RFC 3676 §4.3: dash, dash, space, line end
_CLOSING_BODY: Final = re.compile(r"</body\s*>", re.IGNORECASE)


class ComposeError(ValueError):
    """A part that cannot go into a message; the text names it and says why."""

    def __init__(self, field: str, text: str) -> None:
        super().__init__(text)
        self.field = field


@dataclass(frozen=True, slots=True)
class Attachment:
    """One file to attach, already decoded."""

    filename: str
    content_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Draft:
    """Everything a composed message is made of (Bcc stays in the envelope, never a header)."""

    sender: Mailbox
    to: Sequence[Mailbox]
    cc: Sequence[Mailbox]
    subject: str
    text: str | None
    html: str | None
    date: datetime
    message_id: str  # without brackets
    attachments: Sequence[Attachment] = ()
    in_reply_to: str = ""  # the answered message's id, without brackets
    references: Sequence[str] = ()  # oldest first, without brackets


def new_message_id(domain: str) -> str:
    """A fresh Message-ID (without brackets) in ``domain``.

    The relay's ids are in the From domain, never our hostname: mail with our own ids is what
    capture recognises as a loop (RFC 5322 §3.6.4 asks only that the id be unique).
    """
    return f"{secrets.token_hex(16)}@{domain}"


def thread_ids(message_id: str, in_reply_to: str, references: str) -> tuple[str, list[str]]:
    """In-Reply-To and References of an answer to a message with these ids (RFC 5322 §3.6.4).

    The ids are the answered message's, space-separated without brackets, as the record keeps
    them. References is the answered message's References (or, without one, its single
    In-Reply-To) followed by its Message-ID; ids that are not clean ASCII are left out.
    """
    parent = [i for i in references.split() if _ID.match(i)]
    replied = [i for i in in_reply_to.split() if _ID.match(i)]
    if not parent and len(replied) == 1:
        parent = replied
    if not _ID.match(message_id):
        return "", parent[-MAX_REFERENCES:]
    chain = [i for i in parent if i != message_id] + [message_id]
    return message_id, chain[-MAX_REFERENCES:]


def with_text_signature(text: str, signature: str) -> str:
    """The text with the signature below the conventional ``-- `` line (RFC 3676 §4.3)."""
    if not signature.strip():
        return text
    body = text if not text or text.endswith("\n") else text + "\n"
    return body + SIGNATURE_DELIMITER + signature.strip("\n") + "\n"


def with_html_signature(markup: str, signature_html: str, signature_text: str) -> str:
    """The HTML with the signature in a ``<div>``, before ``</body>`` when there is one.

    Without an HTML signature, the text one is shown, escaped, its lines kept.
    """
    if signature_html.strip():
        inner = signature_html.strip()
    elif signature_text.strip():
        inner = "<br>\n".join(html.escape(line) for line in signature_text.strip("\n").split("\n"))
    else:
        return markup
    block = f'<div class="signature">-- <br>\n{inner}</div>\n'
    closing = list(_CLOSING_BODY.finditer(markup))
    if not closing:
        return markup + ("\n" if markup and not markup.endswith("\n") else "") + block
    at = closing[-1].start()
    return markup[:at] + block + markup[at:]


def compose(draft: Draft) -> bytes:
    """The message as CRLF-terminated bytes, ready for the relay."""
    if draft.text is None and draft.html is None:
        raise ComposeError("text", "give text, html or both")
    message = EmailMessage(policy=_POLICY)
    message["From"] = _address(draft.sender, "from")
    if draft.to:
        message["To"] = [_address(box, "to") for box in draft.to]
    if draft.cc:
        message["Cc"] = [_address(box, "cc") for box in draft.cc]
    message["Subject"] = _subject(draft.subject)
    if draft.text is not None:
        message.set_content(_text(draft.text, "text"))
        if draft.html is not None:
            message.add_alternative(_text(draft.html, "html"), subtype="html")
    else:
        message.set_content(_text(draft.html or "", "html"), subtype="html")
    for n, attachment in enumerate(draft.attachments):
        maintype, subtype = _media_type(attachment.content_type, n)
        message.add_attachment(
            attachment.data,
            maintype=maintype,
            subtype=subtype,
            filename=_filename(attachment.filename, n),
        )
    for part in message.walk():
        if part is not message:
            del part["MIME-Version"]  # the message's own one is enough (RFC 2045 §4)
    body = message.as_bytes(policy=_POLICY)
    return _identity_headers(draft) + body


def _identity_headers(draft: Draft) -> bytes:
    """Date, Message-ID, In-Reply-To and References, each id an unbroken ``<id>`` token."""
    if not _ID.match(draft.message_id):
        raise ComposeError("message_id", f"{draft.message_id!r} is not a message id")
    lines = [
        f"Date: {format_datetime(draft.date)}",
        f"Message-ID: <{draft.message_id}>",
    ]
    if draft.in_reply_to and _ID.match(draft.in_reply_to):
        lines.append(f"In-Reply-To: <{draft.in_reply_to}>")
    references = [i for i in draft.references if _ID.match(i)][-MAX_REFERENCES:]
    if references:
        # Folded between ids (RFC 5322 §2.2.3): one id a line keeps every line short enough.
        lines.append("References: " + "\r\n ".join(f"<{i}>" for i in references))
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _address(box: Mailbox, field_name: str) -> Address:
    if not box.local.isascii():
        raise ComposeError(
            field_name,
            f"{box.address}: a non-ASCII local part needs SMTPUTF8, which API mail does not use",
        )
    if any(c in box.name for c in "\r\n\0"):
        raise ComposeError(field_name, f"{box.address}: the name holds a line break")
    try:
        return Address(display_name=box.name, username=box.local, domain=box.domain)
    except (ValueError, IndexError) as exc:
        raise ComposeError(field_name, f"{box.address}: {exc}") from exc


def _subject(subject: str) -> str:
    if len(subject) > MAX_SUBJECT_CHARS:
        raise ComposeError("subject", f"longer than {MAX_SUBJECT_CHARS} characters")
    if any((ord(c) < 32 and c != "\t") or c == "\x7f" for c in subject):
        raise ComposeError("subject", "holds a line break or another control character")
    return subject


def _text(value: str, field_name: str) -> str:
    if "\0" in value:
        raise ComposeError(field_name, "holds a NUL character")
    # One kind of line end; the policy writes CRLF.
    return value.replace("\r\n", "\n").replace("\r", "\n")


def _media_type(value: str, n: int) -> tuple[str, str]:
    found = _MEDIA_TYPE.match(value.strip().lower())
    if found is None:
        raise ComposeError(
            f"attachments[{n}].content_type", f"{value[:80]!r} is not a media type (type/subtype)"
        )
    maintype, subtype = found.group(1), found.group(2)
    if maintype in _REFUSED_TYPES:
        raise ComposeError(
            f"attachments[{n}].content_type",
            f"{maintype}/* cannot be attached as bytes; send it as application/octet-stream",
        )
    return maintype, subtype


def _filename(value: str, n: int) -> str:
    # Only the last path segment, no control characters: a name, never a path to write to.
    name = "".join(c for c in value.replace("\\", "/").rsplit("/", 1)[-1] if c.isprintable())
    name = name.strip().strip(".")
    if not name:
        raise ComposeError(f"attachments[{n}].name", "a file name is required")
    if len(name) > MAX_FILENAME_CHARS:
        raise ComposeError(f"attachments[{n}].name", f"longer than {MAX_FILENAME_CHARS} characters")
    return name
