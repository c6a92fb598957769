"""Every SMTP reply the capture listener gives, as (code, enhanced status, text) constants.

One table, so the dialogue can be read and tested in one place (RFC 5321 §4.2, RFC 3463).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply line with its RFC 3463 enhanced status code."""

    code: int
    status: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"

    def with_text(self, text: str) -> Reply:
        """The same code and status with a more precise text."""
        return Reply(self.code, self.status, text)

    @property
    def is_success(self) -> bool:
        """Whether the reply accepts (2xx) rather than refuses."""
        return 200 <= self.code < 300


OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
QUEUED = Reply(250, "2.0.0", "Queued as")  # text gets the queue id

BAD_SENDER_SYNTAX = Reply(553, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(553, "5.1.3", "Bad recipient address syntax")
LOCAL_PART_TOO_LONG = Reply(553, "5.1.3", "Local part too long")
UNKNOWN_USER = Reply(550, "5.1.1", "No such capture address")
RELAY_DENIED = Reply(550, "5.7.1", "Relaying denied: we do not serve this domain")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message too big")
TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many Received headers: mail loop?")
BARE_NEWLINE = Reply(550, "5.5.2", "Bare CR or LF in message; lines must end with CRLF")
NUL_BYTE = Reply(550, "5.6.0", "NUL byte in message")
HEADERS_TOO_BIG = Reply(552, "5.3.4", "Message header too large")
LINE_TOO_LONG = Reply(500, "5.5.6", "Line too long (RFC 5321 §4.5.3.1.6)")
STORAGE_FAILED = Reply(451, "4.3.0", "Temporary storage failure, try again later")
# RFC 5321 §4.5.3.1.10 / RFC 3463 4.3.1: our disk is near full; the sender keeps the message.
INSUFFICIENT_STORAGE = Reply(452, "4.3.1", "Insufficient system storage, try again later")
LOCAL_ERROR = Reply(451, "4.3.0", "Temporary local error, try again later")
DIRECTORY_UNAVAILABLE = Reply(451, "4.3.0", "Recipient lookup failed, try again later")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
