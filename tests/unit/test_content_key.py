"""The content checksum's text: exactly ``" ".join(text.split())``, whatever the whitespace.

The key is stored with every activity and compared with those already recorded, so the
faster squeeze of ``routing.dedupe`` must give the same bytes as the split it replaces.
"""

from __future__ import annotations

import random
import sys

import pytest

from mailledger.routing.dedupe import WIDE_SPACES, collapsed_spaces

# Every character str.split() splits on, and some that look alike but are not whitespace.
_SPACES = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]
_OTHERS = ["a", "Zz", "é", "\u2019", "\u200b", "\x00", "\ud800", "\r\n", "\n\r", ".", "\x7f"]


def test_every_wider_whitespace_character_is_known() -> None:
    """This Python's Unicode data names no whitespace the squeeze would miss."""
    assert "".join(s for s in _SPACES if not s.isascii()) == WIDE_SPACES


def _split(text: str) -> bytes:
    return " ".join(text.split()).encode("utf-8", "replace")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "one",
        "Line one.\r\nLine two.\r\n\r\n  indented\ttab\r\n",
        "bare\rCR\r\nthen CRLF",
        "\r\n\r\nleading and trailing\r\n\r\n",
        "no-break\xa0space and em\u2003space",
        "ideographic\u3000space, line\u2028separator",
        "file\x1cgroup\x1drecord\x1eunit\x1fseparators\x0bvt\x0cff",
        "lone surrogate \ud800 kept as ?",
        "a  b   c    d" + " " * 1000 + "e",
    ],
)
def test_the_same_bytes_as_the_split(text: str) -> None:
    assert collapsed_spaces(text) == _split(text)


def test_random_whitespace_soup() -> None:
    rng = random.Random(3)
    for _ in range(20000):
        pieces = [rng.choice(_SPACES if rng.random() < 0.5 else _OTHERS) for _ in range(12)]
        text = "".join(pieces[: rng.randrange(0, 13)])
        assert collapsed_spaces(text) == _split(text), repr(text)
