"""The readable content of an email: plain text, sanitized HTML, attachments.

Inline images that the HTML references by ``cid:`` are part of the body, not attachments
(DESIGN §5). HTML is sanitized with nh3 (Rust's ammonia): scripts, event handlers and remote
tricks are removed before anything is stored for a browser to show.
"""

from __future__ import annotations

import binascii
import html as html_entities
import re
from dataclasses import dataclass, field
from email.message import Message

import nh3

MAX_FILENAME_CHARS = 255
_CID = re.compile(r"""cid:([^"'\s>)]+)""", re.IGNORECASE)
_SAFE_SCHEMES = {"http", "https", "mailto", "tel", "cid", "data"}
# Base64 payloads longer than this are decoded a slice at a time (``_base64_pieces``).
SLICE_CHARS = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Part:
    """One file of the email; its decoded bytes in pieces, to store one after another."""

    filename: str
    content_type: str
    pieces: tuple[bytes, ...] = field(repr=False)
    content_id: str
    inline: bool

    @property
    def size(self) -> int:
        """The decoded size in bytes."""
        return sum(map(len, self.pieces))


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


def _base64_pieces(payload: str) -> tuple[bytes, ...] | None:
    """``get_payload(decode=True)`` of a base64 part, a slice at a time; None: decode it whole.

    The email package joins the payload's lines into one more copy and decodes that: for a
    10 MB attachment about 35 MB at once. Base64 decodes four characters at a time, so slices
    cut at a multiple of four decode to the same bytes. This takes only the package's strict
    path (alphabet only, padding at the very end, with the padding it would add); anything
    its lenient paths would have to repair gets None, and the caller decodes it as before.
    """
    pieces: list[bytes] = []
    carry = b""
    for start in range(0, len(payload), SLICE_CHARS):
        try:
            encoded = payload[start : start + SLICE_CHARS].encode("ascii", "surrogateescape")
        except UnicodeEncodeError:
            return None
        chunk = carry + encoded.translate(None, b"\r\n")
        if start + SLICE_CHARS < len(payload):
            cut = len(chunk) - len(chunk) % 4
            chunk, carry = chunk[:cut], chunk[cut:]
            if b"=" in chunk:
                return None  # padding before the end: the strict path refuses it
        else:
            chunk += b"==="[: 4 - len(chunk) % 4] if len(chunk) % 4 else b""
        try:
            pieces.append(binascii.a2b_base64(chunk, strict_mode=True))
        except binascii.Error:
            return None
    return tuple(pieces)


def _decoded(part: Message) -> tuple[bytes, ...]:
    """A leaf's decoded bytes, in pieces."""
    payload = part.get_payload()
    cte = str(part.get("content-transfer-encoding", "")).lower()
    if cte == "base64" and isinstance(payload, str) and len(payload) > SLICE_CHARS:
        pieces = _base64_pieces(payload)
        if pieces is not None:
            return pieces
    decoded = part.get_payload(decode=True)
    if not isinstance(decoded, bytes):
        decoded = str(payload).encode("utf-8", "surrogateescape")
    return (decoded,)


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


def sanitize_html(html: str, *, remote_images: bool = True) -> str:
    """HTML safe to show in the CRM: no scripts, styles that run code, or event handlers.

    ``remote_images=False`` (what the pages show) also drops the source of every image not
    embedded in the message (``data:``): showing a message then fetches nothing, so no
    tracking pixel learns that it was read.
    """
    if remote_images:
        return nh3.clean(html, url_schemes=_SAFE_SCHEMES)
    return nh3.clean(html, url_schemes=_SAFE_SCHEMES, attribute_filter=_embedded_images)


def _embedded_images(element: str, attribute: str, value: str) -> str | None:
    if element == "img" and attribute in ("src", "srcset"):
        return value if value.strip().lower().startswith("data:") else None
    return value


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
        content_id = str(leaf.get("Content-ID", "")).strip().strip("<>")
        parts.append(
            Part(
                filename=_filename(leaf),
                content_type=leaf.get_content_type(),
                pieces=_decoded(leaf),
                content_id=content_id,
                inline=bool(content_id) and content_id.lower() in referenced,
            )
        )
    clean_html = sanitize_html(html) if html else ""
    if not text and html:
        text = html_to_text(html)
    return Body(text=text, html=clean_html, parts=tuple(parts))
