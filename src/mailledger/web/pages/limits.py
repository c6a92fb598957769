"""How often the pages let one person make us send mail or mint secrets.

Every limit is a token bucket (web/ratelimit.py) kept in this process. Sign-in links are
limited per address asked for, so nobody can fill a staff member's inbox with links, and
per client address, so one client cannot walk a list of addresses. The forwarding check is
limited per staff member: each click mails their own mailbox.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailledger.web.ratelimit import RateLimiter

WINDOW_SECONDS = 15 * 60.0
SIGNIN_PER_ADDRESS = 5  # links mailed to one address per window
SIGNIN_PER_CLIENT = 20  # sign-in requests from one client address per window
CHECKS_PER_STAFF = 3  # forwarding checks one staff member may start per window


def _limiter(allowance: int) -> RateLimiter:
    return RateLimiter(allowance, window_seconds=WINDOW_SECONDS)


@dataclass
class PageLimits:
    """The buckets of one running app."""

    signin_address: RateLimiter = field(default_factory=lambda: _limiter(SIGNIN_PER_ADDRESS))
    signin_client: RateLimiter = field(default_factory=lambda: _limiter(SIGNIN_PER_CLIENT))
    forwarding_check: RateLimiter = field(default_factory=lambda: _limiter(CHECKS_PER_STAFF))
