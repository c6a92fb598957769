"""A local S3-compatible object store for tests: moto's server mode on a loopback port.

No real S3 runs here, so the ``s3`` blob backend is tested against moto (Apache-2.0) run as
``python -m moto.server`` in a process of its own: the backend speaks real HTTP to it through
boto3 exactly as it would to AWS or MinIO, and the test process's memory (measured by the
bounded-memory tests) holds none of the stored objects.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from mailledger.testing.ports import free_port

START_TIMEOUT_SECONDS = 30.0
# moto accepts any credentials; these only need to be the same on both sides.
ACCESS_KEY = "mailledger-test"
SECRET_KEY = "mailledger-test-secret"  # noqa: S105 - a test credential for a local stand-in
REGION = "us-east-1"


class MotoS3:
    """moto's S3 on 127.0.0.1; ``storage(bucket)`` gives the ``[storage]`` keys for it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._dir = Path(tempfile.mkdtemp(prefix="mailledger-moto-"))
        self._log = self._dir / "moto.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> MotoS3:
        """Start the server; return once it answers HTTP."""
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto server exited: {self._log.read_text()[-2000:]}")
            if self._answers():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.endpoint_url}")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):  # noqa: S310
                return True
        except OSError:
            return False

    def storage(self, bucket: str, **more: str | int) -> dict[str, str | int]:
        """``[storage]`` keys for the s3 backend on this server (the bucket is made here)."""
        self.create_bucket(bucket)
        return {
            "backend": "s3",
            "s3_endpoint_url": self.endpoint_url,
            "s3_bucket": bucket,
            "s3_region": REGION,
            "s3_access_key_id": ACCESS_KEY,
            "s3_secret_access_key": SECRET_KEY,
            **more,
        }

    def create_bucket(self, bucket: str) -> None:
        """Make ``bucket`` (an empty PUT on it, as the S3 API does)."""
        request = urllib.request.Request(f"{self.endpoint_url}/{bucket}", method="PUT")  # noqa: S310
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310
            pass

    def stop(self) -> None:
        """Stop the server."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        self._process = None

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
