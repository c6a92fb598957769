"""DKIM and ARC verification with dkimpy, its DNS going through our resolver.

dkimpy blocks on DNS, so these run in a worker thread. Every signature is checked, not just
the first: a forwarded message carries the author's signature and the forwarder's, and the
trust rules look at each (DESIGN §4).

Signatures are checked up to a limit (``[verify] max_signatures``), the relevant first: the
one aligned with the From domain, then the forwarder's (the envelope sender's domain), then the
rest in header order. The others are recorded as "not checked (limit)", with the RFC 8601
result ``policy``: the message was signed, but we did not look (RFC 8601 §2.7.1).

dkimpy is given the header section only; body hashes come from ``bodyhash``, which reads the
body in pieces and hashes each canonicalization once for all of a message's signatures.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dkim
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError

from mailledger.dnsauth.orgdomain import organizational_domain
from mailledger.dnsauth.resolver import DNSBudgetExhaustedError, DNSTempError
from mailledger.verify.bodyhash import BodyHashes, body_start
from mailledger.verify.results import (
    FAIL,
    NONE,
    PASS,
    PERMERROR,
    POLICY,
    TEMPERROR,
    ARCResult,
    DKIMResult,
)

# dkimpy's DNS hook: TXT text for a name, or None when there is none.
DNSFunc = Callable[..., bytes | str | None]
DEFAULT_MAX_SIGNATURES = 5  # each costs a DNS lookup and a public-key operation
NOT_CHECKED = "not checked (limit)"
# Verdicts listed per message; a header section full of signatures ends in one summary line.
MAX_LISTED = 100
MIN_KEY_BITS = 1024  # RFC 8301 §3.2
_WHITESPACE = re.compile(rb"\s+")


Fields = list[list[bytes]]  # dkimpy's header fields: [name, value] in header order


@dataclass(frozen=True)
class SignedMessage:
    """A message split once for every signature check: dkimpy's header section, our body hashes.

    The header section is also parsed once (``fields``) for the DKIM and the ARC check alike.
    """

    headers: bytes
    body: BodyHashes
    _parsed: list[tuple[Fields, bytes | str] | Exception] = field(
        default_factory=list, repr=False, compare=False
    )

    def fields(self) -> tuple[Fields, bytes | str]:
        """dkimpy's own reading of the header section (``DomainSigner.set_message``).

        Parsed on first asking and kept, error included: the ARC check gets the same fields
        or the same error as the DKIM check. Each caller gets its own copy of the fields.
        """
        if not self._parsed:
            try:
                self._parsed.append(dkim.rfc822_parse(self.headers) if self.headers else ([], ""))
            except (dkim.DKIMException, IndexError) as exc:  # IndexError: a folded first line
                self._parsed.append(exc)
        found = self._parsed[0]
        if isinstance(found, Exception):
            raise found
        fields, body = found
        return [[name, value] for name, value in fields], body


def signed_message(raw: bytes) -> SignedMessage:
    """Split ``raw`` for ``verify_dkim`` and ``verify_arc``; their body hashes are shared."""
    start = body_start(raw)
    return SignedMessage(raw[:start], BodyHashes(raw, start))


def _signer(kind: Any, message: SignedMessage) -> Any:
    """A dkimpy verifier holding the message's fields, as ``kind(headers)`` would."""
    signer = kind(None, minkey=MIN_KEY_BITS)
    signer.headers, signer.body = message.fields()
    signer.body_hashes = message.body
    return signer


