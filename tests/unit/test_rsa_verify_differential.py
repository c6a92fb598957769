"""dkimpy's own RSA verification and ours (OpenSSL, ``dkimfast.rsa_verify``) agree on every verdict.

Both verifiers see the same inputs and must answer alike, True, False or the same exception:

- signatures alone: valid, bit-flipped, truncated, padded with leading zeros or trailing bytes,
  raised by a multiple of the modulus, random; keys of 1024, 2048 and 4096 bits, short ones on
  either side of the size a digest needs, e=3 and unusual exponents (1, even, 65 bits, as large
  as the modulus), even and multi-prime moduli, one over OpenSSL's 16384 bits; flipped keys;
- whole messages, through ``verify_dkim`` and ``verify_arc`` (and dkimpy's ``arc_verify``):
  the published ARC suite, read in place from ``shared/vectors``; the repository's signed
  fixtures (``testing.forwarding``); and signed messages with a bit flipped in the signature,
  the body, a header or the published key, truncated, padded, short keys and the rest.

Everything random is seeded. ``MAILLEDGER_RSA_DIFF_CASES`` sets how many random signatures are
compared (default 2000; a tenth as many random messages), to run a longer search.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import os
import random
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import dkim
import dkim.crypto
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from mailledger.testing.forwarding import (
    SigningKey,
    arc_seal,
    dkim_sign,
    gmail_forward,
    m365_forward,
    make_key,
)
from mailledger.testing.mail import make_email
from mailledger.testing.vectors import load_suite
from mailledger.verify import dkimfast
from mailledger.verify.signatures import verify_arc, verify_dkim

Verify = Callable[[Any, bytes, dict[str, int]], bool]
DKIMPY = cast("Verify", dkimfast.original_verify())
OURS: Verify = dkimfast.rsa_verify
CASES = int(os.environ.get("MAILLEDGER_RSA_DIFF_CASES", "2000"))
SUITE = "arc/arc-draft-validation-tests.yml"
HASHES = {"sha256": hashlib.sha256, "sha1": hashlib.sha1}


# -- keys --------------------------------------------------------------------------------------


def _is_prime(n: int, rng: random.Random) -> bool:
    if n < 2:
        return False
    for small in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47):
        if n % small == 0:
            return n == small
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(12):
        x = pow(rng.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(rng: random.Random, bits: int, e: int) -> int:
    """A prime of exactly ``bits`` bits with ``e`` invertible modulo p - 1."""
    while True:
        candidate = rng.getrandbits(bits) | (1 << (bits - 1)) | 1
        if math.gcd(e, candidate - 1) == 1 and _is_prime(candidate, rng):
            return candidate


@dataclass(frozen=True)
class Key:
    """An RSA key as a list of distinct primes (2 allowed) and a public exponent."""

    primes: tuple[int, ...]
    e: int

    @property
    def n(self) -> int:
        return math.prod(self.primes)

    @property
    def public(self) -> dict[str, int]:
        """What dkimpy's ``parse_public_key`` gives for this key."""
        return {"modulus": self.n, "publicExponent": self.e}

    @property
    def length(self) -> int:
        return max(1, (self.n.bit_length() + 7) // 8)

    def sign(self, digest: Any) -> bytes:
        """RSASSA-PKCS1-v1_5: by OpenSSL for a key it takes, else by the CRT in Python."""
        private = _openssl_private(self)
        if private is not None and digest.name in ("sha1", "sha256"):
            algorithm = hashes.SHA256() if digest.name == "sha256" else hashes.SHA1()
            try:
                return private.sign(digest.digest(), padding.PKCS1v15(), Prehashed(algorithm))
            except ValueError as exc:
                raise dkim.crypto.DigestTooLargeError() from exc
        encoded = int.from_bytes(dkim.crypto.EMSA_PKCS1_v1_5_encode(digest, self.length), "big")
        n, value = self.n, 0
        for p in self.primes:
            part = encoded % 2 if p == 2 else pow(encoded, pow(self.e, -1, p - 1), p)
            rest = n // p
            value += part * rest * pow(rest, -1, p)
        return (value % n).to_bytes(self.length, "big")

    def with_exponent(self, e: int) -> Key:
        """The same primes with the next exponent from ``e`` that has an inverse."""
        while any(p != 2 and math.gcd(e, p - 1) != 1 for p in self.primes):
            e += 2
        return Key(self.primes, e)


@functools.cache
def _openssl_private(key: Key) -> rsa.RSAPrivateKey | None:
    """The key in OpenSSL when it is an ordinary two-prime key (signing in Python is slow)."""
    if len(key.primes) != 2 or 2 in key.primes:
        return None
    p, q = key.primes
    try:
        d = pow(key.e, -1, math.lcm(p - 1, q - 1))
        numbers = rsa.RSAPrivateNumbers(
            p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(key.e, key.n)
        )
        return numbers.private_key(unsafe_skip_rsa_key_validation=True)
    except ValueError:
        return None


def _der_length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(body)) + body


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def public_der(n: int, e: int) -> bytes:
    """SubjectPublicKeyInfo with an RSAPublicKey, as published in p=."""
    rsa_key = _der(0x30, _der_int(n) + _der_int(e))
    algorithm = _der(0x30, _der(0x06, bytes.fromhex("2a864886f70d010101")) + _der(0x05, b""))
    return _der(0x30, algorithm + _der(0x03, b"\x00" + rsa_key))


