"""Address lists read by the standard library's RFC 5322 parser, strictly and within bounds.

The parser is ``email._header_value_parser.get_address_list``, the one ``email.policy.default``
reads address headers with: maintained with Python, and no dependency of ours. Its tree is read
strictly (``_mailbox``): a list reads whole or not at all, and only a clean addr-spec counts.

It is not built for hostile input, so nothing reaches it unbounded. It recurses once per nested
comment, so comments may nest ``MAX_COMMENT_DEPTH`` deep at most. It copies what is left of its
input at every token, so one 16 KB value could cost it seconds: the value is cut at the commas
between entries (``_entries``) and each entry, at most ``MAX_ENTRY_CHARS`` long, parsed alone.
(The length of the whole value is bounded by ``addresses.MAX_HEADER_VALUE_CHARS``.)
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from email import _header_value_parser as rfc5322
from email import errors
from typing import NamedTuple

# Real mail nests comments once at most; the parser recurses once per level.
MAX_COMMENT_DEPTH = 8
# One entry of a list, a display name and its address: RFC 5322 §2.1.1's longest line.
MAX_ENTRY_CHARS = 998

# RFC 5322 §3.2.3 atext (with RFC 6532 §3.2's UTF-8): all but space, controls and specials.
# A local part of dot-separated atext needs no quotes.
_ATEXT = r'[^\x00-\x20\x7f()<>\[\]:;@\\,."]+'
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_LEXEME = re.compile(r'[\\"(),]|=\?')
_HEX = frozenset(string.hexdigits)
_SPACE_TOKENS = frozenset({"cfws", "comment", "fws"})
_Token = rfc5322.TokenList | rfc5322.Terminal


class WrittenMailbox(NamedTuple):
    """A mailbox as the header wrote it: the decoded display name, local part and domain."""

    name: str
    local: str  # quoted only where it must be (RFC 5322 §3.4.1)
    domain: str  # as written: not yet lowercased or IDNA-encoded


def read_address_list(value: str) -> list[WrittenMailbox] | None:
    """The mailboxes of an address header value, or None when any part of it is unreadable.

    A list with one unreadable entry is not read in part: a From we decide on must read whole.
    """
    if _nested_too_deep(value):
        return None
    boxes: list[WrittenMailbox] = []
    for entry in _entries(value):
        read = _read_entry(entry)
        if read is None:
            return None
        boxes.extend(read)
    return boxes


def _read_entry(entry: str) -> list[WrittenMailbox] | None:
    if not entry.strip():
        return []  # an empty entry: obsolete syntax, harmless (RFC 5322 §4.4)
    if len(entry) > MAX_ENTRY_CHARS:
        return None
    try:
        tree, rest = rfc5322.get_address_list(entry)
    except Exception:  # noqa: BLE001 - it raises IndexError on "a@"; unreadable is the verdict
        return None
    boxes = [_mailbox(address[0]) for address in tree.addresses]
    if rest or None in boxes:
        return None
    return [box for box in boxes if box is not None]


def _nested_too_deep(value: str) -> bool:
    """Whether comments nest deeper than ``MAX_COMMENT_DEPTH``, never missing what the parser finds.

    Outside a comment every "(" opens one, even where the parser may see a quoted string, so no
    level can hide from this count; inside, it reads as the parser does (RFC 5322 §3.2.2: a
    backslash quotes the next character).
    """
    if value.count("(") <= MAX_COMMENT_DEPTH:
        return False
    depth = 0
    chars = iter(value)
    for char in chars:
        if char == "(":
            depth += 1
            if depth > MAX_COMMENT_DEPTH:
                return True
        elif depth and char == ")":
            depth -= 1
        elif depth and char == "\\":
            next(chars, None)
    return False


def _entries(value: str) -> list[str]:
    """The value cut at the commas between its entries (RFC 5322 §3.4).

    A comma cuts only outside quoted strings, comments and encoded words, found as the parser
    finds them (an encoded word it then fails to decode is read as text: the cut may miss a
    comma there, which is harmless, or fall inside a comment or quoted string begun in it).
    Such a cut leaves non-empty text on both sides: the first piece does not parse, and the
    value is refused, or the value holds more mailboxes than the parser would say, which a
    From we decide on never may.
    """
    if "," not in value:
        return [value]
    entries: list[str] = []
    start = pos = depth = 0
    quoted = False
    while (found := _LEXEME.search(value, pos)) is not None:
        lexeme, pos = found.group(), found.end()
        if lexeme == "\\":
            if quoted or depth:
                pos += 1  # a quoted pair: the next character is text
        elif lexeme == "=?":
            if not depth:  # the parser looks for encoded words in words and quoted strings
                pos = _encoded_word_end(value, found.start())
        elif depth:
            depth += {"(": 1, ")": -1}.get(lexeme, 0)
        elif quoted:
            quoted = lexeme != '"'
        elif lexeme == '"':
            quoted = True
        elif lexeme == "(":
            depth = 1
        elif lexeme == ",":
            entries.append(value[start : found.start()])
            start = pos
    entries.append(value[start:])
    return entries


def _encoded_word_end(value: str, start: int) -> int:
    """Where the parser's ``get_encoded_word`` ends a word that starts at ``start``.

    At the first "?=", or the next one when two hex digits follow it (an "=XX" escape, not
    the end); at the end of the value when there is no next one. No "?=" at all: not a word.
    """
    end = value.find("?=", start + 2)
    if end < 0:
        return start + 2
    after = value[end + 2 : end + 4]
    if len(after) == 2 and set(after) <= _HEX and value.count("?", start + 2, end) < 2:
        later = value.find("?=", end + 2)
        return len(value) if later < 0 else later + 2
    return end + 2


def _mailbox(token: _Token) -> WrittenMailbox | None:
    """One entry of the list as a mailbox, or None when it is anything less.

    Refused: a group (RFC 5322 §3.4: it names no mailbox we could decide on), an entry the
    parser could not read, an obsolete route, and an addr-spec with any defect but RFC 6532's
    non-ASCII local part, or with anything unprintable. The display name may carry defects (an
    encoded word inside quotes, an unknown charset): it is only shown, never decided on.
    """
    # The parser types a Mailbox "invalid-mailbox" for a defect anywhere in it, name included;
    # what it could not read at all is an InvalidMailbox, and a group a Group.
    if not isinstance(token, rfc5322.Mailbox) or len(token) != 1:
        return None
    inner = token[0]
    name = ""
    if isinstance(inner, rfc5322.AddrSpec):
        spec = inner
    elif isinstance(inner, rfc5322.NameAddr) and 1 <= len(inner) <= 2:
        angle, display = inner[-1], inner[0] if len(inner) == 2 else None
        if not isinstance(angle, rfc5322.AngleAddr) or _defective(angle):
            return None
        if any(isinstance(part, rfc5322.ObsRoute) for part in angle):
            return None
        specs = [part for part in angle if isinstance(part, rfc5322.AddrSpec)]
        if len(specs) != 1:
            return None
        spec = specs[0]
        if isinstance(display, rfc5322.DisplayName):
            name = _display_name(display)
        elif display is not None:
            return None
    else:
        return None
    if _defective(spec) or not _solid(spec):
        return None
    local, domain = spec.local_part, spec.domain
    if not local or not domain or not (local + domain).isprintable():
        return None
    quoted = local if _DOT_ATOM.fullmatch(local) else rfc5322.quote_string(local)
    return WrittenMailbox(name, quoted, domain)


def _kind(token: _Token) -> str:
    """What the parser says a piece of its tree is: "addr-spec", "comment", "encoded-word", …"""
    return str(token.token_type)


def _defective(token: rfc5322.TokenList) -> bool:
    return any(not isinstance(d, errors.NonASCIILocalPartDefect) for d in token.all_defects)


def _solid(spec: rfc5322.AddrSpec) -> bool:
    """An addr-spec with comments or spaces only around it, and no encoded word in it.

    The parser accepts ``a(c)@b.example`` and decodes ``=?utf-8?q?richard?= @acme.example`` to
    ``richard@acme.example``; a mail client shows neither as that reading (RFC 2047 §5: never
    an encoded word in an addr-spec).
    """
    layout = list(_layout(spec))
    if "encoded" in layout or "text" not in layout:
        return False
    first, last = layout.index("text"), len(layout) - layout[::-1].index("text")
    return "space" not in layout[first:last]


def _layout(token: rfc5322.TokenList) -> Iterator[str]:
    for part in token:
        if _kind(part) in _SPACE_TOKENS:
            yield "space"
        elif _kind(part) == "encoded-word":
            yield "encoded"
        elif isinstance(part, rfc5322.BareQuotedString):
            yield "encoded" if "encoded-word" in (_kind(p) for p in part) else "text"
        elif isinstance(part, rfc5322.TokenList):
            yield from _layout(part)
        else:
            yield "text"


def _display_name(token: rfc5322.DisplayName) -> str:
    """The name as users see it: decoded, on one printable line.

    Read from the tree rather than the parser's ``display_name``, which keeps the space between
    two encoded words ("=?..?Andr=C3=A9_Sm?= =?..?ith?=" reads "André Smith", RFC 2047 §6.2).
    """
    pieces: list[tuple[str, str]] = []
    for kind, text in _name_pieces(token):
        if kind == "space" and pieces and pieces[-1][0] == "space":
            continue
        if kind == "encoded" and [k for k, _ in pieces[-2:]] == ["encoded", "space"]:
            pieces.pop()
        pieces.append((kind, text))
    name = "".join(text for _, text in pieces)
    return " ".join("".join(c if c.isprintable() else " " for c in name).split())


def _name_pieces(token: rfc5322.TokenList) -> Iterator[tuple[str, str]]:
    for part in token:
        if _kind(part) in _SPACE_TOKENS:
            yield "space", " "
        elif isinstance(part, rfc5322.EncodedWord):
            yield "encoded", part.value
        elif isinstance(part, rfc5322.BareQuotedString):
            yield "text", part.value
        elif isinstance(part, rfc5322.TokenList):
            yield from _name_pieces(part)
        else:
            yield "text", str(part)