class _HashedBody:
    """dkimpy's signature check with the body hash taken from ``BodyHashes``.

    dkimpy holds only the header section (its body is empty). A signature's ``bh=`` is compared
    here, with dkimpy's own error; dkimpy then checks the header hash and the signature with
    ``bh=`` left out of the fields it would compare against its empty body. Fields dkimpy
    rejects (an unknown ``c=`` or ``a=``) go to dkimpy unchanged, for its own error.
    """

    body_hashes: BodyHashes
    tlsrpt: Any

    def verify_sig_process(
        self, sig: dict[bytes, bytes], include_headers: Any, sig_header: Any, dnsfunc: Any
    ) -> Any:
        if b"bh" in sig and self._body_matches(sig):
            sig = {name: value for name, value in sig.items() if name != b"bh"}
        return super().verify_sig_process(  # type: ignore[misc]
            sig, include_headers, sig_header, dnsfunc
        )

    def _body_matches(self, sig: dict[bytes, bytes]) -> bool:
        """True when ``bh=`` is right; raises dkimpy's error when it is not."""
        try:
            policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
        except InvalidCanonicalizationPolicyError:
            return False
        hasher = dkim.HASH_ALGORITHMS.get(sig.get(b"a", b""))
        if hasher is None:
            return False
        limit = int(sig[b"l"]) if b"l" in sig and not self.tlsrpt else None
        digest = self.body_hashes.digest(policy.body_algorithm.name, hasher().name, limit)
        try:
            expected = base64.b64decode(_WHITESPACE.sub(b"", sig[b"bh"]))
        except (TypeError, binascii.Error) as exc:
            # dkimpy validates the form of b= where it means bh=, so a malformed bh= of a
            # length divisible by 4 gets here: a broken signature, not a broken message.
            raise dkim.MessageFormatError(str(exc)) from exc
        if digest != expected:
            raise dkim.ValidationError(
                f"body hash mismatch (got {base64.b64encode(digest)!r}, expected {sig[b'bh']!r})"
            )
        return True


class _DKIM(_HashedBody, dkim.DKIM):  # type: ignore[misc]
    pass


class _ARC(_HashedBody, dkim.ARC):  # type: ignore[misc]
    pass


def _tag(sig: dict[bytes, bytes], name: bytes) -> str:
    return sig.get(name, b"").decode("ascii", "replace").strip()


def _covers_body(body: BodyHashes, sig: dict[bytes, bytes]) -> bool:
    """Whether the signature's l= (if any) reaches the end of the canonicalized body."""
    length = sig.get(b"l")
    if length is None:
        return True
    try:
        policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
        return int(length) >= body.length(policy.body_algorithm.name)
    except (InvalidCanonicalizationPolicyError, ValueError):
        return False


_TAG = re.compile(rb"(?:^|;)\s*([a-z]+)\s*=\s*([^;]*)")


def _listed_signatures(signer: dkim.DKIM) -> list[dict[bytes, bytes]]:
    """The tags of every DKIM-Signature, in header order, read without verifying anything."""
    listed = []
    for name, value in signer.headers:
        if name.lower() == b"dkim-signature":
            unfolded = _WHITESPACE.sub(b" ", bytes(value))
            listed.append({m.group(1): m.group(2).strip() for m in _TAG.finditer(unfolded)})
    return listed


def _relevance(listed: list[dict[bytes, bytes]], prefer: Sequence[str]) -> list[int]:
    """Signature indexes, most relevant first: aligned with ``prefer[0]``, then ``prefer[1]``…

    Alignment is relaxed, as DMARC's (RFC 7489 §3.1.1): the same organisational domain.
    """
    wanted = [organizational_domain(d) for d in prefer if d]

    def rank(index: int) -> tuple[int, int]:
        domain = _tag(listed[index], b"d").lower()
        org = organizational_domain(domain) if domain else ""
        place = wanted.index(org) if org in wanted else len(wanted)
        return place, index

    return sorted(range(len(listed)), key=rank)


def _split(message: bytes | SignedMessage) -> SignedMessage:
    return message if isinstance(message, SignedMessage) else signed_message(message)


