"""Failed relay logins, counted per source address and per (login, source network).

Every failure is remembered for ``window_seconds``; each one makes the next answer to that
source slower (doubling, capped), and ``max_failures`` of them lock that source address, and
that login *from that network* (an IPv4 /24, an IPv6 /64: what one attacker easily holds), for
``lockout_seconds``, whatever password comes next. A locked key is refused before the password
is even checked, so a lock cannot be used to test passwords.

A login is never locked everywhere: anyone who knows a staff member's login could then stop
them sending by failing on purpose. The owner's right password from another network still
works (RFC 4954 §4 lets a server refuse with 454 4.7.0 only the attempts it must). Each lock
is logged with the source that earned it.

The counts live in this process's memory: one node's counts are its own, so with several
``serve`` nodes an attacker gets up to ``max_failures`` guesses per node and window. Our
passwords are generated with 120 bits (``credentials``), so that bound is far from mattering;
what the lock buys is a cheap refusal and a quiet log. A restart forgets the counts.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mailledger.logs import get_logger

log = get_logger(__name__)

# Keys remembered at most; the oldest are forgotten first so a flood of addresses cannot
# grow memory without bound.
MAX_TRACKED_KEYS = 100_000
# The network a login's failures are counted in: what one attacker plausibly controls.
IPV4_PREFIX = 24
IPV6_PREFIX = 64


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
    """In-memory failure counts per source (``ip:...``) and per login and network (``user:...``)."""

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
    def network(client: str) -> str:
        """The source network of an address: its /24 (IPv4) or /64 (IPv6); else the text."""
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return client
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        prefix = IPV4_PREFIX if address.version == 4 else IPV6_PREFIX
        return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))

    @classmethod
    def keys(cls, client: str, user: str) -> tuple[str, str]:
        """The two counters a login attempt touches: the source, and the login from its network."""
        return f"ip:{client}", f"user:{user.strip().lower()} from:{cls.network(client)}"

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
                what = "client address" if key.startswith("ip:") else "login from this network"
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
                log.warning(
                    "login lockout",
                    source=client,
                    network=self.network(client),
                    locked=key.partition(":")[0],
                    user=user[:100],
                    lockout_seconds=self.lockout_seconds,
                )
            worst = max(worst, len(record.failures) or self.max_failures)
        delay: float = self.backoff_base_seconds * float(2 ** max(worst - 1, 0))
        return min(delay, self.backoff_cap_seconds)

    def succeeded(self, user: str, client: str = "") -> None:
        """A correct password forgets the login's failures from the client's network.

        The source address's failures stay counted, so one valid login cannot be used to keep
        guessing at other users from there; a lock stays until it ends. Without ``client``
        nothing is forgotten: the failures of every network expire with the window.
        """
        if client:
            record = self._records.get(self.keys(client, user)[1])
            if record is not None:
                record.failures.clear()
