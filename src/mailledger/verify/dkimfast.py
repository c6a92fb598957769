"""dkimpy's slowest steps done faster: integer/byte conversions, RSA, header fields.

dkimpy's RSA is pure Python. Verifying, it turns the RSA result into bytes one byte per loop
turn: about a fifth of a forwarded message's DKIM and ARC verification time (`make bench`
profile); ``int.to_bytes``/``int.from_bytes`` give the same bytes in C. Signing, its private
key operation took about 9 ms of the relay's CPU per message; OpenSSL (``cryptography``)
computes the same RSASSA-PKCS1-v1_5 signature, which is deterministic, in a fraction of that.
``install`` swaps these into dkimpy once; the published ARC suite, the DKIM tests and the
relay's signing tests run through them.

Verifying, dkimpy's public-key operation (a forward carries three: DKIM, ARC seal, ARC message
signature) goes to OpenSSL too, with dkimpy's verdicts kept exactly (``rsa_verify``): dkimpy
still parses the key and applies its size rules, and hands over only the last step.

Relaxed header canonicalization ran two regular expressions over every header field for each
signature and each ARC seal checked, about 1.2 ms of a forwarded message's 4 ms of checks;
each field's result is the same every time, so it is computed once and remembered.

A key record is read the same way every time too: dkimpy parsed the tag list, base64 and
ASN.1 of the public key for each signature (three a forward, all from two or three records
the resolver already caches), which cost more than the RSA check itself. ``evaluate_pk``
keeps each record's reading, keyed by the record's exact text (``KEY_CACHE_SIZE`` records).

Before hashing a signature's own header field, dkimpy blanks its ``b=`` value with
``RE_BTAG``, whose folding white space (``(?:(?:\\s*\\r?\\n)?\\s+)?``) is tried again before
every base64 character: about 155 µs per field, three fields a forward, over a third of the
message's checks. ``BTAG`` matches the same text (FWS matches exactly the runs of white space,
and the value runs to its last base64 character): the same bytes removed, in an eighth of
the time.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

import dkim
import dkim.canonicalization
import dkim.crypto
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

_ORIGINAL_INT2STR = dkim.crypto.int2str
_ORIGINAL_STR2INT = dkim.crypto.str2int
_ORIGINAL_SIGN = dkim.crypto.RSASSA_PKCS1_v1_5_sign
_ORIGINAL_VERIFY = dkim.crypto.RSASSA_PKCS1_v1_5_verify
_ORIGINAL_RELAXED = dkim.canonicalization.Relaxed.canonicalize_headers
_ORIGINAL_EVALUATE_PK = dkim.evaluate_pk
_ORIGINAL_SELECT_HEADERS = dkim.select_headers
_ORIGINAL_BTAG: re.Pattern[bytes] = dkim.RE_BTAG
KEY_CACHE_SIZE = 256  # distinct key records remembered; a record is a few hundred bytes
_UNFOLD = re.compile(b"\r?\n")  # dkimpy's unfold_header_value
_BLANKS = re.compile(b"[\t ]+")  # dkimpy's compress_whitespace
# dkimpy's RE_BTAG, the same matches: "b", white space, "=", then the value up to its last
# base64 character, white space between them; and a line end when the field ends there.
BTAG = re.compile(rb"([;\s]b\s*=)(?:[a-zA-Z0-9+/=\s]*[a-zA-Z0-9+/=])?(?:\r?\n\Z)?")
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}
# The DER DigestInfo dkimpy's EMSA-PKCS1-v1_5 encoding wraps each digest in (RFC 8017 §9.2):
# its length decides, as in dkimpy, whether the modulus is too short for the digest.
_DIGEST_INFO_BYTES = {"sha256": 19 + 32, "sha1": 15 + 20}
_PADDING_BYTES = 11  # 00 01, at least eight FF, 00
# OpenSSL's limits on a public key it uses (crypto/rsa/rsa_ossl.c): keys past them are
# refused there, so they stay with dkimpy's arithmetic.
_OPENSSL_MAX_MODULUS_BITS = 16384
_OPENSSL_SMALL_MODULUS_BITS = 3072
_OPENSSL_MAX_PUBEXP_BITS = 64


def int2str(n: int, length: int = -1) -> bytearray:
    """dkimpy's ``int2str``: big-endian bytes, the low ``length`` bytes when a length is given."""
    if n < 0:
        raise ValueError("negative integer")
    if length < 0:
        return bytearray(n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big"))
    return bytearray((n & ((1 << (8 * length)) - 1)).to_bytes(length, "big"))


def str2int(s: Iterable[int]) -> int:
    """dkimpy's ``str2int``: the big-endian integer of a byte string."""
    return int.from_bytes(bytes(s), "big")


_KEY_FIELDS = (
    "prime1",
    "prime2",
    "privateExponent",
    "exponent1",
    "exponent2",
    "coefficient",
    "publicExponent",
    "modulus",
)


@functools.lru_cache(maxsize=64)
def _openssl_key(numbers: tuple[int, ...]) -> rsa.RSAPrivateKey:
    """The key for dkimpy's numbers, in _KEY_FIELDS order; built once (it is checked)."""
    p, q, d, dmp1, dmq1, iqmp, e, n = numbers
    return rsa.RSAPrivateNumbers(
        p, q, d, dmp1, dmq1, iqmp, rsa.RSAPublicNumbers(e, n)
    ).private_key()


def rsa_sign(digest: Any, private_key: dict[str, int]) -> bytes:
    """dkimpy's ``RSASSA_PKCS1_v1_5_sign`` (a hashlib object, dkimpy's key dict) by OpenSSL."""
    algorithm = _HASHES.get(digest.name.lower())
    if algorithm is None:
        return bytes(_ORIGINAL_SIGN(digest, private_key))
    key = _openssl_key(tuple(private_key[field] for field in _KEY_FIELDS))
    try:
        return key.sign(digest.digest(), padding.PKCS1v15(), Prehashed(algorithm()))
    except ValueError as exc:  # the key is too small for the digest, as dkimpy says it
        raise dkim.crypto.DigestTooLargeError() from exc


@functools.lru_cache(maxsize=256)
def openssl_public_key(exponent: int, modulus: int) -> rsa.RSAPublicKey | None:
    """The OpenSSL key for dkimpy's numbers, or None where OpenSSL's RSA differs from dkimpy's.

    dkimpy raises any signature to any exponent modulo any modulus. OpenSSL wants an odd
    modulus (Montgomery arithmetic) and an odd exponent from 3 to below the modulus, and
    refuses moduli over 16384 bits and, above 3072 bits, exponents over 64 bits. A key
    outside that is rare and legal for dkimpy, so it is verified by dkimpy's own code.
    """
    bits = modulus.bit_length()
    if (
        modulus % 2 == 0
        or exponent % 2 == 0
        or not 3 <= exponent < modulus
        or bits > _OPENSSL_MAX_MODULUS_BITS
        or (bits > _OPENSSL_SMALL_MODULUS_BITS and exponent.bit_length() > _OPENSSL_MAX_PUBEXP_BITS)
    ):
        return None
    try:
        return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    except ValueError:
        return None


def rsa_verify(digest: Any, signature: bytes, public_key: dict[str, int]) -> bool:
    """dkimpy's ``RSASSA_PKCS1_v1_5_verify`` with the RSA operation done by OpenSSL.

    Verdict for verdict dkimpy's: the modulus's byte length decides whether the digest fits
    (``DigestTooLargeError`` as dkimpy raises it, before any arithmetic); the signature is
    read as an integer of any length, leading zeros and all, and dkimpy reduces it modulo the
    key where OpenSSL would refuse one not below it, so it is reduced here and given to
    OpenSSL at the key's exact length; then OpenSSL checks the one encoding dkimpy builds,
    ``00 01 FF… 00 DigestInfo``. Anything else (another digest, a key OpenSSL would not
    take, a key dict that is not two integers) goes to dkimpy's own function.
    """
    name = getattr(digest, "name", None)
    hash_name = name.lower() if isinstance(name, str) else ""
    hash_type = _HASHES.get(hash_name)
    numbers = public_key if isinstance(public_key, dict) else {}
    modulus, exponent = numbers.get("modulus"), numbers.get("publicExponent")
    if (
        hash_type is None
        or type(modulus) is not int
        or type(exponent) is not int
        or modulus < 0
        or not isinstance(signature, bytes | bytearray)
    ):
        return bool(_ORIGINAL_VERIFY(digest, signature, public_key))
    algorithm, hashed = hash_type(), digest.digest()
    if len(hashed) != algorithm.digest_size:
        return bool(_ORIGINAL_VERIFY(digest, signature, public_key))
    length = max(1, (modulus.bit_length() + 7) // 8)
    if _DIGEST_INFO_BYTES[hash_name] + _PADDING_BYTES > length:
        raise dkim.crypto.DigestTooLargeError()
    key = openssl_public_key(exponent, modulus)
    if key is None:
        return bool(_ORIGINAL_VERIFY(digest, signature, public_key))
    value = int.from_bytes(signature, "big") % modulus
    try:
        key.verify(value.to_bytes(length, "big"), hashed, padding.PKCS1v15(), Prehashed(algorithm))
    except InvalidSignature:
        return False
    return True


@functools.lru_cache(maxsize=KEY_CACHE_SIZE, typed=True)
def _evaluated(record: bytes | str) -> tuple[Any, Any, Any, bool]:
    # dkimpy names the record only in its "missing public key" error, for an empty record,
    # which ``evaluate_pk`` never sends here. A record dkimpy refuses raises, and
    # lru_cache keeps no exceptions: a bad record is read (and refused) again every time.
    return _ORIGINAL_EVALUATE_PK(b"", record)  # type: ignore[no-any-return]


def evaluate_pk(name: Any, record: Any) -> tuple[Any, Any, Any, bool]:
    """dkimpy's ``evaluate_pk`` (a key record's text → key, size, type, tlsrpt), read once.

    The reading depends on the record's text alone, so the same text (bytes, or str: cached
    apart) gives the same key however it was looked up; the resolver's TTL decides when a
    record is looked up again, and changed text is a new entry. The RSA numbers come back in
    a fresh dict each time, as dkimpy's would: no caller can change the cached one.
    """
    if not record or not isinstance(record, bytes | str):
        return _ORIGINAL_EVALUATE_PK(name, record)  # type: ignore[no-any-return]
    pk, keysize, ktag, seqtlsrpt = _evaluated(record)
    return (dict(pk) if isinstance(pk, dict) else pk), keysize, ktag, seqtlsrpt


def select_headers(headers: Sequence[Any], include_headers: Sequence[bytes]) -> list[Any]:
    """dkimpy's ``select_headers`` (RFC 6376 §5.4.2), each field's name lowered once.

    For each name signed, the next instance up from the last one taken, bottom first; a name
    not found (again) takes nothing. dkimpy lowered a field's name at every comparison: for a
    forward's 30-odd fields and three signatures, most of the hashing's Python time.
    """
    names = [field[0].lower() for field in headers]
    selected = []
    last: dict[bytes, int] = {}
    for name in include_headers:
        if name != name.lower():  # dkimpy asserts this: its callers lower h= first
            raise AssertionError(name)
        index = last.get(name, len(headers))
        while index > 0:
            index -= 1
            if names[index] == name:
                selected.append(headers[index])
                break
        last[name] = index
    return selected


@functools.lru_cache(maxsize=8192)
def _relaxed_field(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    return name.lower().rstrip(), _BLANKS.sub(b" ", _UNFOLD.sub(b"", value)).strip() + b"\r\n"


def relaxed_headers(headers: Sequence[Sequence[bytes]]) -> list[tuple[bytes, bytes]]:
    """dkimpy's relaxed ``canonicalize_headers`` (RFC 6376 §3.4.2), each field done once."""
    return [_relaxed_field(bytes(field[0]), bytes(field[1])) for field in headers]


def install() -> None:
    """Use the fast versions in dkimpy (idempotent)."""
    dkim.crypto.int2str = int2str
    dkim.crypto.str2int = str2int
    # dkimpy's signer calls the name it imported into its own module.
    dkim.RSASSA_PKCS1_v1_5_sign = rsa_sign
    dkim.RSASSA_PKCS1_v1_5_verify = rsa_verify
    dkim.canonicalization.Relaxed.canonicalize_headers = staticmethod(relaxed_headers)
    # ``load_pk_from_dns`` and ``hash_headers`` call the names in dkimpy's module.
    dkim.evaluate_pk = evaluate_pk
    dkim.select_headers = select_headers
    # dkimpy hashes and signs with the pattern in its own module.
    dkim.RE_BTAG = BTAG


def originals() -> tuple[object, object, object, object]:
    """dkimpy's own functions, for tests that compare them with these."""
    return _ORIGINAL_INT2STR, _ORIGINAL_STR2INT, _ORIGINAL_SIGN, _ORIGINAL_RELAXED


def original_key_and_selection() -> tuple[object, object]:
    """dkimpy's own ``evaluate_pk`` and ``select_headers``, for the tests comparing them."""
    return _ORIGINAL_EVALUATE_PK, _ORIGINAL_SELECT_HEADERS


def original_btag() -> re.Pattern[bytes]:
    """dkimpy's own ``RE_BTAG``, for the tests comparing it with ``BTAG``."""
    return _ORIGINAL_BTAG


def original_verify() -> object:
    """dkimpy's own ``RSASSA_PKCS1_v1_5_verify``, for the tests and bench that compare them."""
    return _ORIGINAL_VERIFY
