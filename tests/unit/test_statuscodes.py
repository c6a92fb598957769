"""Enhanced status codes read as words (RFC 3463), as the outbound queue page shows them."""

from __future__ import annotations

import pytest

from mailledger.mail.statuscodes import status_words


@pytest.mark.parametrize(
    ("status", "words"),
    [
        ("5.1.1", "the mailbox does not exist: a permanent failure (trying again will not help)"),
        ("4.2.2", "the mailbox is full: a temporary failure (trying again may work)"),
        ("4.7.1", "the receiver refused the message by policy (not authorised): a temporary"),
        ("5.7.26", "several authentication checks failed: a permanent failure"),
        ("5.1.10", "the recipient's domain says it takes no mail (null MX)"),
        # An unlisted detail falls back to its subject (RFC 3463 §3).
        ("4.4.99", "a network or routing problem: a temporary failure"),
        ("2.0.0", "accepted"),
        ("4.02.002", "the mailbox is full"),
    ],
)
def test_a_code_reads_as_its_meaning_and_class(status: str, words: str) -> None:
    """The detail's meaning, then whether trying again can help."""
    assert status_words(status).startswith(words)


@pytest.mark.parametrize("status", ["", "550", "3.1.1", "5.1", "5.x.1", "5.1.1.1", "\u0665.1.1"])
def test_what_is_not_a_code_reads_as_nothing(status: str) -> None:
    """A reply without an enhanced code (or with a malformed one) gets no words."""
    assert status_words(status) == ""
