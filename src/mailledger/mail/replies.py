"""SMTP replies: one type for the replies we give and those remote hosts give us.

The capture listener's replies are a table of (code, enhanced status, text) constants, so the
dialogue can be read and tested in one place (RFC 5321 §4.2, RFC 3463); the submission
listener's own are in ``relay.submission_replies``. Delivery reads a remote host's reply into the
same type (``parse_reply``), with the host that gave it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

# RFC 3463 §2 / RFC 2034 §4: the enhanced status code leads the text, a space after it.
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)\s*")


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply line with its RFC 3463 enhanced status code.

    ``str()`` is the line as sent ("550 5.1.1 No such user"), with the remote host it came from
    in parentheses when there is one: delivery stores that string with every attempt.
    """

    code: int
    status: str  # "5.1.1"; "" when a remote host gave none
    text: str
    host: str = ""  # the remote host that replied, "mx1.example.net[192.0.2.1]:25"; "" for ours

    def __str__(self) -> str:
        line = f"{self.code} {self.message}"
        return f"{line} ({self.host})" if self.host else line

    @property
    def message(self) -> str:
        """What follows the code on the line: the enhanced status, then the text."""
        return " ".join(part for part in (self.status, self.text) if part)

    def with_text(self, text: str) -> Reply:
        """The same code and status with a more precise text."""
        return dataclasses.replace(self, text=text)

    @property
    def is_success(self) -> bool:
        """Whether the reply accepts (2xx) rather than refuses."""
        return 200 <= self.code < 300


def parse_reply(code: int, message: str, host: str = "") -> Reply:
    """A reply from its code and the rest of its line: the enhanced status read off the front.

    A status whose class is not the code's ("250 5.1.1 …") is not one (RFC 3463 §2); it stays
    in the text, so ``str()`` gives back the line as it came.
    """
    message = message.strip()
    found = _ENHANCED.match(message)
    if found is None or found.group(1) != str(code)[:1]:
        return Reply(code, "", message, host)
    return Reply(code, ".".join(found.groups()), message[found.end() :], host)


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
# RFC 5321 §2.3.8: only CRLF ends a command line (Postfix's smtpd_forbid_bare_newline).
BARE_NEWLINE_IN_COMMAND = Reply(500, "5.5.2", "Bare CR or LF in command; lines must end with CRLF")
# RFC 5321 §3.8: a server that closes a session says 421 first; RFC 3463 4.4.2: bad connection.
SESSION_TOO_LONG = Reply(421, "4.4.2", "Session time limit reached, closing connection")
TOO_MANY_JUNK_COMMANDS = Reply(
    421, "4.4.2", "Too many commands without a message, closing connection"
)
# The idle timer runs from each command, through its DATA: aiosmtpd resets it per command.
TIMED_OUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
# RFC 6531 §3.4/§3.5: a non-ASCII path needs the SMTPUTF8 parameter on MAIL (553 as Postfix).
NON_ASCII_SENDER = Reply(553, "5.6.7", "Non-ASCII sender address needs the SMTPUTF8 parameter")
NON_ASCII_RECIPIENT = Reply(
    553, "5.6.7", "Non-ASCII recipient address needs the SMTPUTF8 parameter"
)
