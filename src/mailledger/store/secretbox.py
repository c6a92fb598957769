"""Secrets we must read back (webhook signing secrets, mailbox passwords, OAuth tokens), sealed.

A password or token we present to someone else cannot be stored as a hash, so it is encrypted
with Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``) under a key kept outside the
database, in ``[secrets] key_file``: a copy of the database alone reveals nothing. The file
holds one key per line; the first seals, every one opens, so a key is rotated by putting a new
one on top, running ``mailledger secrets reseal``-style rewrites later, and then dropping the
old line. ``db upgrade`` creates the file (mode 0600) when it is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

PREFIX = "fernet:"


class SecretError(Exception):
    """A sealed value cannot be opened, or the key file cannot be used; says which and why."""


def ensure_key_file(path: str | Path) -> bool:
    """Create ``path`` with one new key, readable by its owner only, unless it exists.

    Returns whether it was created. The key is written to a temporary file first and linked
    into place, so two processes racing here end with one key, never a half-written file.
    """
    target = Path(path)
    if target.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(descriptor, Fernet.generate_key() + b"\n")
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    try:
        os.link(temporary, target)
    except FileExistsError:
        return False
    finally:
        temporary.unlink()
    return True


class SecretBox:
    """Seals and opens short secrets with the keys of one key file."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise SecretError("the secrets key file holds no key")
        try:
            self._fernet = MultiFernet([Fernet(key) for key in keys])
        except ValueError as error:
            raise SecretError(f"the secrets key file holds a malformed key: {error}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> SecretBox:
        """The box of ``path``'s keys (one per line, the first seals)."""
        try:
            text = Path(path).read_bytes()
        except FileNotFoundError:
            raise SecretError(
                f"the secrets key file {path} is missing: run `mailledger db upgrade` to create it"
            ) from None
        except OSError as error:
            raise SecretError(f"the secrets key file {path} cannot be read: {error}") from None
        return cls([line.strip() for line in text.splitlines() if line.strip()])

    def seal(self, plaintext: str) -> str:
        """``plaintext`` encrypted and authenticated, as text for a database column."""
        return PREFIX + self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def open(self, sealed: str) -> str:
        """The plaintext of what :meth:`seal` returned."""
        if not sealed.startswith(PREFIX):
            raise SecretError("the stored value is not a sealed secret")
        try:
            return self._fernet.decrypt(sealed[len(PREFIX) :].encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise SecretError(
                "a stored secret cannot be opened: [secrets] key_file does not hold the key it "
                "was sealed with (restore the old key file, or re-enter the secret)"
            ) from None

    def reseal(self, sealed: str) -> str:
        """``sealed`` sealed again under the first key (after a rotation)."""
        return PREFIX + self._fernet.rotate(sealed[len(PREFIX) :].encode("ascii")).decode("ascii")

    def __repr__(self) -> str:
        return "SecretBox(<keys hidden>)"


def is_sealed(value: str) -> bool:
    """Whether ``value`` is a sealed secret (rows written before sealing began are not)."""
    return value.startswith(PREFIX)
