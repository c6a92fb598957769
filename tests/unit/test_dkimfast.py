"""The fast conversions give dkimpy exactly the bytes and integers its own loops gave."""

from __future__ import annotations

import hashlib
import random
import secrets
from collections.abc import Callable
from typing import cast

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailledger.testing.forwarding import dkim_sign, make_key
from mailledger.testing.mail import make_email
from mailledger.verify import dkimfast

ORIGINAL_INT2STR, ORIGINAL_STR2INT, ORIGINAL_SIGN, ORIGINAL_RELAXED = cast(
    "tuple[Callable[..., bytearray], Callable[..., int], Callable[..., bytearray], "
    "Callable[..., list[tuple[bytes, bytes]]]]",
    dkimfast.originals(),
)


@pytest.mark.parametrize("bits", [0, 1, 7, 8, 9, 255, 1024, 2048, 4096])
def test_int2str_matches_dkimpy(bits: int) -> None:
    for _ in range(20):
        n = secrets.randbits(bits) if bits else 0
        assert dkimfast.int2str(n) == ORIGINAL_INT2STR(n)
        for length in (1, 2, (bits + 7) // 8, (bits + 7) // 8 + 3, 256):
            if length <= 0:
                continue
            assert dkimfast.int2str(n, length) == ORIGINAL_INT2STR(n, length)


def test_str2int_matches_dkimpy() -> None:
    for size in (0, 1, 2, 31, 256, 512):
        data = secrets.token_bytes(size)
        assert dkimfast.str2int(data) == ORIGINAL_STR2INT(data)
        assert dkimfast.str2int(bytearray(data)) == ORIGINAL_STR2INT(bytearray(data))


def test_negative_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        dkimfast.int2str(-1)


def test_dkimpy_signs_and_verifies_with_them_installed() -> None:
    dkimfast.install()
    assert dkim.crypto.int2str is dkimfast.int2str
    key = make_key("client.example", "s1")
    signed = dkim_sign(make_email(), key)

    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes | None:
        wanted = name.decode() if isinstance(name, bytes) else name
        return key.txt.encode() if wanted.rstrip(".") == key.record_name else None

    assert dkim.verify(signed, dnsfunc=dnsfunc)
    assert not dkim.verify(signed.replace(b"Subject:", b"Subject: x"), dnsfunc=dnsfunc)


def _private(bits: int) -> dict[str, int]:
    """A fresh RSA key as dkimpy parses it."""
    der = rsa.generate_private_key(public_exponent=65537, key_size=bits).private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return cast("dict[str, int]", dkim.crypto.parse_private_key(der))


@pytest.mark.parametrize("bits", [1024, 2048])
@pytest.mark.parametrize("name", ["sha256", "sha1"])
def test_openssl_signature_is_dkimpys(bits: int, name: str) -> None:
    """PKCS#1 v1.5 is deterministic: OpenSSL's signature is byte for byte dkimpy's own."""
    private = _private(bits)
    for text in (b"", b"one", secrets.token_bytes(300)):
        ours = dkimfast.rsa_sign(hashlib.new(name, text), private)
        assert ours == bytes(ORIGINAL_SIGN(hashlib.new(name, text), private))


def test_relaxed_headers_are_dkimpys() -> None:
    """Folding, tabs, runs of blanks, bare CR or LF, blank names: dkimpy's fields exactly."""
    rng = random.Random(6376)
    bits = [b"a", b"B", b" ", b"\t", b"\r\n", b"\n", b"\r", b"\r\n ", b"x y", b"\xff"]
    for _ in range(3000):
        headers = [
            [
                b"".join(rng.choice([b"Subject", b"FROM ", b"x-a\t", b""]) for _ in range(2)),
                b"".join(rng.choice(bits) for _ in range(rng.randrange(0, 12))),
            ]
            for _ in range(rng.randrange(0, 4))
        ]
        assert dkimfast.relaxed_headers(headers) == ORIGINAL_RELAXED(headers)
    dkimfast.install()
    policy = dkim.canonicalization.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    assert policy.canonicalize_headers([[b"To", b" a\r\n\t b\r\n"]]) == [(b"to", b"a b\r\n")]