def verify_dkim(
    message: bytes | SignedMessage,
    dnsfunc: DNSFunc,
    *,
    limit: int = DEFAULT_MAX_SIGNATURES,
    prefer: Sequence[str] = (),
) -> tuple[DKIMResult, ...]:
    """The verdict of every DKIM signature, in header order (topmost first).

    At most ``limit`` are checked, chosen by relevance to the ``prefer`` domains (the From
    domain, then the forwarder's); the others, and any left when the message's DNS budget
    runs out, are ``policy`` with the reason "not checked (limit)".
    """
    split = _split(message)
    try:
        signer = _signer(_DKIM, split)
    except (dkim.DKIMException, IndexError) as exc:  # IndexError: a folded first line
        return (DKIMResult(PERMERROR, "", reason=f"unparseable message: {exc}"),)
    listed = _listed_signatures(signer)
    verdicts: dict[int, DKIMResult] = {}
    for index in _relevance(listed, prefer)[:limit]:
        try:
            verdicts[index] = _verify_one(signer, split.body, index, dnsfunc)
        except DNSBudgetExhaustedError:
            break
    results = [verdicts.get(i) or _not_checked(sig) for i, sig in enumerate(listed)]
    if len(results) > MAX_LISTED:
        shown = [r for i, r in enumerate(results) if i in verdicts]
        shown += [r for i, r in enumerate(results) if i not in verdicts]
        more = len(results) - (MAX_LISTED - 1)
        summary = DKIMResult(POLICY, "", reason=f"{more} more signatures {NOT_CHECKED}")
        results = [*shown[: MAX_LISTED - 1], summary]
    return tuple(results)


def _not_checked(sig: dict[bytes, bytes]) -> DKIMResult:
    return DKIMResult(
        POLICY, _tag(sig, b"d").lower(), _tag(sig, b"s"), _tag(sig, b"a"), reason=NOT_CHECKED
    )


def _verify_one(signer: dkim.DKIM, body: BodyHashes, index: int, dnsfunc: DNSFunc) -> DKIMResult:
    """One signature's verdict; ``DNSBudgetExhaustedError`` passes through to the caller."""
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
        domain, selector, algorithm = _prepared(signer, index)
    if error.startswith("temperror"):
        result, reason = TEMPERROR, error
    elif ok:
        result, reason = PASS, ""
    elif error and ("missing public key" in error or "public key" in error.lower()):
        result, reason = PERMERROR, error
    else:
        result, reason = FAIL, error or "signature did not verify"
    covers = _covers_body(body, sig) if sig else True
    if result == PASS and not covers:
        reason = "l= does not cover the whole body"
    return DKIMResult(result, domain, selector, algorithm, covers, reason[:200])


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
        unfolded = _WHITESPACE.sub(b" ", value)
        instance = _I_TAG.search(unfolded)
        if instance is None or int(instance.group(1)) <= newest:
            continue
        newest = int(instance.group(1))
        listed = _H_TAG.search(unfolded)
        text = listed.group(1).decode("ascii", "replace") if listed else ""
        names = tuple(n.strip().lower() for n in text.split(":") if n.strip())
    return names


def verify_arc(message: bytes | SignedMessage, dnsfunc: DNSFunc) -> ARCResult:
    """The ARC chain's validation (RFC 8617 §5.2) with each instance's sealer and results."""
    split = _split(message)
    try:
        # dkimpy's arc_verify, keeping the parsed message for the AMS header list below.
        arc = _signer(_ARC, split)
        cv, instances, reason = arc.verify(dnsfunc=dnsfunc)
    except DNSTempError as exc:
        return ARCResult(TEMPERROR, reason=f"temperror: {exc}")
    except DNSBudgetExhaustedError as exc:
        # A chain we could not finish checking vouches for nothing (RFC 8617 §5.2: cv=fail).
        return ARCResult(FAIL, reason=f"not checked: {exc}")
    except IndexError:  # dkimpy's parser on a folded first line
        cv, instances, reason = dkim.CV_Fail, [], "unparseable message"
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
