"""A bounded, thread-safe LRU mapping: the DNS answer cache's and the SPF verdicts' store.

Both are read and written from the event loop's threads and the processing threads at
once, and both drop the least recently used entry when full.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LockedLRU(Generic[K, V]):
    """At most ``max_entries`` entries (none when it is 0 or less), under one lock."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, fresh: Callable[[V], bool] | None = None) -> V | None:
        """The entry, now the most recently used; one ``fresh`` refuses is dropped instead."""
        with self._lock:
            value = self._data.get(key)
            if value is None:
                return None
            if fresh is not None and not fresh(value):
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        """Keep ``value``, dropping the least recently used entries beyond the bound."""
        if self.max_entries <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)
