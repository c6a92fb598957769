"""Mail that machines wrote: auto-replies, bulk, bounces and loops are not client correspondence.

The header rules follow RFC 3834 (Auto-Submitted), RFC 2369/2919 (List-*), and the
de-facto headers Exchange and common autoresponders add (DESIGN §5).
"""

from __future__ import annotations

_AUTORESPONDER_HEADERS = ("x-autoreply", "x-autorespond", "x-autoresponder")
_BULK_PRECEDENCE = frozenset({"bulk", "junk", "list", "auto_reply"})
_ROBOT_LOCALS = frozenset({"mailer-daemon", "postmaster"})


def _first(headers: dict[str, list[str]], name: str) -> str:
    values = headers.get(name)
    return values[0].strip().lower() if values else ""


def automated_reason(
    headers: dict[str, list[str]], mail_from: str, message_id: str, own_domain: str
) -> str | None:
    """Why this message is machine-written, or None for a person's mail.

    ``headers`` maps lowercased names to values; ``mail_from`` is the envelope sender;
    ``own_domain`` is our hostname, whose Message-IDs mean the message came from us (a loop).
    """
    auto_submitted = _first(headers, "auto-submitted")
    if auto_submitted and auto_submitted.split(";", 1)[0].strip() != "no":
        return f"auto-reply: Auto-Submitted: {auto_submitted[:60]}"
    for name in _AUTORESPONDER_HEADERS:
        if name in headers:
            return f"auto-reply: {name} header"
    if "x-auto-response-suppress" in headers:
        # Exchange stamps it on what its own robots send (OOF, delivery reports).
        return "auto-reply: X-Auto-Response-Suppress header"
    precedence = _first(headers, "precedence")
    if precedence in _BULK_PRECEDENCE:
        return f"bulk: Precedence: {precedence}"
    for name in ("list-id", "list-unsubscribe"):
        if name in headers:
            return f"bulk: {name} header"
    if "x-failed-recipients" in headers:
        return "bounce: X-Failed-Recipients header"
    sender = mail_from.strip().strip("<>").lower()
    if not sender:
        return "bounce: null return path"
    if sender.split("@", 1)[0] in _ROBOT_LOCALS:
        return f"bounce: sender {sender}"
    if own_domain and message_id.lower().endswith("@" + own_domain.lower()):
        return f"loop: Message-ID from our own domain {own_domain}"
    return None
