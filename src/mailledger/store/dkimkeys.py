"""The private halves of DKIM keys, sealed in ``dkim_keys.private_key``.

Every node signs with the same key and none needs a key file: the key is sealed with
``[secrets] key_file`` (``store.secretbox``, as webhook secrets and mailbox passwords are), so
a copy of the database alone cannot sign as a customer's domain. The bytes are what dkimpy
takes (PKCS#1 PEM, or the base64 of an Ed25519 seed): ASCII, sealed as text.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mailledger.store.models import DkimKey
from mailledger.store.secretbox import SecretBox


class PrivateKeyNotStoredError(LookupError):
    """A key made before keys moved into the database whose file has not been imported."""


def seal_private_key(key: DkimKey, box: SecretBox, private: bytes) -> None:
    """Keep ``private`` on ``key``, sealed; the caller's transaction writes it."""
    key.private_key = box.seal(private.decode("ascii"))


def open_private_key(key: DkimKey, box: SecretBox) -> bytes:
    """The private key in the form ``dkim.sign(privkey=…)`` takes.

    :class:`PrivateKeyNotStoredError` when only a file holds it yet; ``SecretError`` when
    ``[secrets] key_file`` does not hold the key it was sealed with.
    """
    if key.private_key is None:
        raise PrivateKeyNotStoredError(key.private_key_path or "")
    return box.open(key.private_key).encode("ascii")


def keys_awaiting_import(session: Session) -> list[DkimKey]:
    """Keys of every tenant whose private half is still only a file, oldest first."""
    return list(
        session.scalars(select(DkimKey).where(DkimKey.private_key.is_(None)).order_by(DkimKey.id))
    )


def store_imported(session: Session, key_id: int, sealed: str) -> bool:
    """Keep an imported key's sealed private half, unless another node already did.

    Two nodes importing at once both read the same file; the first write wins and the second
    changes nothing (returns False), so a key is never replaced under a signature.
    """
    result = session.execute(
        update(DkimKey)
        .where(DkimKey.id == key_id, DkimKey.private_key.is_(None))
        .values(private_key=sealed)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))