def record(n: int, e: int) -> bytes:
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(public_der(n, e))


def private_pem(key: Key) -> bytes:
    """An RSAPrivateKey dkimpy parses; only the modulus is used (``signing_with`` signs)."""
    fields = (0, key.n, key.e, 1, 1, 1, 1, 1, 1)
    body = base64.encodebytes(_der(0x30, b"".join(_der_int(v) for v in fields)))
    return b"-----BEGIN RSA PRIVATE KEY-----\n" + body + b"-----END RSA PRIVATE KEY-----\n"


@functools.cache
def _generated(bits: int, e: int) -> Key:
    numbers = rsa.generate_private_key(public_exponent=e, key_size=bits).private_numbers()
    return Key((numbers.p, numbers.q), e)


@functools.cache
def _generated_primes(count: int) -> tuple[int, ...]:
    """``count`` distinct 512-bit primes (e=65537 invertible), from OpenSSL's generator."""
    found: list[int] = []
    while len(found) < count:
        numbers = _generated_uncached(1024)
        found += [p for p in (numbers.p, numbers.q) if p not in found]
    return tuple(found[:count])


def _generated_uncached(bits: int) -> rsa.RSAPrivateNumbers:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits).private_numbers()


@functools.cache
def _composed(seed: int, sizes: tuple[int, ...], e: int, *, even: bool = False) -> Key:
    rng = random.Random(seed)
    primes: list[int] = []
    while len(primes) < len(sizes):
        p = _prime(rng, sizes[len(primes)], e)
        if p not in primes:
            primes.append(p)
    return Key((2, *primes) if even else tuple(primes), e)


