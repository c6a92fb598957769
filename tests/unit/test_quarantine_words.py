"""Quarantine reasons in words: each label the pipeline writes reads as a sentence."""

from __future__ import annotations

import pytest

from mailledger.store.quarantine import reason_in_words


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("unknown-sender: newt@prospect.example not a contact or company", "Add them as a contact"),
        ("untrusted: spf=fail for gmail.com", "could not be proven"),
        ("never-log: hr.example", "never-log list"),
        ("auto-reply: Auto-Submitted: auto-replied", "automatic reply"),
        ("ambiguous-from: 2 From headers", "no single sender"),
        ("ambiguous: 2 Subject headers", "tampered"),
        ("mime-too-deep: 60 nested multiparts (limit 50)", "nested too deeply"),
    ],
)
def test_a_known_label_reads_as_a_sentence(reason: str, words: str) -> None:
    """The label before the colon picks the sentence; the detail does not matter."""
    assert words in reason_in_words(reason)


def test_several_routes_give_each_sentence_once() -> None:
    """A message routed twice carries both reasons; the same one twice is said once."""
    both = reason_in_words("internal: every party is staff; bulk: Precedence: bulk")
    assert "internal mail" in both and "bulk or list mail" in both
    assert reason_in_words("bulk: a; bulk: b").count("bulk or list mail") == 1


def test_an_unknown_reason_is_shown_as_it_is() -> None:
    """A reason without a known label is not hidden behind a guess."""
    assert reason_in_words("header line too long") == "header line too long"
    assert reason_in_words("") == "No reason was recorded."
