"""The fast conversions give dkimpy exactly the bytes and integers its own loops gave."""

from __future__ import annotations

import hashlib
import random
import secrets
from collections.abc import Callable
from typing import Any, cast

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


ORIGINAL_EVALUATE_PK, ORIGINAL_SELECT_HEADERS = cast(
    "tuple[Callable[..., tuple[Any, ...]], Callable[..., list[object]]]",
    dkimfast.original_key_and_selection(),
)


def _reading(evaluate: Callable[..., tuple[Any, ...]], record: object) -> object:
    """What dkimpy makes of a key record: its reading, or its error's type and text."""
    try:
        pk, keysize, ktag, tlsrpt = evaluate(b"s1._domainkey.client.example.", record)
    except Exception as exc:  # noqa: BLE001 - the error is what is compared
        return type(exc), str(exc)
    if pk is not None and not isinstance(pk, dict):
        pk = bytes(pk)  # an Ed25519 key: compare its bytes
    return pk, keysize, ktag, tlsrpt


def test_key_records_are_read_as_dkimpy_reads_them() -> None:
    """RSA and Ed25519 records, as bytes and as text, and broken ones: the cached reading (or
    error) is dkimpy's own, the first time and the second."""
    rsa_txt = make_key("client.example").txt
    ed_txt = make_key("client.example", algorithm="ed25519").txt
    p_value = rsa_txt.split("p=", 1)[1]
    records: list[object] = [
        rsa_txt,
        rsa_txt.encode(),
        ed_txt.encode(),
        rsa_txt.replace("v=DKIM1; ", "").encode(),
        f"v=DKIM1; s=email; p={p_value}".encode(),
        f"v=DKIM1; s=tlsrpt; p={p_value}".encode(),
        f"v=DKIM1; s=other; p={p_value}".encode(),
        b"v=DKIM2; p=" + p_value.encode(),
        b"v=DKIM1; k=rsa; p=",
        b"v=DKIM1; k=rsa; p=" + p_value[:40].encode(),
        b"v=DKIM1; k=rsa; p=!!!",
        b"v=DKIM1; k=dsa; p=" + p_value.encode(),
        b"v=DKIM1; k=rsa",
        b"not a tag list",
        b"",
        None,
        "v=DKIM1; p=\u00e9",
    ]
    for record in records:
        expected = _reading(ORIGINAL_EVALUATE_PK, record)
        assert _reading(dkimfast.evaluate_pk, record) == expected, record
        assert _reading(dkimfast.evaluate_pk, record) == expected, record


def test_each_caller_gets_its_own_rsa_numbers() -> None:
    """The cached key cannot be changed through what one signature's check was handed."""
    record = make_key("client.example").txt.encode()
    first = dkimfast.evaluate_pk(b"a.", record)[0]
    assert isinstance(first, dict)
    first["modulus"] = 7
    second = dkimfast.evaluate_pk(b"a.", record)[0]
    assert isinstance(second, dict)
    assert second["modulus"] != 7
    assert second == ORIGINAL_EVALUATE_PK(b"a.", record)[0]


def test_the_key_cache_is_bounded() -> None:
    """Records from DNS are remembered up to KEY_CACHE_SIZE, the least recently used dropped."""
    info = dkimfast._evaluated.cache_info()
    assert info.maxsize == dkimfast.KEY_CACHE_SIZE
    record = make_key("client.example").txt.encode()
    dkimfast.evaluate_pk(b"a.", record)
    before = dkimfast._evaluated.cache_info().hits
    dkimfast.evaluate_pk(b"b.", record)  # another name, the same record: the same reading
    assert dkimfast._evaluated.cache_info().hits == before + 1


def test_header_selection_is_dkimpys() -> None:
    """Repeated, missing and over-signed names, any case: dkimpy's instances, bottom first."""
    rng = random.Random(5425)
    names = [b"From", b"from", b"To", b"Subject", b"DKIM-Signature", b"X-A"]
    for _ in range(3000):
        headers = [[rng.choice(names), str(i).encode()] for i in range(rng.randrange(0, 12))]
        wanted = [rng.choice(names).lower() for _ in range(rng.randrange(0, 10))]
        assert dkimfast.select_headers(headers, wanted) == ORIGINAL_SELECT_HEADERS(headers, wanted)
    with pytest.raises(AssertionError):
        dkimfast.select_headers([[b"From", b"x"]], [b"From"])


def test_b_tag_blanking_is_dkimpys() -> None:
    """Folded values, blanks and line ends around "b", bh= and b= neighbours: dkimpy's bytes."""
    original = dkimfast.original_btag()
    rng = random.Random(6376)
    bits = [b" ", b"\t", b"\r", b"\n", b"\r\n", b"\r\n ", b";", b"b", b"B", b"=", b"h", b"a"]
    bits += [b"Z", b"0", b"+", b"/", b"-", b".", b"\x0b", b"\x0c", b"\xff", b"b=", b"; b = "]
    for _ in range(20000):
        value = b"".join(rng.choice(bits) for _ in range(rng.randrange(0, 30)))
        assert dkimfast.BTAG.sub(b"\\1", value) == original.sub(b"\\1", value), value
    signed = dkim_sign(make_email(subject="Quote"), make_key("client.example"))
    field = next(value for name, value in dkim.rfc822_parse(signed)[0] if name == b"DKIM-Signature")
    blanked = dkimfast.BTAG.sub(b"\\1", field)
    assert blanked == original.sub(b"\\1", field)
    assert b"bh=" in blanked and len(blanked) < len(field) - 100  # the signature is gone
