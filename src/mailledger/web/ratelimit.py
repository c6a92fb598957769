"""Requests per key per window: a token bucket per key (an API token, a client address…).

A bucket holds one window's allowance and refills continuously, so a client may burst up to
the limit and then goes at the limit's pace. When it is empty the caller is told how long
to wait: the API answers 429 with ``Retry-After``, the sign-in form quietly sends no mail.
The window is a minute for API tokens and fifteen minutes for sign-in links. Buckets live in
this process: several nodes each count their own requests (the limit is per node).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

# Buckets untouched this long (or a window, if longer) are full again and are dropped, so
# memory stays bounded.
IDLE_SECONDS = 120.0


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """``check(key)`` spends one request of ``key``'s allowance, or says how long to wait.

    ``per_window`` requests per ``window_seconds`` (a minute unless told otherwise).
    """

    def __init__(
        self,
        per_window: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        window_seconds: float = 60.0,
    ) -> None:
        self.per_window = per_window
        self.window_seconds = window_seconds
        self._rate = per_window / window_seconds
        self._idle = max(IDLE_SECONDS, window_seconds)
        self._clock = clock
        self._buckets: dict[Hashable, _Bucket] = {}
        self._swept = clock()

    def check(self, key: Hashable) -> int:
        """0 when the request may go ahead, else the seconds to wait (Retry-After)."""
        now = self._clock()
        self._sweep(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.per_window), now)
        bucket.tokens = min(float(self.per_window), bucket.tokens + (now - bucket.at) * self._rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - bucket.tokens) / self._rate))

    def _sweep(self, now: float) -> None:
        if now - self._swept < IDLE_SECONDS:
            return
        self._swept = now
        for key in [k for k, b in self._buckets.items() if now - b.at > self._idle]:
            del self._buckets[key]
