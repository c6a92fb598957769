"""Forwarding-confirmation mail: Gmail proves a forwarding address by mailing it a code.

A capture address is no mailbox a person reads, so the code and link are kept for the CLI and
the mail is handed back to the staff member (DESIGN §6). Subjects are localized, so the mail
is recognised by its authenticated sender, never by its subject.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GMAIL_CONFIRMATION_SENDER = "forwarding-noreply@google.com"
GMAIL_SIGNING_DOMAIN = "google.com"

_SUBJECT_CODE = re.compile(r"\(#(\d{6,12})\)")
_BODY_CODE = re.compile(
    r"(?i)(?:code|código|code de confirmation|bestätigungscode)\D{0,20}(\d{6,12})"
)
_ANY_CODE = re.compile(r"(?<!\d)(\d{9})(?!\d)")
_LINK = re.compile(r"https://mail(?:-settings)?\.google\.com/mail/[^\s<>\"')]+")
_ADDRESS = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


@dataclass(frozen=True, slots=True)
class Confirmation:
    """What the staff member needs to finish setting up forwarding."""

    code: str
    link: str
    requested_by: str


def extract_gmail_confirmation(subject: str, text: str, capture_address: str) -> Confirmation:
    """Find the code, the confirmation link and the Gmail address that asked for forwarding."""
    found = _SUBJECT_CODE.search(subject) or _BODY_CODE.search(text) or _ANY_CODE.search(text)
    code = found.group(1) if found else ""
    link_match = _LINK.search(text)
    requested_by = ""
    for candidate in (*_ADDRESS.findall(subject), *_ADDRESS.findall(text)):
        lowered = candidate.lower()
        if lowered not in (capture_address.lower(), GMAIL_CONFIRMATION_SENDER):
            requested_by = lowered
            break
    return Confirmation(code, link_match.group(0) if link_match else "", requested_by)
