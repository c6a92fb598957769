"""Authentication-Results (RFC 8601): the header we stamp, and the ones we believe or remove.

A header claiming our authserv-id that arrived from outside is a forgery or a loop: it is
removed from the stored copy and never read (RFC 8601 §5). A trusted gateway's header (its
own authserv-id, from its own network) is read instead of checking again.
"""

from __future__ import annotations

import re

import authres
import authres.arc
import authres.dmarc

from mailledger.verify.results import (
    NONE,
    ARCResult,
    AuthOutcome,
    DKIMResult,
    DMARCResult,
    SPFResult,
)

# Only Authentication-Results is removed: deleting an ARC-Authentication-Results would break
# the ARC chain for everyone after us, so ARC fields claiming our id are ignored instead.
_AR_FIELD = re.compile(rb"^authentication-results[ \t]*:", re.I)


def build_header(authserv_id: str, auth: AuthOutcome) -> str:
    """One Authentication-Results header for everything we checked."""
    results: list[object] = []
    if auth.spf.identity:
        results.append(
            authres.SPFAuthenticationResult(result=auth.spf.result, smtp_mailfrom=auth.spf.identity)
        )
    else:
        results.append(
            authres.SPFAuthenticationResult(result=auth.helo.result, smtp_helo=auth.helo.identity)
        )
    if auth.dkim:
        for item in auth.dkim:
            results.append(
                authres.DKIMAuthenticationResult(
                    result=item.result,
                    header_d=item.domain,
                    header_s=item.selector or None,
                    reason=item.reason or None,
                )
            )
    else:
        results.append(authres.DKIMAuthenticationResult(result=NONE))
    results.append(authres.arc.ARCAuthenticationResult(result=auth.arc.result))
    results.append(
        authres.dmarc.DMARCAuthenticationResult(
            result=auth.dmarc.result, header_from=auth.dmarc.from_domain or None
        )
    )
    header = authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=results)
    return str(header)


def _field_authserv_id(value: bytes) -> str:
    text = value.decode("ascii", "replace")
    text = re.sub(r"\([^)]*\)", " ", text)  # comments may precede the id
    head = text.split(";", 1)[0].split()
    return head[0].lower() if head else ""


def _without_our_fields(raw: bytes, authserv_id: str) -> tuple[bytes, int]:
    """The header section through its empty line, less the fields claiming our authserv-id,
    and where the body starts. A message without an empty line is kept whole, as body."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return b"", 0
    fields: list[list[bytes]] = []
    for line in raw[:end].split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    kept: list[bytes] = []
    ours = authserv_id.lower()
    for lines in fields:
        if _AR_FIELD.match(lines[0]):
            value = b" ".join(lines).split(b":", 1)[1]
            if _field_authserv_id(value) == ours:
                continue
        kept.extend(lines)
    return b"\r\n".join(kept) + b"\r\n\r\n", end + 4


def stamp(raw: bytes, authserv_id: str, auth: AuthOutcome) -> tuple[bytes, memoryview]:
    """The copy we keep for users: forged headers of ours removed, our verdict on top.

    In two pieces to store one after the other (``BlobBackend.put_pieces``): the new header
    section, and the body as a view of ``raw``, so a large message is not copied whole.
    """
    head, start = _without_our_fields(raw, authserv_id)
    ours = build_header(authserv_id, auth).encode("utf-8") + b"\r\n"
    return ours + head, memoryview(raw)[start:]


def from_gateway(value: str, from_domain: str) -> AuthOutcome | None:
    """Read a trusted gateway's Authentication-Results into our vocabulary."""
    try:
        header = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + value)
    except authres.AuthResError:
        return None
    spf = SPFResult(NONE, "", "")
    helo = SPFResult(NONE, "", "")
    dkim: list[DKIMResult] = []
    arc = ARCResult(NONE)
    dmarc = DMARCResult(NONE, from_domain)
    for result in header.results:
        props = {f"{p.type}.{p.name}".lower(): str(p.value) for p in result.properties}
        method = result.method.lower()
        word = str(result.result).lower()
        if method == "spf":
            identity = props.get("smtp.mailfrom", "")
            domain = identity.rpartition("@")[2].lower()
            if identity:
                spf = SPFResult(word, identity, domain, reason="gateway")
            else:
                helo_name = props.get("smtp.helo", "")
                helo = SPFResult(word, helo_name, helo_name.lower(), reason="gateway")
        elif method == "dkim":
            # Gmail names the signer by header.i=@domain only (RFC 8601 §2.7.1: either).
            signer = props.get("header.d") or props.get("header.i", "").rpartition("@")[2]
            dkim.append(
                DKIMResult(
                    word,
                    signer.lower(),
                    props.get("header.s", ""),
                    reason="gateway",
                )
            )
        elif method == "arc":
            arc = ARCResult(word, reason="gateway")
        elif method == "dmarc":
            dmarc = DMARCResult(
                word, props.get("header.from", from_domain).lower(), reason="gateway"
            )
    return AuthOutcome(
        spf=spf, helo=helo, dkim=tuple(dkim), arc=arc, dmarc=dmarc, gateway=header.authserv_id
    )
