"""One Reply type for the replies we give and those remote hosts give us."""

from __future__ import annotations

import pytest

from mailledger.mail import replies
from mailledger.mail.replies import Reply, parse_reply
from mailledger.relay import submission_replies


def test_our_replies_print_as_sent() -> None:
    """A constant prints as the line the listener sends; a more precise text keeps the rest."""
    assert str(replies.UNKNOWN_USER) == "550 5.1.1 No such capture address"
    assert str(submission_replies.AUTH_INVALID) == "535 5.7.8 Authentication credentials invalid"
    precise = replies.UNKNOWN_USER.with_text("No such user here")
    assert (precise.code, precise.status, str(precise)) == (
        550,
        "5.1.1",
        "550 5.1.1 No such user here",
    )


@pytest.mark.parametrize(
    ("code", "message", "status", "text"),
    [
        (550, "5.1.1 <bob@example.net>: user unknown", "5.1.1", "<bob@example.net>: user unknown"),
        (
            556,
            "5.1.10 recipient domain does not accept mail",
            "5.1.10",
            "recipient domain does not accept mail",
        ),
        (250, "2.0.0 Ok: queued as 4F2", "2.0.0", "Ok: queued as 4F2"),
        (452, "4.2.2", "4.2.2", ""),
        (550, "user unknown", "", "user unknown"),  # no enhanced status given
        (550, "4.1.1 class does not match the code", "", "4.1.1 class does not match the code"),
        (550, "5.1.1-like but no space", "", "5.1.1-like but no space"),
        (250, "", "", ""),
    ],
)
def test_remote_replies_keep_their_line(code: int, message: str, status: str, text: str) -> None:
    """The enhanced status is read off the front only when it is one; the line prints back."""
    reply = parse_reply(code, message, "mx1.example.net[192.0.2.1]:25")
    assert (reply.status, reply.text) == (status, text)
    assert reply.message == message
    assert str(reply) == f"{code} {message} (mx1.example.net[192.0.2.1]:25)"
    assert str(parse_reply(code, message)) == f"{code} {message}"


def test_a_reply_we_made_up_prints_as_delivery_stored_it() -> None:
    """A decision without a remote host has no host in its line."""
    assert str(Reply(556, "5.1.10", "recipient domain does not accept mail")) == (
        "556 5.1.10 recipient domain does not accept mail"
    )
