"""What the processing steps work on: the message they share, and one route's findings.

``Mail`` is the same for every route of a message; ``Context`` is one route's copy, which the
steps fill in as they go (the parties after matching, the verdicts after trust), so a later
step reads what an earlier one found instead of working it out again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from mailledger.capture.pipeline.claimed import ClaimedMessage, ClaimedRoute
from mailledger.capture.pipeline.lookups import Lookups
from mailledger.capture.pipeline.pending import PendingRows
from mailledger.capture.pipeline.tracer import Tracer
from mailledger.config import Settings
from mailledger.mail.addresses import Mailbox
from mailledger.mail.parsing import ParsedMessage
from mailledger.routing.matcher import Match
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.models import Direction, PartyKind, RouteKind, Tenant
from mailledger.store.precompiled import Cursor
from mailledger.verify.messageauth import MessageAuth
from mailledger.verify.results import PASS


@dataclass(frozen=True, slots=True)
class Party:
    """One address of the email in one role, normalized for the tenant."""

    role: str
    mailbox: Mailbox
    key: str


@dataclass(frozen=True, slots=True)
class Mail:
    """One received message as every route's steps see it: its parse, verdicts and stores."""

    session: Session  # the rare writes (forwarding set-up, webhook events) go through it
    sql: Cursor  # the hot statements run on the driver's cursor of the same transaction
    blobs: BlobBackend
    settings: Settings
    message: ClaimedMessage
    parsed: ParsedMessage
    sender: Mailbox  # the single From mailbox
    trace: Tracer
    auth: MessageAuth
    final_attempt: bool  # the last try: a temporary failure decides instead of waiting
    lookups: Lookups  # answers read once for the whole processing transaction
    rows: PendingRows  # sources, participants, attachments and trace, inserted together
    dedupe_key: str  # one email, one activity: its Message-ID's key, or the checksum without
    checksum: str  # the content checksum (From, To, Cc, Date, Subject, text)
    # The attachments' blobs, stored before the transaction, in the parse's order.
    attachments: tuple[str, ...] = ()

    @property
    def force(self) -> bool:
        """Released by the operator with --force: policies give way, trust is only noted."""
        return self.message.force_record


@dataclass(slots=True)
class Context:
    """One route's copy of the message, and what the steps found out about it so far."""

    mail: Mail
    route: ClaimedRoute
    tenant: Tenant
    # Set by the match step: From, To and Cc, and what each address is.
    parties: list[Party] = field(default_factory=list)
    matches: dict[str, Match] = field(default_factory=dict)
    # Set by the trust step: the verdicts stored with the activity, where they came from
    # ("" when no verdicts were read: a submission), its direction and its owner.
    verdicts: dict[str, Any] = field(default_factory=dict)
    verdict_source: str = ""
    direction: Direction = Direction.INBOUND
    owner: int | None = None
    # Set by the loop guard, read by the record step: the tenant's activities that are this
    # email (by dedupe key or checksum), as (id, dedupe_key, content_key, message_id).
    same_email: list[tuple[int, str, str, str]] | None = None

    @property
    def sender_key(self) -> str:
        """The From address, normalized (the first party: screening kept capture From out)."""
        return self.parties[0].key

    @property
    def sender_match(self) -> Match:
        """What the From address is: staff, contact, company or unmatched."""
        return self.matches[self.sender_key]

    @property
    def sender_authenticated(self) -> bool:
        """Whether the From itself is authenticated, not only the path the copy took.

        A log@ copy past the trust step had its staff From authenticated by the log rule
        (aligned SPF or DKIM) or by the relay's login (DESIGN §4); a synced copy from the
        staff member is their own mail, read from their own mailbox. A forwarded copy proves
        its forwarder; its sender counts only when the author's own domain authenticated it
        (aligned DKIM surviving the forward, a trusted sealer's DMARC, or DMARC). False
        before the trust step and for a copy let through untrusted by an operator.
        """
        trust = self.verdicts.get("trust", "")
        if trust in ("", "untrusted"):
            return False
        if self.route.kind is RouteKind.LOG:
            return True
        if self.route.kind is RouteKind.SYNC and self.sender_match.kind is PartyKind.STAFF:
            return True  # the staff member's own sent mail, read from their own mailbox
        original = self.verdicts.get("original")
        if isinstance(original, dict):
            return original.get("result") == PASS
        return self.verdicts.get("dmarc") == PASS

    @property
    def external(self) -> list[Party]:
        """The parties that are not staff: the clients the activity is about."""
        return [p for p in self.parties if self.matches[p.key].kind is not PartyKind.STAFF]
