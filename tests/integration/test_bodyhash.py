"""Body hashes in pieces give dkimpy's verdicts exactly, while holding only pieces of the body."""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Iterator

import dkim
import pytest
from dkim.canonicalization import Relaxed, Simple

from mailledger.dnsauth.resolver import Resolver
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.forwarding import SigningKey, dkim_sign, make_key
from mailledger.testing.mail import make_email
from mailledger.verify import bodyhash
from mailledger.verify.results import FAIL, PASS, PERMERROR
from mailledger.verify.signatures import verify_arc, verify_dkim

_ALGORITHMS = {b"simple": Simple, b"relaxed": Relaxed}
_HEADERS = [b"A: b\r\n\r\n", b"A: b\n\n", b"A: b\r\n\n", b"\r\n", b"\n", b"A: b\r\n \r\n\r\n", b""]
_BODY_BITS = [b"a", b"b", b" ", b"\t", b"\r", b"\n", b"\r\n", b"x  y", b"\t\r\n", b"From x"]


def _dkimpy_body(raw: bytes) -> bytes | None:
    try:
        return dkim.rfc822_parse(raw)[1]
    except (dkim.MessageFormatError, IndexError):  # IndexError: a first line that is folded
        return None


@pytest.mark.parametrize("piece_bytes", [1, 2, 7, 64, bodyhash.PIECE_BYTES])
def test_canonical_pieces_are_dkimpys_canonical_body(
    piece_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random bodies with blanks, bare CR and LF, CRLF runs: the same bytes as dkimpy."""
    monkeypatch.setattr(bodyhash, "PIECE_BYTES", piece_bytes)
    rng = random.Random(piece_bytes)
    compared = 0
    for _ in range(3000):
        body = b"".join(rng.choice(_BODY_BITS) for _ in range(rng.randint(0, 25)))
        raw = rng.choice(_HEADERS) + body
        theirs = _dkimpy_body(raw)
        if theirs is None:
            continue
        start = bodyhash.body_start(raw)
        for name, algorithm in _ALGORITHMS.items():
            ours = b"".join(bodyhash.canonical_pieces(raw, start, name))
            assert ours == algorithm.canonicalize_body(theirs), (name, raw)
            compared += 1
    assert compared > 3000


def test_hashes_are_kept_per_canonicalization_hash_and_length() -> None:
    raw = b"A: b\r\n\r\nline one  \r\nline two\r\n\r\n\r\n"
    hashes = bodyhash.BodyHashes(raw, bodyhash.body_start(raw))
    assert hashes.length(b"relaxed") == len(b"line one\r\nline two\r\n")
    assert hashes.length(b"simple") == len(b"line one  \r\nline two\r\n")
    full = hashes.digest(b"relaxed", "sha256")
    assert hashes.digest(b"relaxed", "sha256", 5) != full
    assert hashes.digest(b"relaxed", "sha256", 10_000) == full
    assert hashes.digest(b"relaxed", "sha1") != full


@pytest.fixture(scope="module")
def resolver() -> Iterator[tuple[Resolver, SigningKey, SigningKey]]:
    rsa_key = make_key("client.example", "s1")
    ed_key = make_key("client.example", "ed", "ed25519")
    with DNSServer() as server:
        for key in (rsa_key, ed_key):
            server.add(key.record_name, "TXT", key.txt)
        yield Resolver(server.settings(timeout_seconds=0.5)), rsa_key, ed_key


_TAMPERING = {
    "untouched": lambda raw: raw,
    "appended text": lambda raw: raw + b"P.S. appended by a list\r\n",
    "appended empty lines": lambda raw: raw + b"\r\n\r\n\r\n",
    "blanks changed": lambda raw: raw.replace(b"spring order", b"spring \t order"),
    "word changed": lambda raw: raw.replace(b"spring", b"autumn"),
    "bare line feeds": lambda raw: raw.replace(b"\r\n", b"\n"),
    "body removed": lambda raw: raw.partition(b"\r\n\r\n")[0] + b"\r\n\r\n",
}


@pytest.mark.parametrize("canonicalize", [(b"relaxed", b"relaxed"), (b"simple", b"simple")])
@pytest.mark.parametrize("tampering", sorted(_TAMPERING))
def test_verify_dkim_agrees_with_dkimpy(
    canonicalize: tuple[bytes, bytes],
    tampering: str,
    resolver: tuple[Resolver, SigningKey, SigningKey],
) -> None:
    """RSA (SHA-256 and SHA-1) and Ed25519, with and without l=: dkimpy's verdict, every time."""
    dns, rsa_key, ed_key = resolver
    original = make_email(subject="Quote", body="Prices for the spring order\r\n  attached.\r\n")
    for key, sha1, length in [
        (rsa_key, False, False),
        (rsa_key, True, True),
        (ed_key, False, True),
    ]:
        signed = dkim_sign(original, key, body_length=length, canonicalize=canonicalize, sha1=sha1)
        raw = _TAMPERING[tampering](signed)
        expected = dkim.verify(raw, dnsfunc=dns.dkim_dnsfunc, minkey=1024)
        (result,) = verify_dkim(raw, dns.dkim_dnsfunc)
        assert result.result == (PASS if expected else FAIL), (key.algorithm, sha1, length)
        if result.result == FAIL:
            assert result.reason.startswith("body hash mismatch"), result.reason


def test_large_body_is_hashed_in_pieces(resolver: tuple[Resolver, SigningKey, SigningKey]) -> None:
    """A 10 MB body verifies holding about a piece of it, where dkimpy held several copies."""
    dns, rsa_key, _ = resolver
    lines = b"".join(b"%076d\r\n" % i for i in range(10 * 1024 * 1024 // 78))
    big = make_email(subject="Big", body="x\r\n") + lines
    raw = dkim_sign(big, rsa_key, canonicalize=(b"relaxed", b"relaxed"))
    tracemalloc.start()
    try:
        (result,) = verify_dkim(raw, dns.dkim_dnsfunc)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.result == PASS, result.reason
    assert peak < 4 * bodyhash.PIECE_BYTES


def test_message_starting_with_a_folded_line_is_a_permerror(
    resolver: tuple[Resolver, SigningKey, SigningKey],
) -> None:
    """dkimpy's parser raises IndexError on it; that is a verdict, not a processing crash."""
    dns, _, _ = resolver
    raw = b" folded\r\nFrom: a@client.example\r\n\r\nbody\r\n"
    (result,) = verify_dkim(raw, dns.dkim_dnsfunc)
    assert result.result == PERMERROR
    assert verify_arc(raw, dns.dkim_dnsfunc).result == FAIL
