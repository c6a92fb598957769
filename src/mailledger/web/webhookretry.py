"""When a failed webhook delivery is tried again: the schedule, its jitter, and Retry-After.

Plain functions over numbers and header text, so the rules are tested without a socket.
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final

# Each delay is spread over ±10 %, so the retries of many events that failed together (a
# receiver's outage) do not all arrive at the same second when it comes back.
JITTER: Final = 0.1
# A Retry-After longer than this is read as this: a receiver cannot park an event for ever.
MAX_RETRY_AFTER_SECONDS: Final = 86400.0
# The statuses whose Retry-After we honour (RFC 9110 §10.2.3: 503; RFC 6585 §4: 429).
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
GONE: Final = 410


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait that a ``Retry-After`` value asks for: delay-seconds or an HTTP-date.

    None when absent or unreadable; a date in the past is 0 (RFC 9110 §10.2.3).
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_SECONDS)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return min(max((when - now).total_seconds(), 0.0), MAX_RETRY_AFTER_SECONDS)


def next_attempt_at(
    schedule: Sequence[float],
    attempt: int,
    now: datetime,
    *,
    retry_after_seconds: float | None = None,
    rng: random.Random | None = None,
) -> datetime | None:
    """When to make attempt ``attempt + 1`` after attempt ``attempt`` failed; None: give up.

    ``schedule[n]`` is the wait before attempt ``n + 1`` (the first is the wait after the
    event), so there are ``len(schedule)`` attempts in all. The receiver's Retry-After is a
    floor: we never come back sooner than it asked, nor sooner than the schedule says.
    """
    if attempt >= len(schedule):
        return None
    chance = rng or random
    delay = schedule[attempt] * chance.uniform(1 - JITTER, 1 + JITTER)
    if retry_after_seconds is not None:
        delay = max(delay, retry_after_seconds)
    return now + timedelta(seconds=delay)
