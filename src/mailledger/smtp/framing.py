"""The rules of the command dialogue, over plain data: line framing and junk commands.

Only CRLF ends a line (RFC 5321 §2.3.8); a bare CR or LF elsewhere is where one server's line
ends and another's does not, the root of SMTP smuggling. DATA already keeps that rule
(``dataread``); these keep it for command lines. No sockets here: the command loop
(``commandloop``) asks, and answers.
"""

from __future__ import annotations

CRLF = b"\r\n"

# Commands that make no progress towards a message: a client can repeat them for ever to hold
# a connection (Postfix's smtpd_junk_command_limit counts NOOP, VRFY, ETRN and RSET). HELP and
# EXPN are as idle; unknown commands count too.
JUNK_COMMANDS = frozenset({"NOOP", "RSET", "HELP", "VRFY", "EXPN"})


def is_junk(command: str, *, known: bool) -> bool:
    """Whether a command counts towards the junk cap: an idle one, or one we do not know."""
    return not known or command in JUNK_COMMANDS


class CommandFraming:
    """Decides, piece by piece, which command lines are refused for a bare CR or LF.

    aiosmtpd reads a command up to LF, so a client gets an answer even when it ends lines
    with a bare LF. But only CRLF ends a line: a piece that ends in a bare LF is the start of
    a line that goes on, and the pieces after it, up to and with the one that ends in CRLF,
    belong to that same bad line. Every piece of a line holding a bare CR or LF is refused,
    so nothing in it runs, whether a server in front of us splits it at LF or at CRLF.
    """

    def __init__(self) -> None:
        self._inside_bad_line = False

    def refuses(self, piece: bytes) -> bool:
        """Whether this piece (bytes up to and with an LF) must be refused, not run."""
        ends_line = piece.endswith(CRLF)
        body = piece[:-2] if ends_line else piece.removesuffix(b"\n")
        bad = self._inside_bad_line or not ends_line or b"\r" in body or b"\n" in body
        self._inside_bad_line = not ends_line
        return bad

    def overrun(self, tail: bytes) -> None:
        """Note how a line too long to read ended; its refusal is aiosmtpd's "too long"."""
        self._inside_bad_line = not tail.endswith(CRLF)
