"""Standard Webhooks signatures: plain functions over bytes, no I/O.

``webhook-signature`` is ``v1,`` and the base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}``
under the secret's key (the base64 after ``whsec_``); during a rotation each secret that signs
adds its own ``v1,…``, space-separated, and a receiver accepts any one it can verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from mailledger.store.webhooks import SECRET_PREFIX


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_…`` secret."""
    text = secret.removeprefix(SECRET_PREFIX)
    key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    if not key:
        raise ValueError("a webhook secret may not be empty")
    return key


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64 signature>`` of the event under ``secret``."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(secrets: Sequence[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one signature per secret that signs now."""
    if not secrets:
        raise ValueError("no secret to sign with")
    return " ".join(sign(secret, webhook_id, timestamp, body) for secret in secrets)


def webhook_headers(
    secrets: Sequence[str], webhook_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt (the timestamp is the attempt's)."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, webhook_id, timestamp, body),
    }
