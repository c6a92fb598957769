"""The one address parser: what it reads and refuses, within its bounds, remembered or not."""

from __future__ import annotations

import random

import pytest

from mailledger.mail import addresses, addresslist
from mailledger.mail.addresses import AddressError, parse_address, parse_mailbox_list

VALUES = [
    "Carol Client <carol@client.example>",
    "carol@client.example, Dave <dave@client.example>",
    '"Smith, Richard" <richard.smith@gmail.com>',
    "=?utf-8?q?J=C3=B6rg?= <jorg@bücher.example>",
    "undisclosed-recipients:;",
    "not an address",
    "",
]


@pytest.mark.parametrize("value", VALUES)
def test_cached_parse_is_the_parse(value: str) -> None:
    addresses._parse_mailbox_list_cached.cache_clear()
    fresh = addresses._parse_mailbox_list(value)
    assert parse_mailbox_list(value) == fresh
    assert parse_mailbox_list(value) is parse_mailbox_list(value)  # remembered


def test_long_values_are_not_remembered() -> None:
    addresses._parse_mailbox_list_cached.cache_clear()
    value = ", ".join(f"p{i}@client.example" for i in range(40))
    assert len(value) > addresses.CACHED_VALUE_CHARS
    assert len(parse_mailbox_list(value).mailboxes) == 40
    assert addresses._parse_mailbox_list_cached.cache_info().currsize == 0


def test_bad_paths_still_raise_every_time() -> None:
    for _ in range(2):
        with pytest.raises(AddressError):
            parse_address("<carol@>")
    assert parse_address("<Carol@Client.Example>").domain == "client.example"


# --- the standard library's parser, read strictly -------------------------------------------

ACCEPTED: list[tuple[str, list[tuple[str, str]]]] = [
    ("Carol Client <carol@client.example>", [("Carol Client", "carol@client.example")]),
    ('"Smith, Richard" <richard@acme.example>', [("Smith, Richard", "richard@acme.example")]),
    ("=?utf-8?q?J=C3=B6rg?= <jorg@bücher.example>", [("Jörg", "jorg@xn--bcher-kva.example")]),
    # RFC 2047 §6.2: the space between two encoded words is not part of the name.
    (
        "=?utf-8?q?Andr=C3=A9_Sm?= =?utf-8?q?ith?= <andre@client.example>",
        [("André Smith", "andre@client.example")],
    ),
    # Broken mailers quote encoded words; the name is only shown, so it is decoded anyway.
    ('"=?utf-8?q?J=C3=B6rg?=" <jorg@client.example>', [("Jörg", "jorg@client.example")]),
    # What an encoded name says is a name, never the address.
    (
        "=?utf-8?q?richard=40acme.example?= <eve@evil.test>",
        [("richard@acme.example", "eve@evil.test")],
    ),
    ("=?utf-8?q?x=0Ay?= <carol@client.example>", [("x y", "carol@client.example")]),
    (
        "a@client.example, B <b@client.example>",
        [("", "a@client.example"), ("B", "b@client.example")],
    ),
    ("a@client.example,,b@client.example", [("", "a@client.example"), ("", "b@client.example")]),
    ('"john smith"@client.example', [("", '"john smith"@client.example')]),
    ('"a\\"b"@client.example', [("", '"a\\"b"@client.example')]),
    ('"carol"@client.example', [("", "carol@client.example")]),  # quotes it never needed
    ("carol@client.example (Carol)", [("", "carol@client.example")]),
    ("(c) <carol@client.example> (d)", [("", "carol@client.example")]),
    ("Pete(A nice \\) chap) <pete@silly.test>", [("Pete", "pete@silly.test")]),
    ("carol@client.example (a (b) c)", [("", "carol@client.example")]),
    ("a@bücher.example", [("", "a@xn--bcher-kva.example")]),
    ("a@XN--BCHER-KVA.example", [("", "a@xn--bcher-kva.example")]),
    ("jörg@client.example", [("", "jörg@client.example")]),  # RFC 6532
    ("a@[192.0.2.1]", [("", "a@[192.0.2.1]")]),
    ("a@[IPv6:2001:db8::1]", [("", "a@[ipv6:2001:db8::1]")]),
    # A comma inside an encoded word does not cut the list (the parser reads the word whole).
    ("=?utf-8?q?x@y.example,z?= <v@w.example>", [("x@y.example,z", "v@w.example")]),
]

REFUSED = [
    "undisclosed-recipients:;",  # a group names no mailbox
    "Team: a@client.example, b@client.example;",
    "carol@",  # the parser raises IndexError on this one
    "<carol@>",
    "carol",
    "<>",
    '""@client.example',
    "<@relay.example:carol@client.example>",  # an obsolete source route
    "carol@client.example trailing",
    "Carol <carol@client.example> junk",
    "<a@client.example> <b@client.example>",
    "richard@acme.example <eve@evil.test>",
    "<carol@client.example",
    '"Carol <carol@client.example>',
    "carol@client.example (unclosed",
    # The parser decodes these to richard@acme.example; a mail client shows neither so.
    "=?utf-8?q?richard?= @acme.example",
    "=?utf-8?q?richard?=@acme.example",
    '"=?utf-8?q?richard?="@acme.example',
    # Comments and spaces go around an addr-spec, never inside it.
    "carol(x)@client.example",
    "carol@(x)client.example",
    "carol @ client.example",
    "a..b@client.example",
    "a@client..example",
    "a@client.example.",
    "carol@client.example " + "(" * 9 + ")" * 9,  # deeper than MAX_COMMENT_DEPTH
    "a@xn--zz.example",  # not an A-label
    "a@client.example\u200b",  # invisible
    "a@client.example\x00",
    "a@[tag:x]",  # only IPv4 and IPv6 address literals (RFC 5321 §4.1.3)
    "a@[IPv6:192.0.2.1]",
    "a@client.example; b@client.example",  # ";" ends a group; it separates nothing
    "a@client.example, not an address",  # one bad entry: the list is not read in part
    "N" * 1000 + " <a@client.example>",  # an entry longer than a line
]


