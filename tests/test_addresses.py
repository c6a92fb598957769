"""The one address parser: results are the same whether or not they were remembered."""

from __future__ import annotations

import pytest

from mailledger.mail import addresses
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
