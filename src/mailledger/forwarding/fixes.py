"""What stops a forward at each provider, and what the staff member (or their admin) changes.

The two silent failures users of forwarding meet most: Gmail removes the forwarding address
when the account's password changes (and after some security reviews), and Microsoft 365
blocks automatic forwarding to outside addresses unless an Exchange admin allows it
(``550 5.7.520 Access denied, Your organization does not allow external forwarding``; the
bounce goes to the original sender, so the staff member never sees it). Which provider
forwards for a staff member is read from how their proven check came back (the Gmail ``+caf_``
envelope, Google's or Microsoft's ARC seal), else from their primary address's domain.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

GMAIL: Final = "gmail"
MICROSOFT: Final = "microsoft"
OTHER: Final = "other"

PROVIDER_NAMES: Final = {GMAIL: "Gmail", MICROSOFT: "Microsoft 365", OTHER: "your mail provider"}

_GMAIL_DOMAINS: Final = frozenset({"gmail.com", "googlemail.com", "google.com"})
_MICROSOFT_DOMAINS: Final = frozenset(
    {"outlook.com", "hotmail.com", "live.com", "msn.com", "microsoft.com", "office365.com"}
)


def _domain_of(text: str) -> str:
    """The domain a signer, sealer or address string names (``"google.com (pass)"``)."""
    words = text.split(maxsplit=1)
    return words[0].rpartition("@")[2].lower().rstrip(".") if words else ""


def _is_microsoft(domain: str) -> bool:
    return domain in _MICROSOFT_DOMAINS or domain.endswith(
        (".onmicrosoft.com", ".outlook.com", ".protection.outlook.com")
    )


def provider_of(observed: Mapping[str, Any], primary_address: str) -> str:
    """``gmail``, ``microsoft`` or ``other``: who forwards this staff member's mail."""
    pattern = str(observed.get("envelope_pattern", ""))
    if pattern.startswith("gmail"):
        return GMAIL
    sealers = [_domain_of(str(s)) for s in observed.get("arc_sealers") or []]
    signers = [_domain_of(str(s)) for s in observed.get("dkim_signers") or []]
    if any(d in _GMAIL_DOMAINS for d in sealers):
        return GMAIL
    if any(_is_microsoft(d) for d in sealers) or pattern.startswith("SRS rewrite by outlook"):
        return MICROSOFT
    if any(_is_microsoft(d) for d in signers):
        return MICROSOFT
    domain = primary_address.rpartition("@")[2].lower()
    if domain in _GMAIL_DOMAINS:
        return GMAIL
    if _is_microsoft(domain):
        return MICROSOFT
    return OTHER


def fix_steps(provider: str, capture: str) -> list[str]:
    """The fix, in steps a staff member can follow (or hand to their Exchange admin)."""
    if provider == GMAIL:
        return [
            "Gmail removes your forwarding address when your Google password changes (and "
            "sometimes after a security check), without telling you.",
            "In Gmail on the web: Settings (gear) → See all settings → Forwarding and POP/IMAP.",
            f"If {capture} is no longer listed, choose Add a forwarding address, enter it, and "
            "enter the confirmation code Gmail sends (it appears on your integrations page).",
            f"Select Forward a copy of incoming mail to {capture}, keep Gmail's copy in the "
            "Inbox, and Save Changes. If you forward with a filter, check the filter still "
            "forwards to that address.",
        ]
    if provider == MICROSOFT:
        domain = capture.rpartition("@")[2]
        return [
            "Microsoft 365 blocks automatic forwarding to outside addresses unless your "
            "organisation allows it; the forward then bounces with '550 5.7.520 Access denied, "
            "Your organization does not allow external forwarding' (to the sender, not to you).",
            "Ask your Exchange admin to allow it for you: Microsoft 365 Defender portal → "
            "Policies & rules → Threat policies → Anti-spam → Anti-spam outbound policy: in a "
            "policy that covers you, set Automatic forwarding rules to On (not Automatic - "
            "System-controlled, which means Off).",
            f"And in the Exchange admin center → Mail flow → Remote domains: the entry that "
            f"covers {domain} (or Default) must allow automatic forwarding.",
            f"Then check your Outlook rule (Settings → Mail → Rules) still forwards to {capture}.",
        ]
    return [
        f"Open your mailbox's settings and check that mail is still forwarded to {capture}.",
        "A password change, a new security policy or an administrator's rule against "
        "forwarding to outside addresses can switch forwarding off without telling you.",
    ]