@pytest.mark.parametrize(("value", "expected"), ACCEPTED)
def test_accepted_values(value: str, expected: list[tuple[str, str]]) -> None:
    """Each mailbox reads as users see it (name) and as we match it (address)."""
    parsed = addresses._parse_mailbox_list(value)
    assert parsed.invalid == ()
    assert [(box.name, box.address) for box in parsed.mailboxes] == expected


@pytest.mark.parametrize("value", REFUSED)
def test_refused_values(value: str) -> None:
    """A value with anything unreadable or ambiguous in it yields no mailbox at all."""
    parsed = addresses._parse_mailbox_list(value)
    assert parsed.mailboxes == ()
    assert parsed.invalid == (value,)


def test_values_over_the_bound_are_not_parsed() -> None:
    """Past MAX_HEADER_VALUE_CHARS the parser never sees the value; the reason shows its start."""
    value = "a@client.example, " * 1000
    parsed = addresses._parse_mailbox_list(value)
    assert parsed.mailboxes == ()
    assert parsed.invalid == (value[:80] + "…",)


HOSTILE = [
    "(" * 5000 + ")" * 5000,  # the parser recurses once per level
    "(" + "\\)(" * 4000,  # escaped closings: the levels still count
    '"(" ' + "(" * 5000,  # a quote cannot hide them either
    "a@client.example " + "(c)" * 5000,
    "\\" * 16000,
    "a " * 8000 + "<a@client.example>",
    ",".join(["a@client.example"] * 900),
    "," * 16000,
    '"' + "a, " * 5000,
]


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v[:12]))
def test_the_parser_only_sees_bounded_pieces(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """However a 16 KB value is built, each parser call gets one entry of one line at most."""
    seen: list[int] = []
    parse = addresslist.rfc5322.get_address_list

    def measured(text: str) -> object:
        seen.append(len(text))
        return parse(text)

    monkeypatch.setattr(addresslist.rfc5322, "get_address_list", measured)
    parsed = addresses._parse_mailbox_list(value[: addresses.MAX_HEADER_VALUE_CHARS])
    assert max(seen, default=0) <= addresslist.MAX_ENTRY_CHARS
    assert parsed.mailboxes == () or len(parsed.mailboxes) == 900


@pytest.mark.parametrize(
    ("value", "entries"),
    [
        ("a@x.example", ["a@x.example"]),
        ("a@x.example, b@x.example", ["a@x.example", " b@x.example"]),
        ('"Smith, R" <r@x.example>, b@x.example', ['"Smith, R" <r@x.example>', " b@x.example"]),
        ('"a\\", b" <a@x.example>', ['"a\\", b" <a@x.example>']),
        ("a@x.example (c, d), e@x.example", ["a@x.example (c, d)", " e@x.example"]),
        ("a@x.example (c (d, e) \\), f)", ["a@x.example (c (d, e) \\), f)"]),
        (
            "=?utf-8?q?a,b?= <a@x.example>, c@x.example",
            ["=?utf-8?q?a,b?= <a@x.example>", " c@x.example"],
        ),
        # "=XX" right after "?=" continues the word to the next "?=", as the parser reads it.
        ("=?utf-8?q?=41,b?= <a@x.example>", ["=?utf-8?q?=41,b?= <a@x.example>"]),
        ("=?no end, a@x.example", ["=?no end", " a@x.example"]),
    ],
)
def test_lists_are_cut_where_the_parser_cuts_them(value: str, entries: list[str]) -> None:
    """Commas in quoted strings, comments and encoded words do not separate entries."""
    assert addresslist._entries(value) == entries


def test_cut_lists_read_as_the_parser_reads_them_whole() -> None:
    """On random lists of quotes, comments and encoded words, cutting never changes one mailbox.

    Where our reading accepts, the parser's reading of the whole value accepts too; where ours
    finds a single mailbox (all a From may hold), the whole value holds that same one.
    """
    pieces = [
        "a@x.example", "B <b@y.example>", '"', "(", ")", ",", " ", "=?", "?=", "=?utf-8?q?",
        "x@y", "<c@z.example>", "=41", "\\", "q", "=?utf-8?q?a?=", '"q, r"', "(c, d)",
    ]  # fmt: skip
    rng = random.Random(12)
    for _ in range(3000):
        value = "".join(rng.choice(pieces) for _ in range(rng.randrange(2, 12)))
        ours = addresslist.read_address_list(value)
        if ours is None:
            continue
        tree, rest = addresslist.rfc5322.get_address_list(value)
        whole = [addresslist._mailbox(address[0]) for address in tree.addresses]
        assert not rest and None not in whole, value
        if len(ours) == 1:
            assert whole == ours, value
