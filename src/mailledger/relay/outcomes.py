"""What a delivery attempt decides, in one vocabulary per recipient.

Every attempt ends, for each recipient, in :class:`Delivered`, :class:`Deferred` (tried again
after the next interval of ``[relay] retry_schedule_seconds``) or :class:`Failed` (the sender
gets a DSN, ``relay.dsn``), as Haraka's ``next(OK|DENYSOFT|DENY)`` does. Routing (``relay.mx``)
names the :class:`Target` addresses to dial; the SMTP client (``relay.client``) answers one
:class:`Attempt`, or :class:`NextHost` for an address that could not take the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from mailledger.mail.replies import Reply


@dataclass(frozen=True, slots=True)
class Delivered:
    """The remote host took responsibility for the message (``250`` after DATA)."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class Deferred:
    """A temporary failure: try again at ``retry_at`` (None until the schedule decides)."""

    retry_at: datetime | None
    reason: Reply


@dataclass(frozen=True, slots=True)
class Failed:
    """A permanent failure: the sender gets a DSN."""

    reason: Reply


Outcome = Delivered | Deferred | Failed


@dataclass(frozen=True, slots=True)
class Target:
    """One address to dial: the host's name (for SNI and logs), its address and port."""

    name: str
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.name}[{self.address}]:{self.port}"


@dataclass(slots=True)
class NextHost:
    """This address could not take the message before the transaction began; try the next."""

    reason: Reply


@dataclass(slots=True)
class Attempt:
    """One attempt's outcome per recipient, and the host and TLS cipher it was made over."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    host: str = ""
    tls: str = ""
