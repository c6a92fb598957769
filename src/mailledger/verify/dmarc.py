"""DMARC (RFC 7489): policy discovery and identifier alignment for the From domain.

Alignment uses the organisational domain from the Public Suffix List (§3.2), so
``mail.acme.co.uk`` aligns with ``acme.co.uk`` in relaxed mode but not ``other.co.uk``.
"""

from __future__ import annotations

from collections.abc import Callable

from mailledger.dnsauth.orgdomain import organizational_domain
from mailledger.verify.results import (
    FAIL,
    NONE,
    PASS,
    PERMERROR,
    TEMPERROR,
    DKIMResult,
    DMARCResult,
    SPFResult,
)

# name → (status, TXT strings); status is "ok", "nxdomain", "nodata" or "temperror".
TxtLookup = Callable[[str], tuple[str, list[str]]]


def parse_record(text: str) -> dict[str, str] | None:
    """The tags of a DMARC record, or None when it is not one (v=DMARC1 must come first)."""
    tags: dict[str, str] = {}
    for index, piece in enumerate(text.split(";")):
        name, sep, value = piece.partition("=")
        name = name.strip().lower()
        if not sep:
            if name:
                return None if index == 0 else tags
            continue
        if index == 0 and (name != "v" or value.strip() != "DMARC1"):
            return None
        tags.setdefault(name, value.strip())
    return tags if tags.get("v") == "DMARC1" else None


def discover(from_domain: str, lookup: TxtLookup) -> tuple[str, dict[str, str] | None, bool]:
    """Find the policy record: at ``_dmarc.<From domain>``, else at the organisational domain.

    Returns (status, tags, from_org) where status is ok, none or temperror, and from_org
    says the record was found at the organisational domain (so ``sp=`` applies).
    """
    org = organizational_domain(from_domain)
    candidates = [(from_domain, False)]
    if org != from_domain:
        candidates.append((org, True))
    for domain, at_org in candidates:
        status, texts = lookup(f"_dmarc.{domain}")
        if status == TEMPERROR:
            return TEMPERROR, None, at_org
        records = [tags for tags in (parse_record(t) for t in texts) if tags is not None]
        if len(records) == 1:
            return "ok", records[0], at_org
        # Several records or none: as if none (§6.6.3), try the organisational domain.
    return NONE, None, False


def aligned(identifier: str, from_domain: str, mode: str) -> bool:
    """Whether an authenticated domain aligns with the From domain (s: exact, r: same org)."""
    identifier, from_domain = identifier.lower().rstrip("."), from_domain.lower().rstrip(".")
    if not identifier or not from_domain:
        return False
    if mode == "s":
        return identifier == from_domain
    return organizational_domain(identifier) == organizational_domain(from_domain)


def evaluate(
    from_domain: str, spf: SPFResult, dkim: tuple[DKIMResult, ...], lookup: TxtLookup
) -> DMARCResult:
    """The DMARC verdict for the From domain given the SPF and DKIM results."""
    if not from_domain:
        return DMARCResult(PERMERROR, from_domain, reason="no From domain")
    status, tags, at_org = discover(from_domain, lookup)
    if status == TEMPERROR:
        return DMARCResult(TEMPERROR, from_domain, reason="policy lookup failed")
    if tags is None:
        return DMARCResult(NONE, from_domain, reason="no DMARC record")
    policy = tags.get("p", "").lower()
    if at_org and tags.get("sp"):
        policy = tags["sp"].lower()
    if policy not in ("none", "quarantine", "reject"):
        policy = "none" if tags.get("rua") else policy  # §6.6.3: bad p= with rua is p=none
    spf_ok = spf.result == PASS and aligned(spf.domain, from_domain, tags.get("aspf", "r"))
    dkim_ok = any(
        r.trusted_pass and aligned(r.domain, from_domain, tags.get("adkim", "r")) for r in dkim
    )
    result = PASS if spf_ok or dkim_ok else FAIL
    return DMARCResult(
        result,
        from_domain,
        policy=policy or NONE,
        spf_aligned=spf_ok,
        dkim_aligned=dkim_ok,
        reason="aligned " + ("spf" if spf_ok else "dkim") if result == PASS else "no aligned pass",
    )
