"""The pieces every blob backend is built from: chunking, digest names, the verifying reader."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable

import pytest

from mailledger.store.blobbackend import check_digest, is_digest, pieces_in_chunks, reader
from mailledger.store.blobs import BlobStoreError


@pytest.mark.parametrize(
    ("pieces", "chunk", "expected"),
    [
        ([b"abcdefgh"], 3, [b"abc", b"def", b"gh"]),
        ([b"ab", b"cd", b"ef"], 3, [b"abc", b"def"]),
        ([b"a", b"bcdefg", b"h"], 4, [b"abcd", b"efgh"]),
        ([b"", b"abc", b""], 3, [b"abc"]),
        ([], 3, []),
    ],
)
def test_pieces_are_cut_and_joined_into_chunks(
    pieces: list[bytes], chunk: int, expected: list[bytes]
) -> None:
    """Pieces of any sizes come out as full chunks in order, the last one shorter."""
    assert [bytes(c) for c in pieces_in_chunks(pieces, chunk)] == expected


def test_only_lowercase_sha256_hex_names_a_blob() -> None:
    """A path or key is never built from anything but a digest."""
    digest = hashlib.sha256(b"x").hexdigest()
    assert is_digest(digest) and check_digest(digest) == digest
    for bad in ("", digest.upper(), digest[:-1], "../" + digest[3:], digest[:-1] + "g"):
        assert not is_digest(bad)
        with pytest.raises(ValueError, match="not a SHA-256"):
            check_digest(bad)


def fetcher(data: bytes, piece: int = 5) -> Callable[[int, int], bytes]:
    """A fetch over ``data`` that gives at most ``piece`` bytes at a time, as a backend may."""

    def fetch(offset: int, limit: int) -> bytes:
        return data[offset : offset + min(limit, piece)]

    return fetch


def test_the_reader_reads_seeks_and_checks_the_digest() -> None:
    """Read through, the bytes are checked against the name; seeking works like a file."""
    data = b"Subject: hello\r\n\r\nbody\r\n"
    fetch = fetcher(data)
    stream = reader(hashlib.sha256(data).hexdigest(), len(data), fetch)
    assert stream.seek(0, io.SEEK_END) == len(data)
    stream.seek(9)
    assert stream.read(5) == b"hello"
    stream.seek(0)
    assert stream.read() == data
    assert stream.read() == b""


def test_the_reader_refuses_bytes_that_do_not_match_the_name() -> None:
    """A read through bytes that hash to another digest raises instead of ending quietly."""
    data = b"the stored bytes changed\r\n"
    fetch = fetcher(data)
    stream = reader(hashlib.sha256(b"the original").hexdigest(), len(data), fetch)
    with pytest.raises(BlobStoreError, match="hash to"):
        stream.read()


def test_a_blob_shorter_than_its_recorded_size_is_an_error() -> None:
    """Missing trailing bytes (a lost chunk) raise rather than pass as a shorter message."""
    data = b"short"
    fetch = fetcher(data)
    stream = reader(hashlib.sha256(data + b"!").hexdigest(), len(data) + 1, fetch)
    with pytest.raises(BlobStoreError, match="shorter than"):
        stream.read()
