"""DKIM and ARC verification with dkimpy, its DNS going through our resolver.

dkimpy blocks on DNS, so these run in a worker thread. Every signature is checked, not just
the first: a forwarded message carries the author's signature and the forwarder's, and the
trust rules look at each (DESIGN §4).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import dkim
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError

from mailledger.dns.resolver import DNSTempError
from mailledger.verify import dkimfast
from mailledger.verify.results import FAIL, NONE, PASS, PERMERROR, TEMPERROR, ARCResult, DKIMResult

# dkimpy's DNS hook: TXT text for a name, or None when there is none.
DNSFunc = Callable[..., bytes | str | None]
MAX_SIGNATURES = 10  # more is abuse; each costs a DNS lookup and a public-key operation
MIN_KEY_BITS = 1024  # RFC 8301 §3.2

dkimfast.install()


def _tag(sig: dict[bytes, bytes], name: bytes) -> str:
    return sig.get(name, b"").decode("ascii", "replace").strip()


def _covers_body(signer: dkim.DKIM, sig: dict[bytes, bytes]) -> bool:
    """Whether the signature's l= (if any) reaches the end of the canonicalized body."""
    length = sig.get(b"l")
    if length is None:
        return True
    try:
        policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
        body = policy.canonicalize_body(signer.body)
        return int(length) >= len(body)
    except (InvalidCanonicalizationPolicyError, ValueError):
        return False


def _signature_count(signer: dkim.DKIM) -> int:
    return sum(1 for name, _ in signer.headers if name.lower() == b"dkim-signature")


def verify_dkim(raw: bytes, dnsfunc: DNSFunc) -> tuple[DKIMResult, ...]:
    """The verdict of every DKIM signature, in header order (topmost first)."""
    try:
        signer = dkim.DKIM(raw, minkey=MIN_KEY_BITS)
    except dkim.DKIMException as exc:
        return (DKIMResult(PERMERROR, "", reason=f"unparseable message: {exc}"),)
    results = []
    for index in range(min(_signature_count(signer), MAX_SIGNATURES)):
        try:
            ok = signer.verify(idx=index, dnsfunc=dnsfunc)
            error = ""
        except DNSTempError as exc:
            ok, error = False, f"temperror: {exc}"
        except dkim.DKIMException as exc:
            ok, error = False, str(exc)
        sig = getattr(signer, "signature_fields", None) or {}
        domain = _tag(sig, b"d").lower()
        selector = _tag(sig, b"s")
        algorithm = _tag(sig, b"a")
        if not domain:
            prep = _prepared(signer, index)
            domain, selector, algorithm = prep
        if error.startswith("temperror"):
            result, reason = TEMPERROR, error
        elif ok:
            result, reason = PASS, ""
        elif error and ("missing public key" in error or "public key" in error.lower()):
            result, reason = PERMERROR, error
        else:
            result, reason = FAIL, error or "signature did not verify"
        covers = _covers_body(signer, sig) if sig else True
        if result == PASS and not covers:
            reason = "l= does not cover the whole body"
        results.append(DKIMResult(result, domain, selector, algorithm, covers, reason[:200]))
    return tuple(results)


def _prepared(signer: dkim.DKIM, index: int) -> tuple[str, str, str]:
    """d=, s=, a= of a signature that failed before dkimpy kept its fields."""
    try:
        prep = signer.verify_headerprep(idx=index)
    except dkim.DKIMException:
        return "", "", ""
    if not prep:
        return "", "", ""
    sig = prep[0]
    return _tag(sig, b"d").lower(), _tag(sig, b"s"), _tag(sig, b"a")


_I_TAG = re.compile(rb"(?:^|;)\s*i\s*=\s*(\d+)")
_H_TAG = re.compile(rb"(?:^|;)\s*h\s*=\s*([^;]*)")


def _newest_ams_headers(signer: dkim.DomainSigner) -> tuple[str, ...]:
    newest = -1
    names: tuple[str, ...] = ()
    for name, value in signer.headers:
        if name.lower() != b"arc-message-signature":
            continue
        unfolded = re.sub(rb"\s+", b" ", value)
        instance = _I_TAG.search(unfolded)
        if instance is None or int(instance.group(1)) <= newest:
            continue
        newest = int(instance.group(1))
        listed = _H_TAG.search(unfolded)
        text = listed.group(1).decode("ascii", "replace") if listed else ""
        names = tuple(n.strip().lower() for n in text.split(":") if n.strip())
    return names


def verify_arc(raw: bytes, dnsfunc: DNSFunc) -> ARCResult:
    """The ARC chain's validation (RFC 8617 §5.2) with each instance's sealer and results."""
    try:
        # dkimpy's arc_verify, keeping the parsed message for the AMS header list below.
        arc = dkim.ARC(raw, minkey=MIN_KEY_BITS)
        cv, instances, reason = arc.verify(dnsfunc=dnsfunc)
    except DNSTempError as exc:
        return ARCResult(TEMPERROR, reason=f"temperror: {exc}")
    except dkim.DKIMException as exc:
        cv, instances, reason = dkim.CV_Fail, [], str(exc)
    word = cv.decode("ascii").lower() if isinstance(cv, bytes) else (FAIL if cv is None else NONE)
    if word not in (PASS, FAIL, NONE):
        word = FAIL
    ordered = sorted(instances, key=lambda item: int(item.get("instance", 0)))
    sealers = tuple(
        (item.get("as-domain") or b"").decode("ascii", "replace").lower() for item in ordered
    )
    results = tuple((item.get("aar-value") or b"").decode("utf-8", "replace") for item in ordered)
    signed = _newest_ams_headers(arc) if word == PASS else ()
    return ARCResult(word, sealers, results, signed, str(reason)[:200])
