"""Failed relay logins, counted per source address and per (login, source network).

Failures are counted in a window that begins at a key's first failure and lasts
``window_seconds``; each one makes the next answer to that source slower (doubling, capped),
and ``max_failures`` of them within the window lock that source address, and that login *from
that network* (an IPv4 /24, an IPv6 /64: what one attacker easily holds), for
``lockout_seconds``, whatever password comes next. A locked key is refused before the password
is even checked, so a lock cannot be used to test passwords.

A login is never locked everywhere: anyone who knows a staff member's login could then stop
them sending by failing on purpose. The owner's right password from another network still
works (RFC 4954 §4 lets a server refuse with 454 4.7.0 only the attempts it must). Each lock
is logged with the source that earned it.

The counts live in the database (``store.logins``), so every ``serve`` node on one PostgreSQL
shares them: an attacker gets ``max_failures`` guesses per window in all, not per node, and a
restart forgets nothing. Times come from the wall clock, which the nodes share. Every method
does database I/O: call them from a worker thread, never on the event loop.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from mailledger.logs import get_logger
from mailledger.store import logins

log = get_logger(__name__)

# The network a login's failures are counted in: what one attacker plausibly controls.
IPV4_PREFIX = 24
IPV6_PREFIX = 64
# Longest login and client text a key keeps (RFC 5321 §4.5.3.1.3: no address is longer than
# 320; an address, even IPv6 with a zone, fits 64), so keys fit their column.
MAX_KEY_LOGIN_CHARS = 320
MAX_KEY_CLIENT_CHARS = 64
# How often one node prunes stale rows, at most (seconds of its clock).
PRUNE_INTERVAL_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a login may be tried now, and if not, for how many more seconds."""

    allowed: bool
    retry_in_seconds: float = 0.0
    reason: str = ""


class LoginGuard:
    """Failure counts per source (``ip:...``) and per login and network (``user:...``),
    kept in the database behind ``sessions`` and shared by every node that uses it."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        max_failures: int,
        window_seconds: float,
        lockout_seconds: float,
        backoff_base_seconds: float = 0.5,
        backoff_cap_seconds: float = 8.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self.lockout_seconds = lockout_seconds
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_cap_seconds = backoff_cap_seconds
        self._sessions = sessions
        # Seconds since the epoch: every node must read the same time for a shared row.
        self._clock = clock
        self._pruned_at: float | None = None

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
        """The two counters a login attempt touches: the source, and the login from its network.

        Always in this order: ``count_failure`` relies on one order for every node.
        """
        client = client[:MAX_KEY_CLIENT_CHARS]
        login = user.strip().lower()[:MAX_KEY_LOGIN_CHARS]
        return f"ip:{client}", f"user:{login} from:{cls.network(client)}"

    def _now(self) -> tuple[float, datetime]:
        seconds = self._clock()
        return seconds, datetime.fromtimestamp(seconds, UTC)

    def check(self, client: str, user: str = "") -> Verdict:
        """May this client (and, when known, this user) try a password now?"""
        _, now = self._now()
        keys = self.keys(client, user) if user else self.keys(client, "")[:1]
        locked = logins.locks(self._sessions, keys, now)
        for key in keys:
            until = locked.get(logins.stored_key(key))
            if until is not None:
                what = "client address" if key.startswith("ip:") else "login from this network"
                return Verdict(False, (until - now).total_seconds(), f"{what} locked")
        return Verdict(True)

    def failed(self, client: str, user: str) -> float:
        """Count a failure for both keys; returns the back-off delay to wait before answering."""
        seconds, now = self._now()
        counted = logins.count_failure(
            self._sessions,
            self.keys(client, user),
            now=now,
            window_cutoff=now - timedelta(seconds=self.window_seconds),
            max_failures=self.max_failures,
            lock_until=now + timedelta(seconds=self.lockout_seconds),
        )
        worst = 0
        for one in counted:
            if one.just_locked:
                log.warning(
                    "login lockout",
                    source=client,
                    network=self.network(client),
                    locked=one.key.partition(":")[0],
                    user=user[:100],
                    lockout_seconds=self.lockout_seconds,
                )
            worst = max(worst, one.failures or self.max_failures)
        self._prune(seconds, now)
        delay: float = self.backoff_base_seconds * float(2 ** max(worst - 1, 0))
        return min(delay, self.backoff_cap_seconds)

    def succeeded(self, user: str, client: str = "") -> None:
        """A correct password forgets the login's failures from the client's network.

        The source address's failures stay counted, so one valid login cannot be used to keep
        guessing at other users from there; a lock stays until it ends. Without ``client``
        nothing is forgotten: the failures of every network expire with the window.
        """
        if client:
            _, now = self._now()
            logins.forget(self._sessions, self.keys(client, user)[1], now)

    def _prune(self, seconds: float, now: datetime) -> None:
        """Delete rows idle past both the window and the lockout, once an interval per node.

        Rows are only made by failures, so pruning where failures are counted keeps the table
        as small as the failures of the last window and lockout.
        """
        if self._pruned_at is not None and seconds - self._pruned_at < PRUNE_INTERVAL_SECONDS:
            return
        self._pruned_at = seconds
        idle = max(self.window_seconds, self.lockout_seconds)
        logins.prune(self._sessions, idle_before=now - timedelta(seconds=idle), now=now)
