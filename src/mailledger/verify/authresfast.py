"""authres's header parser without its per-call regular-expression work.

authres (RFC 8601 ``Authentication-Results``) matches every grammar token by building the
pattern string again, looking it up in ``re``'s cache and running ``re.sub`` with a closure:
its own source says "this effectively recompiles most patterns on each use". A Gmail
forward's header took ~0.8 ms to parse, the largest single step of a synced message's
processing (`make bench`'s sync phase). Two methods are swapped, with the same results:

- ``_parse_pattern``: each pattern compiled once (anchored and case-insensitive, exactly as
  authres compiles it), one ``search`` and the matched text cut off the front;
- ``_parse_rfc5322_cfws``: returns at once when the text cannot start folding white space or
  a comment (neither a blank, a line break nor ``(``), which is most of its ~100 calls per
  header; otherwise authres's own loop runs.

A differential test parses the repository's headers and thousands of mutations of them with
both and compares every result and every error.
"""

from __future__ import annotations

import re
from typing import Any

import authres.core

_HEADER = authres.core.AuthenticationResultsHeader
_ORIGINAL_PARSE_PATTERN = _HEADER._parse_pattern
_ORIGINAL_CFWS = _HEADER._parse_rfc5322_cfws
_COMPILED: dict[str, re.Pattern[str]] = {}
_CFWS_STARTS = frozenset(" \t\r\n(")


def originals() -> tuple[Any, Any]:
    """authres's own methods, for the differential test."""
    return _ORIGINAL_PARSE_PATTERN, _ORIGINAL_CFWS


def parse_pattern(self: Any, pattern: str | re.Pattern[str]) -> re.Match[str] | None:
    """authres's ``_parse_pattern``: the first match, removed from the text left to parse."""
    if isinstance(pattern, re.Pattern):
        regexp = pattern
    else:
        regexp = _COMPILED.get(pattern)  # type: ignore[assignment]
        if regexp is None:
            regexp = _COMPILED[pattern] = re.compile(r"^" + pattern, re.I)
    text: str = self._parse_text
    match = regexp.search(text)
    if match is None:
        return None
    start, end = match.span()
    self._parse_text = text[end:] if start == 0 else text[:start] + text[end:]
    return match


def parse_cfws(self: Any) -> Any:
    """authres's ``_parse_rfc5322_cfws``, answering at once when there is nothing to skip."""
    text: str = self._parse_text
    if not text or text[0] not in _CFWS_STARTS:
        return None
    return _ORIGINAL_CFWS(self)


def install() -> None:
    """Swap the two methods into authres's parser (idempotent)."""
    _HEADER._parse_pattern = parse_pattern
    _HEADER._parse_rfc5322_cfws = parse_cfws
