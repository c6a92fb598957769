"""The readable content of an email: plain text, sanitized HTML, attachments.

Inline images that the HTML references by ``cid:`` are part of the body, not attachments
(DESIGN §5). HTML is sanitized with nh3 (Rust's ammonia): scripts, event handlers and remote
tricks are removed before anything is stored for a browser to show.
"""

from __future__ import annotations

import html as html_entities
import re
from dataclasses import dataclass, field
from email.message import Message

import nh3

MAX_FILENAME_CHARS = 255
_CID = re.compile(r"""cid:([^"'\s>)]+)""", re.IGNORECASE)
_SAFE_SCHEMES = {"http", "https", "mailto", "tel", "cid", "data"}


@dataclass(frozen=True, slots=True)
class Part:
    """One file of the email."""

    filename: str
    content_type: str
    payload: bytes = field(repr=False)
    content_id: str
    inline: bool


@dataclass(frozen=True, slots=True)
class Body:
    """What users read: the text, the sanitized HTML, and the files."""

    text: str
    html: str
    parts: tuple[Part, ...]

    @property
    def attachments(self) -> tuple[Part, ...]:
        """The files a user would call attachments (not inline images of the HTML)."""
        return tuple(p for p in self.parts if not p.inline)


def _decode_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:  # an unknown charset name
        return payload.decode("utf-8", "replace")


def _filename(part: Message) -> str:
    try:
        name = part.get_filename() or ""
    except (ValueError, LookupError, UnicodeError):
        name = ""
    name = name.replace("/", "_").replace("\\", "_").replace("\0", "")
    return name.strip()[:MAX_FILENAME_CHARS]


def _is_attachment(part: Message) -> bool:
    disposition = str(part.get("Content-Disposition", "")).split(";", 1)[0].strip().lower()
    return disposition == "attachment" or bool(_filename(part))


def sanitize_html(html: str) -> str:
    """HTML safe to show in the CRM: no scripts, styles that run code, or event handlers."""
    return nh3.clean(html, url_schemes=_SAFE_SCHEMES)


def html_to_text(html: str) -> str:
    """A plain-text rendering of HTML for messages that have no text part."""
    text = nh3.clean(re.sub(r"(?i)<br\s*/?>|</p>|</div>|</tr>", "\n", html), tags=set())
    text = html_entities.unescape(text).replace("\xa0", " ")
    return "\n".join(line.strip() for line in text.splitlines()).strip()


def extract_body(message: Message) -> Body:
    """Choose the text and HTML bodies and collect every other leaf as a part."""
    text = ""
    html = ""
    leaves: list[Message] = []
    for part in message.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if ctype == "message/rfc822" or not _is_attachment(part):
            if ctype == "text/plain" and not text:
                text = _decode_text(part)
                continue
            if ctype == "text/html" and not html:
                html = _decode_text(part)
                continue
        if ctype in ("text/plain", "text/html") and not _is_attachment(part):
            # Further text parts of a multipart/mixed body: keep them readable in the text.
            if ctype == "text/plain":
                text += "\n" + _decode_text(part)
            continue
        leaves.append(part)
    referenced = {cid.strip("<>").lower() for cid in _CID.findall(html)}
    parts = []
    for leaf in leaves:
        payload = leaf.get_payload(decode=True)
        if not isinstance(payload, bytes):
            payload = str(leaf.get_payload()).encode("utf-8", "surrogateescape")
        content_id = str(leaf.get("Content-ID", "")).strip().strip("<>")
        parts.append(
            Part(
                filename=_filename(leaf),
                content_type=leaf.get_content_type(),
                payload=payload,
                content_id=content_id,
                inline=bool(content_id) and content_id.lower() in referenced,
            )
        )
    clean_html = sanitize_html(html) if html else ""
    if not text and html:
        text = html_to_text(html)
    return Body(text=text, html=clean_html, parts=tuple(parts))
