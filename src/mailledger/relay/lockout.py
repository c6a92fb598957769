"""Failed relay logins, counted per client address and per user, with back-off and a lock.

Every failure is remembered for ``window_seconds``; each one makes the next answer to that
client or user slower (doubling, capped), and ``max_failures`` of them lock that client address
or that user out for ``lockout_seconds``, whatever password comes next. A locked key is
refused before the password is even checked, so a lock cannot be used to test passwords.

The counts live in this process's memory: one node's counts are its own, so with several
``serve`` nodes an attacker gets up to ``max_failures`` guesses per node and window. Our
passwords are generated with 120 bits (``credentials``), so that bound is far from mattering;
what the lock buys is a cheap refusal and a quiet log. A restart forgets the counts. Locking a
user lets anyone lock that user out for a while by failing on purpose: that is the accepted
price of per-user counting (RFC 4954 §4 lets a server refuse with 454 4.7.0 meanwhile).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

# Keys remembered at most; the oldest are forgotten first so a flood of addresses cannot
# grow memory without bound.
MAX_TRACKED_KEYS = 100_000


@dataclass(slots=True)
class _Record:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a login may be tried now, and if not, for how many more seconds."""

    allowed: bool
    retry_in_seconds: float = 0.0
    reason: str = ""


class LoginGuard:
    """In-memory failure counts per client address (``ip:...``) and per user (``user:...``)."""

    def __init__(
        self,
        *,
        max_failures: int,
        window_seconds: float,
        lockout_seconds: float,
        backoff_base_seconds: float = 0.5,
        backoff_cap_seconds: float = 8.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self.lockout_seconds = lockout_seconds
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_cap_seconds = backoff_cap_seconds
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    @staticmethod
    def keys(client: str, user: str) -> tuple[str, str]:
        """The two counters a login attempt touches."""
        return f"ip:{client}", f"user:{user.strip().lower()}"

    def _record(self, key: str, *, create: bool) -> _Record | None:
        record = self._records.get(key)
        if record is None:
            if not create:
                return None
            record = _Record()
            self._records[key] = record
            while len(self._records) > MAX_TRACKED_KEYS:
                self._records.popitem(last=False)
        else:
            self._records.move_to_end(key)
        now = self._clock()
        while record.failures and record.failures[0] <= now - self.window_seconds:
            record.failures.popleft()
        return record

    def check(self, client: str, user: str = "") -> Verdict:
        """May this client (and, when known, this user) try a password now?"""
        now = self._clock()
        keys = self.keys(client, user) if user else (f"ip:{client}",)
        for key in keys:
            record = self._record(key, create=False)
            if record is not None and record.locked_until > now:
                what = "client address" if key.startswith("ip:") else "user"
                return Verdict(False, record.locked_until - now, f"{what} locked")
        return Verdict(True)

    def failed(self, client: str, user: str) -> float:
        """Count a failure for both keys; returns the back-off delay to wait before answering."""
        now = self._clock()
        worst = 0
        for key in self.keys(client, user):
            record = self._record(key, create=True)
            assert record is not None
            record.failures.append(now)
            if len(record.failures) >= self.max_failures:
                record.locked_until = now + self.lockout_seconds
                record.failures.clear()
            worst = max(worst, len(record.failures) or self.max_failures)
        delay: float = self.backoff_base_seconds * float(2 ** max(worst - 1, 0))
        return min(delay, self.backoff_cap_seconds)

    def succeeded(self, user: str) -> None:
        """A correct password forgets the user's failures; the client address's stay counted,
        so one valid login cannot be used to keep guessing at other users from there."""
        self._records.pop(f"user:{user.strip().lower()}", None)
