"""The authentication verdicts of an activity in words a user reads at a glance.

"Signed by client.example; forwarded by Richard's Gmail, verified by SPF." The first part
says how sure we are the client wrote it (the original sender's verdict that the trust step
records, ``verify.trust.original_verdict``); each further part says how one path of the email
reached us and why we believed it (the trust verdict stored on that received message). The
words come only from what the store recorded: nothing is checked again here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mailledger.verify.results import FAIL, NONE, PASS, PERMERROR, TEMPERROR

# Mailbox providers people know by name; any other forwarder is named by its domain.
PROVIDERS = {
    "gmail.com": "Gmail",
    "googlemail.com": "Gmail",
    "outlook.com": "Outlook.com",
    "hotmail.com": "Outlook.com",
    "live.com": "Outlook.com",
    "icloud.com": "iCloud Mail",
    "me.com": "iCloud Mail",
    "yahoo.com": "Yahoo Mail",
    "fastmail.com": "Fastmail",
}


@dataclass(frozen=True, slots=True)
class Arrival:
    """One path of the email: whose capture address or login, the envelope, the verdicts."""

    kind: str  # "user" (forwarded), "log" (BCC to log@), "operator"
    staff: str  # the staff member's name as people say it ("" when unknown)
    mail_from: str  # the envelope sender of that copy
    auth: Mapping[str, Any]  # the verdicts stored on that received message


def mailbox_name(envelope_sender: str) -> str:
    """Where a forward came from: "Gmail", "Outlook.com", or "acme.com mailbox"."""
    domain = envelope_sender.rpartition("@")[2].lower().strip(">")
    if not domain:
        return "mailbox"
    return PROVIDERS.get(domain, f"{domain} mailbox")


def original_words(auth: Mapping[str, Any]) -> str:
    """How sure we are the original sender wrote it; "" when the trust step kept no verdict."""
    original = auth.get("original")
    if not isinstance(original, Mapping):
        return ""
    via = str(original.get("via", ""))
    result = str(original.get("result", ""))
    detail = str(original.get("detail", ""))
    domain = str(auth.get("from_domain") or "") or "the sender's domain"
    if via == "dkim" and result == PASS:
        signer = detail.rpartition("d=")[2].split()[0] if "d=" in detail else domain
        return f"Signed by {signer}"
    if via.startswith("arc:"):
        sealer = via.removeprefix("arc:")
        if result == PASS:
            return f"Signed by {domain} when {sealer} received it (ARC)"
        return f"Not signed by {domain} when {sealer} received it (DMARC {result}, per ARC)"
    if result == PASS:
        return f"Sent by {domain}'s own servers (DMARC pass)"
    if result in (TEMPERROR, PERMERROR):
        return f"{domain}'s signature could not be checked (DMARC {result})"
    if result == FAIL:
        return f"Not signed by {domain} (DMARC fail): it may not come from {domain}"
    if result == NONE or not result:
        return f"Not signed by {domain}: nothing proves who sent it"
    return f"{domain}: DMARC {result}"


def _how(reason: str) -> str:
    """Which check proved the path, from the trust step's reason."""
    start = reason.strip().lower()
    if start.startswith("spf=pass"):
        return "by SPF"
    if start.startswith("dkim=pass"):
        return "by DKIM"
    if start.startswith("arc=pass"):
        return "by a trusted ARC seal"
    return ""


def _possessive(name: str) -> str:
    if not name:
        return "the staff member's"
    return f"{name}'" if name.endswith("s") else f"{name}'s"


def arrival_words(arrival: Arrival) -> str:
    """How one copy reached us, and why it was believed."""
    trust = str(arrival.auth.get("trust", ""))
    how = _how(str(arrival.auth.get("trust_reason", "")))
    verified = f"verified {how}" if how else "verified"
    who = arrival.staff or "a staff member"
    if trust == "forwarder-authenticated":
        mailbox = mailbox_name(arrival.mail_from)
        return f"forwarded by {_possessive(arrival.staff)} {mailbox}, {verified}"
    if trust == "sender-authenticated":
        return f"sent by {who} with a copy to log@, {verified}"
    if trust == "submission":
        return f"sent through mailledger by {who}, who signed in with their relay password"
    if trust == "mailbox":
        return f"fetched by mailbox sync from {_possessive(arrival.staff)} own mailbox"
    if trust == "demo-loopback":
        return "accepted from loopback in demo mode, not verified"
    if trust == "untrusted":
        return "not verified: the operator released it from quarantine"
    return "how it reached us was not recorded"


def verdict_sentence(auth: Mapping[str, Any], arrivals: Iterable[Arrival]) -> str:
    """The whole sentence: the original sender's verdict, then every path it came by."""
    parts = [original_words(auth)]
    seen: set[str] = set()
    for arrival in arrivals:
        words = arrival_words(arrival)
        if words not in seen:
            seen.add(words)
            parts.append(words)
    parts = [p for p in parts if p]
    if not parts:
        return "No authentication verdicts were recorded for this activity."
    sentence = "; ".join(parts)
    return sentence[0].upper() + sentence[1:] + "."