def _short(bits: int, e: int) -> Key:
    """A two-prime key of exactly ``bits`` bits (below what cryptography generates)."""
    seed = bits * 7 + e
    while True:
        key = _composed(seed, (bits // 2, bits - bits // 2), e)
        if key.n.bit_length() == bits:
            return key
        seed += 1000


@functools.cache
def keys() -> dict[str, Key]:
    """Every kind of key the comparison covers, by name."""
    k1024, k2048, k4096 = (_generated(b, 65537) for b in (1024, 2048, 4096))
    found = {
        "1024": k1024,
        "2048": k2048,
        "4096": k4096,
        "2048 e=3": _generated(2048, 3),
        "1024 e=3": k1024.with_exponent(3),
        "4096 e=3": k4096.with_exponent(3),
        "2048 e=17": k2048.with_exponent(17),
        "2048 e=2^64+1": k2048.with_exponent(2**64 + 1),
        "4096 e=2^64+1 (over OpenSSL's limit)": k4096.with_exponent(2**64 + 1),
        "3072 e=2^64+1": Key((k4096.primes[0], k2048.primes[0]), 3).with_exponent(2**64 + 1),
        "1024 e≈n": k1024.with_exponent(k1024.n // 3 | 1),
        "2048 e=1": Key(k2048.primes, 1),
        "2048 e=65536 (even)": Key(k2048.primes, 65536),
        "1024 e=n+2": Key(k1024.primes, k1024.n + 2),
        "512": _short(512, 65537),
        "768 e=3": _short(768, 3),
        "multi-prime 1536": Key(_generated_primes(3), 65537),
        "even modulus": Key((2, *_generated_primes(2)), 65537),
        "over 16384 bits": Key(_generated_primes(33), 65537),
    }
    # Moduli on either side of what each digest needs: 46 bytes for SHA-1, 62 for SHA-256.
    for bits in (360, 361, 368, 369, 376, 480, 488, 489, 496, 497, 504):
        found[f"{bits} bits"] = _short(bits, 65537)
    return found


# -- one verification, both ways ----------------------------------------------------------------


def outcome(verify: Verify, hash_name: str, data: bytes, signature: bytes, key: Any) -> str:
    """A verdict as text: the answer, or the exception dkimpy's caller would see."""
    digest = dkim.HashThrough(HASHES[hash_name](data)) if hash_name in HASHES else None
    if digest is None:
        digest = dkim.HashThrough(hashlib.new(hash_name, data))
    try:
        return repr(verify(digest, signature, key))
    except Exception as exc:  # noqa: BLE001 - the exception is the verdict
        return f"{type(exc).__name__}: {exc}"


def _flip_bit(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return b"\x01"
    at = rng.randrange(len(data))
    return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]


def _signature(key: Key, hash_name: str, data: bytes, rng: random.Random) -> bytes:
    """The key's signature, or random bytes where it can have none (even e, a short key)."""
    try:
        return key.sign(HASHES[hash_name](data))
    except (ValueError, dkim.crypto.DigestTooLargeError):
        return rng.randbytes(key.length)


def _mutations(
    key: Key, hash_name: str, data: bytes, rng: random.Random
) -> Iterator[tuple[str, str, bytes, bytes, Any]]:
    """(what, hash, data, signature, public key) for one key and message, mutated."""
    valid = _signature(key, hash_name, data, rng)
    public, n = key.public, key.n
    value = int.from_bytes(valid, "big")
    yield "valid", hash_name, data, valid, public
    yield "bit flipped", hash_name, data, _flip_bit(valid, rng), public
    yield "leading zeros", hash_name, data, b"\x00" * rng.randint(1, 9) + valid, public
    yield "zeros stripped", hash_name, data, valid.lstrip(b"\x00"), public
    yield (
        "plus modulus",
        hash_name,
        data,
        (value + n * rng.randint(1, 3)).to_bytes(key.length + 2, "big"),
        public,
    )
    yield "truncated end", hash_name, data, valid[: rng.randrange(len(valid))], public
    yield "truncated start", hash_name, data, valid[rng.randrange(1, len(valid) + 1) :], public
    yield "padded end", hash_name, data, valid + rng.randbytes(rng.randint(1, 4)), public
    yield "random", hash_name, data, rng.randbytes(rng.randrange(2 * key.length)), public
    yield "empty", hash_name, data, b"", public
    yield "modulus", hash_name, data, n.to_bytes(key.length, "big"), public
    yield "modulus - 1", hash_name, data, (n - 1).to_bytes(key.length, "big"), public
    yield "one", hash_name, data, b"\x01", public
    yield "all ff", hash_name, data, b"\xff" * key.length, public
    yield "other data", hash_name, _flip_bit(data, rng), valid, public
    other = "sha1" if hash_name == "sha256" else "sha256"
    yield "other hash", other, data, valid, public
    yield "sha512 digest", "sha512", data, valid, public
    flipped = n ^ (1 << rng.randrange(n.bit_length()))
    yield (
        "modulus bit flipped",
        hash_name,
        data,
        valid,
        {"modulus": flipped, "publicExponent": key.e},
    )
    yield "exponent + 2", hash_name, data, valid, {"modulus": n, "publicExponent": key.e + 2}
    yield "no exponent", hash_name, data, valid, {"modulus": n}
    yield "modulus 0", hash_name, data, valid, {"modulus": 0, "publicExponent": key.e}


def _disagreements(cases: Iterator[tuple[str, str, bytes, bytes, Any]]) -> tuple[int, list[str]]:
    count, differ = 0, []
    for what, hash_name, data, signature, public in cases:
        count += 1
        theirs = outcome(DKIMPY, hash_name, data, signature, public)
        ours = outcome(OURS, hash_name, data, signature, public)
        if theirs != ours:
            bits = public.get("modulus", 0).bit_length()
            differ.append(f"{what} ({hash_name}, {bits} bits): dkimpy {theirs}, ours {ours}")
    return count, differ


# -- signatures ---------------------------------------------------------------------------------


def test_ordinary_keys_go_to_openssl_and_the_rest_to_dkimpy() -> None:
    """The comparison below exercises OpenSSL for real keys, and dkimpy's code for odd ones."""
    known = keys()
    assert known["3072 e=2^64+1"].n.bit_length() == 3072  # OpenSSL's limit on e starts above
    for name in (
        "1024",
        "2048",
        "4096",
        "2048 e=3",
        "4096 e=3",
        "2048 e=2^64+1",
        "3072 e=2^64+1",
        "1024 e≈n",
        "512",
    ):
        assert dkimfast.openssl_public_key(known[name].e, known[name].n) is not None, name
    for name in (
        "4096 e=2^64+1 (over OpenSSL's limit)",
        "2048 e=1",
        "2048 e=65536 (even)",
        "1024 e=n+2",
        "even modulus",
        "over 16384 bits",
    ):
        assert dkimfast.openssl_public_key(known[name].e, known[name].n) is None, name


def test_every_key_kind_agrees_on_every_mutation() -> None:
    """Each kind of key, both digests, each mutation once: the same verdict from both."""
    rng = random.Random(8017)
    cases = (
        case
        for key in keys().values()
        for hash_name in HASHES
        for case in _mutations(key, hash_name, rng.randbytes(40), rng)
    )
    count, differ = _disagreements(cases)
    assert count > 1000
    assert not differ, "\n".join(differ[:20])


def test_dkimpys_rules_are_kept() -> None:
    """What dkimpy accepts that OpenSSL alone would not, and what it refuses, stays so."""
    known = keys()
    data = b"message"
    key = known["2048"]
    valid = key.sign(hashlib.sha256(data))
    raised = (int.from_bytes(valid, "big") + key.n).to_bytes(300, "big")
    for verify in (DKIMPY, OURS):
        assert outcome(verify, "sha256", data, valid, key.public) == "True"
        assert outcome(verify, "sha256", data, b"\x00\x00" + valid, key.public) == "True"
        assert outcome(verify, "sha256", data, raised, key.public) == "True"
        assert outcome(verify, "sha1", data, valid, key.public) == "False"
        for name in ("2048 e=1", "even modulus", "4096 e=2^64+1 (over OpenSSL's limit)"):
            odd = known[name]
            assert outcome(verify, "sha1", data, odd.sign(hashlib.sha1(data)), odd.public) == "True"
        # A modulus shorter than the digest's encoding is dkimpy's "digest too large".
        small = known["488 bits"]
        assert outcome(verify, "sha256", data, b"\x01", small.public) == "DigestTooLargeError: "
        assert outcome(verify, "sha1", data, small.sign(hashlib.sha1(data)), small.public) == "True"


def _naive(digest: Any, signature: bytes, public_key: dict[str, int]) -> bool:
    """OpenSSL on its own: no reduction, no fallback. dkimpy's rules are what it lacks."""
    key = rsa.RSAPublicNumbers(public_key["publicExponent"], public_key["modulus"]).public_key()
    algorithm = hashes.SHA256() if digest.name == "sha256" else hashes.SHA1()
    try:
        key.verify(signature, digest.digest(), padding.PKCS1v15(), Prehashed(algorithm))
    except InvalidSignature:
        return False
    return True


def test_the_comparison_catches_a_verifier_without_dkimpys_rules() -> None:
    """Run against plain OpenSSL, the same cases find differences: the comparison can fail."""
    rng = random.Random(8017)
    found = []
    for name in ("2048", "even modulus", "2048 e=1", "4096 e=2^64+1 (over OpenSSL's limit)"):
        for what, hash_name, data, signature, public in _mutations(
            keys()[name], "sha256", rng.randbytes(40), rng
        ):
            if hash_name not in HASHES:
                continue
            if outcome(DKIMPY, hash_name, data, signature, public) != outcome(
                _naive, hash_name, data, signature, public
            ):
                found.append(f"{name}: {what}")
    assert "2048: leading zeros" in found
    assert "2048: plus modulus" in found
    assert "even modulus: valid" in found
    assert "2048 e=1: valid" in found
    assert "4096 e=2^64+1 (over OpenSSL's limit): valid" in found


def test_random_signatures_agree() -> None:
    """``CASES`` seeded random keys, digests, messages and mutations."""
    rng = random.Random(6376)
    slow = ("over 16384 bits", "1024 e≈n", "1024 e=n+2")  # minutes in Python at this count
    weighted = [k for name, k in keys().items() if name not in slow]
    weighted += [keys()["1024"], keys()["2048"], keys()["2048 e=3"]] * 4

    def cases() -> Iterator[tuple[str, str, bytes, bytes, Any]]:
        made = 0
        while made < CASES:
            key = rng.choice(weighted)
            hash_name = rng.choice(("sha256", "sha1"))
            for case in _mutations(key, hash_name, rng.randbytes(rng.randrange(200)), rng):
                if rng.random() < 0.3:
                    made += 1
                    yield case

    count, differ = _disagreements(cases())
    assert count >= CASES
    assert not differ, "\n".join(differ[:20])


# -- whole messages -----------------------------------------------------------------------------


@contextmanager
def verifying_with(verify: Verify) -> Iterator[None]:
    """dkimpy's verification seam set to ``verify`` for the block."""
    before = dkim.RSASSA_PKCS1_v1_5_verify
    dkim.RSASSA_PKCS1_v1_5_verify = verify
    try:
        yield
    finally:
        dkim.RSASSA_PKCS1_v1_5_verify = before


@contextmanager
def signing_with(signers: dict[int, Key]) -> Iterator[None]:
    """dkimpy's signing seam signs with our keys (by modulus), whatever their exponent."""
    before = dkim.RSASSA_PKCS1_v1_5_sign

    def sign(digest: Any, private_key: dict[str, int]) -> bytes:
        return signers[private_key["modulus"]].sign(digest)

    dkim.RSASSA_PKCS1_v1_5_sign = sign
    try:
        yield
    finally:
        dkim.RSASSA_PKCS1_v1_5_sign = before


Records = dict[str, bytes]


def dnsfunc_for(records: Records) -> Callable[..., bytes | None]:
    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        return records.get(text.rstrip(".").lower())

    return dnsfunc


def verdicts(raw: bytes, records: Records) -> tuple[object, ...]:
    """Every verdict the message gets: dkimpy's own ARC result, and ours for DKIM and ARC."""
    dnsfunc = dnsfunc_for(records)
    try:
        arc_raw: object = dkim.arc_verify(raw, dnsfunc=dnsfunc)
    except Exception as exc:  # noqa: BLE001 - the exception is the verdict
        arc_raw = f"{type(exc).__name__}: {exc}"
    found: list[object] = [arc_raw]
    for check in (verify_dkim, verify_arc):
        try:
            found.append(check(raw, dnsfunc))
        except Exception as exc:  # noqa: BLE001 - the same exception from both is agreement
            found.append(f"{type(exc).__name__}: {exc}")
    return tuple(found)


Tally = dict[str, int]


def both(
    raw: bytes, records: Records, tally: Tally | None = None
) -> tuple[tuple[object, ...], tuple[object, ...]]:
    """The verdicts with dkimpy's verifier, then with ours (counting its answers in ``tally``)."""
    counts = {} if tally is None else tally

    def ours_counted(digest: Any, signature: bytes, public_key: dict[str, int]) -> bool:
        answer = repr(OURS(digest, signature, public_key))  # an exception is not counted
        counts[answer] = counts.get(answer, 0) + 1
        return answer == "True"

    with verifying_with(DKIMPY):
        theirs = verdicts(raw, records)
    with verifying_with(ours_counted):
        ours = verdicts(raw, records)
    return theirs, ours


def test_published_arc_suite_agrees() -> None:
    """Every ARC validation test as published, and twice changed at random (message or key)."""
    documents = load_suite(SUITE)
    if documents is None:
        pytest.skip(f"test vectors not found: {SUITE}")
    rng = random.Random(8617)
    checked, differ = 0, []
    tally: Tally = {}
    for scenario in documents:
        records = {
            name.lower(): str(text).encode() for name, text in scenario["txt-records"].items()
        }
        for test_id, test in scenario["tests"].items():
            message = str(test["message"]).encode("utf-8")
            variants = [(message, records)]
            variants += [_mutated_message(message, records, rng) for _ in range(2)]
            for variant, published in variants:
                theirs, ours = both(variant, published, tally)
                checked += 1
                if theirs != ours:
                    differ.append(f"{test_id}: dkimpy {theirs}, ours {ours}")
    assert checked > 100
    assert tally["True"] > 50 and tally["False"] > 20, tally  # the RSA step was reached
    assert not differ, "\n".join(differ[:10])


def _fixtures() -> Iterator[tuple[str, bytes, Records]]:
    """The repository's signed messages, as the trust and signature tests build them."""
    client = make_key("client.example", "s1")
    client_ed = make_key("client.example", "ed", "ed25519")
    google = make_key("google.com", "arc-20160816")
    microsoft = make_key("microsoft.com", "arcselector9901")
    records = {key.record_name: key.txt.encode() for key in (client, client_ed, google, microsoft)}
    original = make_email()
    signed = dkim_sign(original, client)
    variants = {
        "dkim relaxed/simple": signed,
        "dkim simple/simple": dkim_sign(original, client, canonicalize=(b"simple", b"simple")),
        "dkim rsa-sha1": dkim_sign(original, client, sha1=True),
        "dkim l=": dkim_sign(original, client, body_length=True) + b"appended\r\n",
        "dkim ed25519 and rsa": dkim_sign(signed, client_ed),
        "gmail forward": gmail_forward(signed, "r@gmail.com", "r@acme.capture.example", google)[1],
        "m365 forward": m365_forward(
            signed, "richard@acme.example", "r@acme.capture.example", microsoft
        )[1],
    }
    variants["forward of a forward"] = arc_seal(
        variants["gmail forward"], microsoft, "mx.microsoft.com", "arc=pass"
    )
    for name, raw in variants.items():
        yield name, raw, records


def test_repository_fixtures_agree() -> None:
    """The fixtures verify, and both verifiers say so, signature by signature."""
    for name, raw, records in _fixtures():
        theirs, ours = both(raw, records)
        assert theirs == ours, name
        dkim_results = cast("tuple[Any, ...]", ours[1])
        assert dkim_results[0].result == "pass", (name, dkim_results)


_B_TAG = re.compile(rb"(\bb=)([A-Za-z0-9+/=\s]+)")
_P_TAG = re.compile(rb"(p=)([A-Za-z0-9+/=\s]+)")


def _edit_tag_value(raw: bytes, pattern: re.Pattern[bytes], rng: random.Random) -> bytes:
    """One b= (or p=) value rewritten: a bit flipped, cut, padded, zeros in front, raised by n."""
    found = list(pattern.finditer(raw))
    if not found:
        return _flip_bit(raw, rng)
    match = rng.choice(found)
    text = re.sub(rb"\s+", b"", match.group(2))
    try:
        value = base64.b64decode(text + b"=" * (-len(text) % 4))
    except ValueError:
        value = b""
    choice = rng.randrange(6)
    if choice == 0:
        value = _flip_bit(value, rng)
    elif choice == 1:
        value = value[: rng.randrange(len(value) + 1)]
    elif choice == 2:
        value = b"\x00" * rng.randint(1, 6) + value
    elif choice == 3:
        value += rng.randbytes(rng.randint(1, 3))
    elif choice == 4:
        new_text = text[: rng.randrange(len(text) + 1)]  # cut mid-base64
        return raw[: match.start(2)] + new_text + raw[match.end(2) :]
    else:
        number = int.from_bytes(value, "big")
        value = (number * (1 + rng.randrange(2)) + 1).to_bytes(len(value) + 1, "big")
    return raw[: match.start(2)] + base64.b64encode(value) + raw[match.end(2) :]


def _mutated_message(raw: bytes, records: Records, rng: random.Random) -> tuple[bytes, Records]:
    """One random change to a signed message or to one of its published keys."""
    choice = rng.randrange(7)
    if choice <= 1:
        return _edit_tag_value(raw, _B_TAG, rng), records
    if choice in (2, 3):  # a bit flipped in the body, or in the header section
        end = re.search(rb"\r?\n\r?\n", raw)
        split = end.end() if end else len(raw)
        if choice == 2:
            return raw[:split] + _flip_bit(raw[split:], rng), records
        return _flip_bit(raw[:split], rng) + raw[split:], records
    if choice == 4:
        return raw[: rng.randrange(len(raw) + 1)], records
    name = rng.choice(sorted(records)) if records else ""
    if not name:
        return raw, records
    changed = dict(records)
    if choice == 5:
        changed[name] = _edit_tag_value(records[name], _P_TAG, rng)
    else:
        changed[name] = records[name][: rng.randrange(len(records[name]) + 1)]
    return raw, changed


MESSAGE_KEYS = (
    "1024",
    "2048",
    "4096",
    "2048 e=3",
    "768 e=3",
    "512",
    "496 bits",
    "2048 e=2^64+1",
    "4096 e=2^64+1 (over OpenSSL's limit)",
    "even modulus",
    "2048 e=1",
)


def _signed_messages() -> Iterator[tuple[str, bytes, Records]]:
    """A DKIM-signed original and its Gmail forward for each key kind, SHA-256 and SHA-1."""
    known = keys()
    by_modulus = {known[name].n: known[name] for name in MESSAGE_KEYS}
    forwarder = known["2048"]
    google = SigningKey("google.com", "arc", "rsa", private_pem(forwarder))
    with signing_with(by_modulus):
        for name in MESSAGE_KEYS:
            key = known[name]
            client = SigningKey("client.example", "s1", "rsa", private_pem(key))
            records = {
                client.record_name: record(key.n, key.e),
                google.record_name: record(forwarder.n, forwarder.e),
            }
            for sha1 in (False, True):
                try:
                    signed = dkim_sign(make_email(), client, sha1=sha1)
                except dkim.ParameterError:  # the digest does not fit a short key
                    continue
                yield f"{name} sha1={sha1}", signed, records
                forwarded = gmail_forward(signed, "r@gmail.com", "r@acme.capture.example", google)
                yield f"{name} forwarded", forwarded[1], records


def test_mutated_messages_agree() -> None:
    """Signed messages of every key kind, as signed and mutated at random: the same verdicts."""
    rng = random.Random(6376 + 8617)
    base = list(_signed_messages())
    differ: list[str] = []
    tally: Tally = {}
    for name, raw, records in base:
        theirs, ours = both(raw, records, tally)
        if theirs != ours:
            differ.append(f"{name}: dkimpy {theirs}, ours {ours}")
    for index in range(max(CASES // 10, 50)):
        name, raw, records = base[index % len(base)]
        for _ in range(rng.randint(1, 2)):
            raw, records = _mutated_message(raw, records, rng)
        theirs, ours = both(raw, records, tally)
        if theirs != ours:
            differ.append(f"{name} mutated: dkimpy {theirs}, ours {ours}")
    assert len(base) > 30
    assert tally["True"] > 50 and tally["False"] > 20, tally
    assert not differ, "\n".join(differ[:10])
