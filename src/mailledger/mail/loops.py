"""Loop evidence in a message's own headers: the marks a message collects as it goes round.

A mail loop shows itself in the trace fields every MTA adds (RFC 5321 §4.4, §6.3): too many
hops, or our own host name among the hosts that received it earlier, meaning it went out
through us and came back. ``X-Loop`` is the de-facto "this one has been here" mark
(procmail, Mailman and ticket systems write the address or host that must not see the
message again). How much mail one sender writes is no evidence of a loop at all: a staff
member's busy hour looks the same.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# What separates the names inside a trace or X-Loop field (RFC 5322 §3.6.7 comments, angle
# brackets, punctuation); a host name never contains any of these.
_SEPARATORS = re.compile(r"[\s<>()\[\];,]+")
# A comment without comments inside it; removed innermost first (RFC 5322 §3.2.2).
_COMMENT = re.compile(r"\([^()]*\)")


def loop_evidence(
    headers: Mapping[str, Sequence[str]],
    *,
    hostname: str,
    capture_domain: str,
    max_hops: int,
    max_own_hops: int,
) -> str | None:
    """Why the headers show a loop, or None.

    ``headers`` maps lowercased names to values, newest first. ``hostname`` is ours (the
    listeners' and the relay's), ``capture_domain`` the tenant's. A message that passed through
    us ``max_own_hops`` times before may be one email taking a second path (a colleague's
    mailbox forwarding what Richard sent through our relay); more is a loop.
    """
    received = headers.get("received", ())
    if len(received) > max_hops:
        # RFC 5321 §6.3: counting trace fields is how an SMTP system detects a loop.
        return f"loop: {len(received)} Received headers (more than {max_hops})"
    own = own_hops(received, hostname)
    if own > max_own_hops:
        return f"loop: passed through {hostname} {own} times before (its Received headers)"
    for value in headers.get("x-loop", ()):
        if _names_us(value, hostname, capture_domain):
            return f"loop: X-Loop: {' '.join(value.split())[:120]}"
    return None


def own_hops(received: Sequence[str], hostname: str) -> int:
    """How many Received fields below the newest name ``hostname`` as the receiving host.

    The newest is this pass's own (our relay writes one on what staff submit), or the hop that
    handed the message to us; only the fields below it record an earlier visit.
    """
    host = hostname.lower()
    return sum(1 for value in received[1:] if _received_by(value) == host)


def _received_by(value: str) -> str:
    """The host after ``by`` in a Received field (RFC 5321 §4.4 By-domain), lowercased."""
    text, previous = value.lower(), ""
    while text != previous:  # a comment such as "(authenticated by ...)" names no receiver
        previous, text = text, _COMMENT.sub(" ", text)
    words = _SEPARATORS.split(text)
    for index, word in enumerate(words[:-1]):
        if word == "by":
            return words[index + 1].rstrip(".")
    return ""


def _names_us(value: str, hostname: str, capture_domain: str) -> bool:
    """Whether an X-Loop value names our host or an address at the tenant's capture domain."""
    ours = {hostname.lower(), capture_domain.lower()}
    for token in _SEPARATORS.split(value.lower()):
        if token.rpartition("@")[2].rstrip(".") in ours:
            return True
    return False
