"""Holding intake's writer still, so that what tests store meanwhile forms one group commit."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mailledger.store.blobs import BlobStore, BlobStoreError

if TYPE_CHECKING:
    import pytest


def hold_first_write(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Hold the writer in its first blob write until the returned event is set.

    Call from the event loop the intake serves; messages stored while it is held queue up and
    are written together once it is set.
    """
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()
    real = BlobStore.put_many
    calls = 0

    def held(self: BlobStore, blobs: Sequence[bytes]) -> list[str | BlobStoreError]:
        nonlocal calls
        calls += 1
        if calls == 1:
            asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(10)
        return real(self, blobs)

    monkeypatch.setattr(BlobStore, "put_many", held)
    return gate
