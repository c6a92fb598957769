"""Requests per token per minute: a token bucket per API token, kept in this process.

A bucket holds a minute's allowance and refills continuously, so a client may burst up to
the limit and then goes at the limit's pace. When it is empty the request is answered 429
with ``Retry-After``: the whole seconds until one request's worth has refilled. Several
nodes each count their own requests (the limit is per node).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

# Buckets untouched this long are full again and are dropped, so memory stays bounded.
IDLE_SECONDS = 120.0


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """``check(key)`` spends one request of ``key``'s allowance, or says how long to wait."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[int, _Bucket] = {}
        self._swept = clock()

    def check(self, key: int) -> int:
        """0 when the request may go ahead, else the seconds to wait (Retry-After)."""
        now = self._clock()
        self._sweep(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.per_minute), now)
        bucket.tokens = min(float(self.per_minute), bucket.tokens + (now - bucket.at) * self._rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - bucket.tokens) / self._rate))

    def _sweep(self, now: float) -> None:
        if now - self._swept < IDLE_SECONDS:
            return
        self._swept = now
        for key in [k for k, b in self._buckets.items() if now - b.at > IDLE_SECONDS]:
            del self._buckets[key]
