"""Enhanced mail system status codes in words, for people reading why mail did not go.

A remote host's reply text is whatever its software says; the enhanced status code in front of
it (RFC 3463, and the later codes of the IANA registry RFC 5248 set up) has one meaning
everywhere. The outbound queue's page puts that meaning beside the reply itself.
"""

from __future__ import annotations

from typing import Final

# RFC 3463 §2: the class says whether trying again can help.
CLASSES: Final = {
    "2": "accepted",
    "4": "a temporary failure (trying again may work)",
    "5": "a permanent failure (trying again will not help)",
}

# RFC 3463 §3, the subject (second number) of each code.
SUBJECTS: Final = {
    "0": "an undefined problem",
    "1": "a problem with an address",
    "2": "a problem with the recipient's mailbox",
    "3": "a problem with the receiving mail system",
    "4": "a network or routing problem",
    "5": "a mail protocol problem",
    "6": "a problem with the message's content or format",
    "7": "a security or policy refusal",
}

# RFC 3463 §3.1-3.8, and from the IANA registry: X.7.8 (RFC 4954), X.7.10 and X.7.13
# (RFC 5248), X.7.20-X.7.27 (RFC 7372), X.1.10 (RFC 7505).
DETAILS: Final = {
    "0.0": "no reason given",
    "1.0": "something is wrong with an address",
    "1.1": "the mailbox does not exist",
    "1.2": "the recipient's domain does not exist or takes no mail",
    "1.3": "the recipient's address is not valid",
    "1.4": "the recipient's address is ambiguous",
    "1.6": "the mailbox has moved and left no forwarding address",
    "1.7": "the sender's address is not valid",
    "1.8": "the sender's domain is not valid",
    "1.10": "the recipient's domain says it takes no mail (null MX)",
    "2.0": "something is wrong with the mailbox",
    "2.1": "the mailbox is disabled",
    "2.2": "the mailbox is full",
    "2.3": "the message is larger than the mailbox accepts",
    "2.4": "a mailing list could not be expanded",
    "3.0": "the receiving mail system has a problem",
    "3.1": "the receiving mail system is out of space",
    "3.2": "the receiving system is not accepting mail now",
    "3.3": "the receiving system lacks a feature the message needs",
    "3.4": "the message is too big for the receiving system",
    "3.5": "the receiving system is misconfigured",
    "4.0": "a network or routing problem",
    "4.1": "the receiving host did not answer",
    "4.2": "the connection broke",
    "4.3": "a DNS lookup failed",
    "4.4": "no route to the recipient's domain",
    "4.5": "the receiving system is overloaded",
    "4.6": "the message was going round in a loop",
    "4.7": "the message was too old to keep trying",
    "5.0": "the mail protocol went wrong",
    "5.1": "the receiving host did not understand a command",
    "5.2": "a command's syntax was wrong",
    "5.3": "too many recipients",
    "5.4": "a command's arguments were wrong",
    "5.5": "the protocol versions do not match",
    "6.0": "the content could not be handled",
    "6.1": "the content type is not supported",
    "6.2": "the content would need converting, which is forbidden",
    "6.3": "the content would need converting, which is not possible",
    "6.5": "converting the content failed",
    "7.0": "refused by a security or policy rule",
    "7.1": "the receiver refused the message by policy (not authorised)",
    "7.2": "the mailing list refuses this sender",
    "7.4": "a security feature is not supported",
    "7.5": "a cryptographic check failed",
    "7.7": "the message's integrity check failed",
    "7.8": "the credentials were not accepted",
    "7.10": "the receiver requires encryption",
    "7.13": "the account is disabled",
    "7.20": "no passing DKIM signature",
    "7.21": "no acceptable DKIM signature",
    "7.22": "no DKIM signature of the author's domain",
    "7.23": "SPF failed",
    "7.24": "SPF could not be checked",
    "7.25": "the sending host's reverse DNS did not check out",
    "7.26": "several authentication checks failed",
    "7.27": "the sender's domain says it sends no mail (null MX)",
}


def status_words(status: str) -> str:
    """An enhanced status code ("5.1.1") in words; "" for one that is not a code."""
    parts = status.strip().split(".")
    if len(parts) != 3 or parts[0] not in CLASSES or not all(p.isdigit() for p in parts[1:]):
        return ""
    subject, detail = str(int(parts[1])), str(int(parts[2]))
    found = DETAILS.get(f"{subject}.{detail}") or SUBJECTS.get(subject, "an unknown problem")
    if parts[0] == "2":
        return CLASSES["2"]
    return f"{found}: {CLASSES[parts[0]]}"
