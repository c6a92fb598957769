"""Queue ids: the name of one accepted or queued message in replies, logs and the CLI."""

from __future__ import annotations

import secrets
from typing import Final

QUEUE_ID_BYTES: Final = 10  # 20 hex characters: unique enough to name a message in a log line


def new_queue_id() -> str:
    """A fresh queue id; random, so ids from several nodes never collide."""
    return secrets.token_hex(QUEUE_ID_BYTES).upper()
