"""Blobs in an S3-compatible object store: ``[storage] backend = "s3"``.

An object is named ``PREFIX + digest[:2] + "/" + digest`` (the filesystem's fan-out, so a
bucket listing reads like the directory). It is durable once ``PutObject`` (or
``CompleteMultipartUpload``) answers: S3 acknowledges only stored objects, and an object is
never visible half-written, so finding it means it is complete. Objects above
``[storage] s3_multipart_bytes`` go up in parts of that size, one part in memory at a time;
reads fetch byte ranges, so a 25 MB message is never whole in memory.

boto3 (Apache-2.0) speaks the protocol; ``endpoint_url`` points it at any S3-compatible store
(MinIO, Ceph, Garage, a cloud provider's), which is how the tests run it against a local one.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from mailledger.config import StorageSettings
from mailledger.store.blobbackend import (
    READ_BYTES,
    SpooledBackend,
    check_digest,
    hash_pieces,
    is_digest,
    reader,
)
from mailledger.store.blobs import Blob, BlobFile, BlobStoreError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Blobs of one put_many uploaded side by side (intake's batches, processing's attachments).
UPLOAD_THREADS = 8
_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3Blobs(SpooledBackend):
    """Blobs as objects in one bucket; spooled DATA waits in a local directory until stored."""

    def __init__(self, storage: StorageSettings, spool_dir: str | Path) -> None:
        self.bucket = storage.s3_bucket
        self.prefix = storage.s3_prefix
        # Empty credentials: boto3's own chain (environment, shared file, instance role).
        self._client: S3Client = boto3.session.Session().client(
            "s3",
            endpoint_url=storage.s3_endpoint_url or None,
            region_name=storage.s3_region or None,
            aws_access_key_id=storage.s3_access_key_id or None,
            aws_secret_access_key=storage.s3_secret_access_key or None,
            config=Config(retries={"mode": "standard", "max_attempts": 3}),
        )
        # One part in memory per upload: no transfer threads of boto3's own.
        self._transfer = TransferConfig(
            multipart_threshold=storage.s3_multipart_bytes,
            multipart_chunksize=storage.s3_multipart_bytes,
            use_threads=False,
        )
        super().__init__(spool_dir)
        self._pool: ThreadPoolExecutor | None = None

    @property
    def name(self) -> str:
        """This backend's name in ``[storage] backend``."""
        return "s3"

    def key(self, digest: str) -> str:
        """The object key of a blob."""
        check_digest(digest)
        return f"{self.prefix}{digest[:2]}/{digest}"

    def put_many(self, blobs: Sequence[Blob]) -> list[str | BlobStoreError]:
        """Upload every blob (side by side); per blob its digest or why it failed.

        A spool file is removed once its object is stored.
        """
        if len(blobs) <= 1:
            return [self._put_one(blob) for blob in blobs]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="blob-s3")
        return list(self._pool.map(self._put_one, blobs))

    def _put_one(self, blob: Blob) -> str | BlobStoreError:
        try:
            if isinstance(blob, BlobFile):
                blob.close()
                digest = blob.digest
                if not self.exists(digest):
                    with blob.path.open("rb") as stream:
                        self._upload(digest, stream)
                blob.discard()
                return digest
            pieces = blob if isinstance(blob, tuple) else (blob,)
            digest = hash_pieces(pieces)
            if not self.exists(digest):
                self._upload(digest, _PiecesReader(pieces))
            return digest
        except (OSError, BotoCoreError, ClientError) as exc:
            return self._error(exc)

    def _upload(self, digest: str, stream: Any) -> None:
        """One PutObject, or a multipart upload above the threshold (an aborted one on error)."""
        self._client.upload_fileobj(stream, self.bucket, self.key(digest), Config=self._transfer)

    def put_verified(self, digest: str, stream: BinaryIO) -> None:
        """Copy a blob in; it is removed again, and BlobStoreError raised, unless it hashes to
        ``digest`` (an object store has no transaction to roll back)."""
        if self.exists(digest):
            return
        hashing = _HashingReader(stream)
        try:
            self._upload(digest, hashing)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc) from exc
        if hashing.hexdigest() != digest:
            self.delete(digest)
            raise BlobStoreError(0, f"blob {digest}: the copy hashes to {hashing.hexdigest()}")

    @contextlib.contextmanager
    def open(self, digest: str) -> Iterator[BinaryIO]:
        """A stored object as a seekable file: each read fetches one byte range."""
        size = self.size(digest)
        key = self.key(digest)

        def fetch(offset: int, limit: int) -> bytes:
            # At least READ_BYTES per request: a reader asking for a line costs no round trip.
            end = min(size, offset + max(limit, READ_BYTES)) - 1
            try:
                body = self._client.get_object(
                    Bucket=self.bucket, Key=key, Range=f"bytes={offset}-{end}"
                )["Body"]
                with contextlib.closing(body):
                    return body.read()
            except (BotoCoreError, ClientError) as exc:
                raise self._error(exc, digest) from exc

        with reader(digest, size, _Ahead(fetch).fetch) as stream:
            yield stream

    def exists(self, digest: str) -> bool:
        """Whether the object is stored."""
        try:
            self._client.head_object(Bucket=self.bucket, Key=self.key(digest))
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return False
            raise self._error(exc, digest) from exc
        except BotoCoreError as exc:
            raise self._error(exc, digest) from exc
        return True

    def size(self, digest: str) -> int:
        """The stored object's length in bytes."""
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self.key(digest))
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, digest) from exc
        return int(head["ContentLength"])

    def delete(self, digest: str) -> None:
        """Remove the object; a missing one is not an error (S3's DeleteObject says so too)."""
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self.key(digest))
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, digest) from exc

    def digests(self) -> Iterator[str]:
        """Every stored object's digest, listed page by page."""
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                name = item["Key"][len(self.prefix) :].rpartition("/")[2]
                if is_digest(name):
                    yield name

    def close(self) -> None:
        """Stop the upload threads and close the client's connections."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._spool.close()
        self._client.close()

    def _error(self, exc: BaseException, digest: str = "") -> BlobStoreError:
        code = _code(exc) if isinstance(exc, ClientError) else ""
        errno = getattr(exc, "errno", None) or (2 if code in _MISSING else 0)
        what = f"blob {digest}" if digest else f"bucket {self.bucket}"
        error = BlobStoreError(errno, f"{what}: {exc}")
        error.__cause__ = exc
        return error


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class _Ahead:
    """The last range fetched, so the small reads of a parser cost one request per range."""

    def __init__(self, fetch: Any) -> None:
        self._fetch = fetch
        self._start = 0
        self._data = b""

    def fetch(self, offset: int, limit: int) -> bytes:
        if not self._start <= offset < self._start + len(self._data):
            self._start, self._data = offset, self._fetch(offset, limit)
        start = offset - self._start
        return self._data[start : start + limit]


class _PiecesReader:
    """Pieces in memory read as one file by the uploader, without joining them."""

    def __init__(self, pieces: Sequence[bytes | memoryview]) -> None:
        self._pieces = [memoryview(piece) for piece in pieces if len(piece)]

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while self._pieces and (size < 0 or len(out) < size):
            piece = self._pieces[0]
            take = len(piece) if size < 0 else min(len(piece), size - len(out))
            out += piece[:take]
            if take == len(piece):
                self._pieces.pop(0)
            else:
                self._pieces[0] = piece[take:]
        return bytes(out)


class _HashingReader:
    """A stream read by the uploader, hashed on the way."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._hasher = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._hasher.update(data)
        return data

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()
