"""The domain of DESIGN §2 as SQLAlchemy tables.

Addresses are stored normalized (see ``mailledger.mail.addresses``) so that every lookup is an
exact match on an indexed column.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from mailledger.store.feedposition import FeedPosition, install_feed_ddl


def utcnow() -> datetime:
    """Now, timezone-aware in UTC; every timestamp we store is UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that comes back timezone-aware from SQLite as well as PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use mailledger.store.models.utcnow()")
        # SQLite stores the fields without the offset, read back as UTC: store UTC's fields.
        return value.astimezone(UTC) if value.utcoffset() else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


# Named constraints make Alembic migrations deterministic on SQLite and PostgreSQL alike.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class MessageState(enum.StrEnum):
    RECEIVED = "received"
    PROCESSED = "processed"
    QUARANTINED = "quarantined"
    FAILED = "failed"


class RouteKind(enum.StrEnum):
    USER = "user"  # richard@acme.capture.example: Richard's forwarded mail
    LOG = "log"  # log@acme.capture.example: BCC of mail staff send
    # postmaster@ and abuse@ of a capture domain: must be accepted (RFC 5321 §4.5.1,
    # RFC 2142) and are kept for the operator, never recorded as correspondence.
    OPERATOR = "operator"
    # Fetched from the staff member's own mailbox by mailbox sync (DESIGN §12).
    SYNC = "sync"


class Direction(enum.StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class PartyKind(enum.StrEnum):
    STAFF = "staff"
    CONTACT = "contact"
    COMPANY = "company"  # not a known contact, but from a domain a company owns
    UNMATCHED = "unmatched"


def _enum(kind: type[enum.StrEnum], name: str) -> Enum:
    # Stored as the readable value, checked in Python: adding a value needs no migration dance.
    return Enum(kind, name=name, native_enum=False, length=16, values_callable=_values)


def _values(kind: type[enum.StrEnum]) -> list[str]:
    return [member.value for member in kind]


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    capture_domain: Mapped[str] = mapped_column(String(255), unique=True)
    # Policies (DESIGN §2, §5).
    create_unknown_contacts: Mapped[bool] = mapped_column(Boolean, default=False)
    record_internal: Mapped[bool] = mapped_column(Boolean, default=False)
    strip_plus_tags: Mapped[bool] = mapped_column(Boolean, default=True)
    # A filtering MTA the tenant runs in front of us: mail from these networks carries that
    # gateway's Authentication-Results (with this authserv-id), which we then believe.
    gateway_networks: Mapped[list[Any]] = mapped_column(default=list)
    gateway_authserv_id: Mapped[str] = mapped_column(String(255), default="")
    # Set by `tenant disable`: every capture address of the domain is refused at RCPT.
    disabled_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # --- sending from the CRM: the system sender (migration 0012) ---
    # `tenant set --system-sender`: a staff address whose domain's DKIM key is verified, that
    # sign-in links and other system mail to this tenant come from; "" means [service]'s
    # system address (domains/systemsender.py).
    system_sender: Mapped[str] = mapped_column(String(320), default="")

    customer_domains: Mapped[list[CustomerDomain]] = relationship(
        back_populates="tenant", cascade="all, delete-orphan"
    )
    staff: Mapped[list[Staff]] = relationship(back_populates="tenant", cascade="all, delete-orphan")


class CustomerDomain(Base):
    """A domain the tenant sends as (acme.com); trusted only once verified (DESIGN §4)."""

    __tablename__ = "customer_domains"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    domain: Mapped[str] = mapped_column(String(255), unique=True)
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    verified_at: Mapped[datetime | None] = mapped_column(default=None)

    tenant: Mapped[Tenant] = relationship(back_populates="customer_domains")


class Staff(Base):
    __tablename__ = "staff"
    __table_args__ = (UniqueConstraint("tenant_id", "username"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    username: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200), default="")
    # Where forwarding confirmations are handed back to.
    primary_address: Mapped[str] = mapped_column(String(320))
    password_hash: Mapped[str | None] = mapped_column(String(255), default=None)
    # `staff disable` (undone by `enable`) and `staff remove --keep-history`: either way the
    # capture address is refused at RCPT; a removed member stays only as the name his kept
    # activities carry (store/removal.py).
    disabled_at: Mapped[datetime | None] = mapped_column(default=None)
    removed_at: Mapped[datetime | None] = mapped_column(default=None)
    # `staff set … --admin`: the web pages widen this member's view to the whole tenant.
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # --- sending from the CRM: the signature (migration 0012) ---
    # Added below the text of mail sent with POST /v1/messages: plain text after the "-- "
    # line, HTML in a <div> (the text one, escaped, when there is no HTML one); "": none.
    signature_text: Mapped[str] = mapped_column(Text, default="")
    signature_html: Mapped[str] = mapped_column(Text, default="")

    tenant: Mapped[Tenant] = relationship(back_populates="staff")
    addresses: Mapped[list[StaffAddress]] = relationship(
        back_populates="staff", cascade="all, delete-orphan"
    )


class StaffAddress(Base):
    """One of a staff member's own addresses; an address belongs to one staff member only."""

    __tablename__ = "staff_addresses"

    id: Mapped[int] = mapped_column(primary_key=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id", ondelete="CASCADE"))
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(String(320), unique=True)
    verified: Mapped[bool] = mapped_column(Boolean, default=False)

    staff: Mapped[Staff] = relationship(back_populates="addresses")


class Company(Base):
    __tablename__ = "companies"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    domains: Mapped[list[CompanyDomain]] = relationship(
        back_populates="company", cascade="all, delete-orphan"
    )


class CompanyDomain(Base):
    __tablename__ = "company_domains"
    __table_args__ = (UniqueConstraint("company_id", "domain"), Index(None, "tenant_id", "domain"))

    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    domain: Mapped[str] = mapped_column(String(255))

    company: Mapped[Company] = relationship(back_populates="domains")


class Contact(Base):
    __tablename__ = "contacts"
    # The feed's company filter and a company's contact count look contacts up by company.
    __table_args__ = (Index(None, "company_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    company_id: Mapped[int | None] = mapped_column(
        ForeignKey("companies.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    addresses: Mapped[list[ContactAddress]] = relationship(
        back_populates="contact", cascade="all, delete-orphan"
    )
    company: Mapped[Company | None] = relationship()


class ContactAddress(Base):
    __tablename__ = "contact_addresses"
    __table_args__ = (UniqueConstraint("tenant_id", "address"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(String(320))

    contact: Mapped[Contact] = relationship(back_populates="addresses")


class NeverLog(Base):
    """An address or a domain never recorded, for the whole tenant or for one staff member."""

    __tablename__ = "never_log"
    __table_args__ = (UniqueConstraint("tenant_id", "staff_id", "pattern"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    staff_id: Mapped[int | None] = mapped_column(
        ForeignKey("staff.id", ondelete="CASCADE"), default=None
    )
    pattern: Mapped[str] = mapped_column(String(320))


class ReceivedMessage(Base):
    """Every message accepted over SMTP, durable before we answered 250."""

    __tablename__ = "received_messages"
    # Processing claims the oldest waiting first: (state, id) gives them in order (0019).
    __table_args__ = (Index(None, "state", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    queue_id: Mapped[str] = mapped_column(String(40), unique=True)
    trace_id: Mapped[str] = mapped_column(String(40))
    blob: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    peer: Mapped[str] = mapped_column(String(100))
    helo: Mapped[str] = mapped_column(String(255), default="")
    mail_from: Mapped[str] = mapped_column(String(320))
    rcpt_to: Mapped[list[Any]] = mapped_column()
    tls: Mapped[str] = mapped_column(String(100), default="")
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    state: Mapped[MessageState] = mapped_column(
        _enum(MessageState, "message_state"), default=MessageState.RECEIVED
    )
    reason: Mapped[str] = mapped_column(Text, default="")
    message_id: Mapped[str] = mapped_column(String(998), default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(200), default=None)
    claim_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    auth: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Set by `quarantine release --force`: record despite the policy that quarantined it.
    force_record: Mapped[bool] = mapped_column(Boolean, default=False)
    # The staff member who submitted it through the relay after SMTP AUTH (DESIGN §6): that
    # login, not SPF or DKIM, is what the trust step checks for such a message.
    submitted_by_staff_id: Mapped[int | None] = mapped_column(
        ForeignKey("staff.id", ondelete="SET NULL"), default=None
    )
    # Fetched from this mailbox account (DESIGN §12), not received over SMTP.
    mailbox_account_id: Mapped[int | None] = mapped_column(
        ForeignKey("mailbox_accounts.id", ondelete="SET NULL"), default=None, index=True
    )

    routes: Mapped[list[MessageRoute]] = relationship(
        back_populates="message", cascade="all, delete-orphan", order_by="MessageRoute.id"
    )
    trace: Mapped[list[TraceEntry]] = relationship(
        back_populates="message", cascade="all, delete-orphan", order_by="TraceEntry.id"
    )


class MessageRoute(Base):
    """One capture address a received message was accepted for."""

    __tablename__ = "message_routes"
    # The forwarding health pass asks when a staff member's forward last brought mail in.
    __table_args__ = (Index(None, "staff_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("received_messages.id", ondelete="CASCADE"), index=True
    )
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[RouteKind] = mapped_column(_enum(RouteKind, "route_kind"))
    staff_id: Mapped[int | None] = mapped_column(
        ForeignKey("staff.id", ondelete="SET NULL"), default=None
    )
    rcpt: Mapped[str] = mapped_column(String(320))
    # What processing decided for this route: "", "recorded", or the quarantine reason.
    outcome: Mapped[str] = mapped_column(Text, default="")
    activity_id: Mapped[int | None] = mapped_column(
        ForeignKey("activities.id", ondelete="SET NULL"), default=None
    )

    message: Mapped[ReceivedMessage] = relationship(back_populates="routes")


class TraceEntry(Base):
    """What one processing step decided about a message, and why."""

    __tablename__ = "trace_entries"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("received_messages.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(default=utcnow)
    step: Mapped[str] = mapped_column(String(40))
    decision: Mapped[str] = mapped_column(String(40))
    detail: Mapped[str] = mapped_column(Text, default="")

    message: Mapped[ReceivedMessage] = relationship(back_populates="trace")


class Thread(Base):
    __tablename__ = "threads"
    __table_args__ = (Index(None, "tenant_id", "subject_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    subject_key: Mapped[str] = mapped_column(String(998))
    # The sorted non-staff addresses, so subject threading needs the same parties.
    parties_key: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Activity(Base):
    """One email in the CRM record, however many paths it arrived by."""

    __tablename__ = "activities"
    __table_args__ = (
        UniqueConstraint("tenant_id", "dedupe_key"),
        Index(None, "tenant_id", "message_id"),
        Index(None, "tenant_id", "content_key"),
        Index(None, "tenant_id", "from_address", "created_at"),
        Index(None, "tenant_id", "feed_position", "id"),
        # `activities list` and the pages: a tenant's newest first, paged by (occurred_at, id).
        Index(None, "tenant_id", "occurred_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # "mid:<Message-ID>" or, without one, "sum:<content checksum>" (see routing/dedupe.py).
    dedupe_key: Mapped[str] = mapped_column(String(200))
    # The content checksum, kept as well: it finds the same email when a path rewrote Message-ID.
    content_key: Mapped[str] = mapped_column(String(80), default="")
    direction: Mapped[Direction] = mapped_column(_enum(Direction, "direction"))
    staff_id: Mapped[int | None] = mapped_column(
        ForeignKey("staff.id", ondelete="SET NULL"), default=None
    )
    thread_id: Mapped[int | None] = mapped_column(
        ForeignKey("threads.id", ondelete="SET NULL"), default=None
    )
    subject: Mapped[str] = mapped_column(Text, default="")
    from_address: Mapped[str] = mapped_column(String(320), default="")
    from_name: Mapped[str] = mapped_column(String(200), default="")
    message_id: Mapped[str] = mapped_column(String(998), default="")
    in_reply_to: Mapped[str] = mapped_column(Text, default="")
    references: Mapped[str] = mapped_column(Text, default="")
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    text_body: Mapped[str] = mapped_column(Text, default="")
    html_body: Mapped[str] = mapped_column(Text, default="")
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    auth: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # What the activity is about in the CRM (an opportunity, a ticket…), set later by users:
    # ``regarding`` is its label, ``regarding_type`` and ``regarding_ref`` name it; all "" when
    # unset (store/regarding.py).
    regarding: Mapped[str] = mapped_column(String(200), default="")
    regarding_type: Mapped[str] = mapped_column(String(40), default="")
    regarding_ref: Mapped[str] = mapped_column(String(200), default="")
    raw_blob: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # "email", or "meeting" for an appointment from a calendar (calendar sync, migration 0014).
    kind: Mapped[str] = mapped_column(String(16), default="email")
    # Where the activity sits in the API's feed (store/feed.py): on PostgreSQL the id of the
    # transaction that created it, on SQLite a counter (store/feedposition.py).
    feed_position: Mapped[int] = mapped_column(BigInteger, default=FeedPosition())

    participants: Mapped[list[Participant]] = relationship(
        back_populates="activity", cascade="all, delete-orphan", order_by="Participant.id"
    )
    sources: Mapped[list[ActivitySource]] = relationship(
        back_populates="activity", cascade="all, delete-orphan", order_by="ActivitySource.id"
    )
    attachments: Mapped[list[Attachment]] = relationship(
        back_populates="activity", cascade="all, delete-orphan", order_by="Attachment.id"
    )


class Participant(Base):
    __tablename__ = "participants"
    __table_args__ = (
        UniqueConstraint("activity_id", "role", "address"),
        Index(None, "contact_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    activity_id: Mapped[int] = mapped_column(ForeignKey("activities.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(8))  # from, to, cc, bcc
    address: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200), default="")
    kind: Mapped[PartyKind] = mapped_column(_enum(PartyKind, "party_kind"))
    staff_id: Mapped[int | None] = mapped_column(
        ForeignKey("staff.id", ondelete="SET NULL"), default=None
    )
    contact_id: Mapped[int | None] = mapped_column(
        ForeignKey("contacts.id", ondelete="SET NULL"), default=None
    )
    company_id: Mapped[int | None] = mapped_column(
        ForeignKey("companies.id", ondelete="SET NULL"), default=None
    )

    activity: Mapped[Activity] = relationship(back_populates="participants")


class ActivitySource(Base):
    """One path by which the activity's email reached us (a route of a received message)."""

    __tablename__ = "activity_sources"
    __table_args__ = (UniqueConstraint("activity_id", "route_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    activity_id: Mapped[int] = mapped_column(ForeignKey("activities.id", ondelete="CASCADE"))
    message_id: Mapped[int] = mapped_column(ForeignKey("received_messages.id", ondelete="CASCADE"))
    route_id: Mapped[int] = mapped_column(ForeignKey("message_routes.id", ondelete="CASCADE"))
    kind: Mapped[RouteKind] = mapped_column(_enum(RouteKind, "route_kind"))
    staff_id: Mapped[int | None] = mapped_column(
        ForeignKey("staff.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    activity: Mapped[Activity] = relationship(back_populates="sources")


class Attachment(Base):
    """A file of the email; inline images referenced by ``cid:`` are kept with ``inline``."""

    __tablename__ = "attachments"
    # A feed page finds its attachments by activity id (store/queries.py ATTACHMENTS_OF_IDS).
    __table_args__ = (Index(None, "activity_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    activity_id: Mapped[int] = mapped_column(ForeignKey("activities.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(255), default="")
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)
    blob: Mapped[str] = mapped_column(String(64))
    content_id: Mapped[str] = mapped_column(String(255), default="")
    inline: Mapped[bool] = mapped_column(Boolean, default=False)

    activity: Mapped[Activity] = relationship(back_populates="attachments")


class ForwardingConfirmation(Base):
    """A provider's forwarding-confirmation mail, to hand back to the staff member (DESIGN §6)."""

    __tablename__ = "forwarding_confirmations"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id", ondelete="CASCADE"), index=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("received_messages.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(40))
    code: Mapped[str] = mapped_column(String(40), default="")
    link: Mapped[str] = mapped_column(Text, default="")
    requested_by: Mapped[str] = mapped_column(String(320), default="")
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # pending: waits for the relay to hand the mail back to the staff member's primary address.
    handback_state: Mapped[str] = mapped_column(String(16), default="pending")


class OutboundState(enum.StrEnum):
    QUEUED = "queued"  # waiting for its next attempt (retry_after)
    HELD = "held"  # not sent: e.g. no verified DKIM key and the policy is to hold
    DELIVERED = "delivered"
    BOUNCED = "bounced"  # a permanent failure; a DSN went to the sender
    EXPIRED = "expired"  # the retry schedule ran out; a DSN went to the sender


class OutboundKind(enum.StrEnum):
    RELAY = "relay"  # staff mail submitted through us
    HANDBACK = "handback"  # a provider's forwarding confirmation, handed back unmodified
    CHALLENGE = "challenge"  # our own round-trip forwarding check
    DSN = "dsn"  # a delivery status notification we generated (RFC 3464)
    SYSTEM = "system"  # mail of our own to a staff member: a sign-in link


class OutboundMessage(Base):
    """One message to deliver to one recipient domain, with its queue state (DESIGN §2, §9)."""

    __tablename__ = "outbound_messages"
    __table_args__ = (Index(None, "state", "retry_after"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    queue_id: Mapped[str] = mapped_column(String(40), index=True)
    tenant_id: Mapped[int | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="SET NULL"), default=None
    )
    staff_id: Mapped[int | None] = mapped_column(
        ForeignKey("staff.id", ondelete="SET NULL"), default=None
    )
    kind: Mapped[OutboundKind] = mapped_column(_enum(OutboundKind, "outbound_kind"))
    # The bytes to send, exactly (signed when signing applied), in the blob store.
    blob: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    mail_from: Mapped[str] = mapped_column(String(320))  # "" for a DSN (null reverse path)
    domain: Mapped[str] = mapped_column(String(255))  # the recipient domain of this row
    rcpt_to: Mapped[list[Any]] = mapped_column()
    state: Mapped[OutboundState] = mapped_column(
        _enum(OutboundState, "outbound_state"), default=OutboundState.QUEUED
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    retry_after: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(200), default=None)
    claim_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str] = mapped_column(Text, default="")
    # Per-recipient outcome: address → {"code": 250, "text": "...", "at": iso time}.
    results: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # How DKIM signing went: "signed d=acme.com s=sel1", "unsigned: no verified key", …
    signing: Mapped[str] = mapped_column(Text, default="")
    activity_id: Mapped[int | None] = mapped_column(
        ForeignKey("activities.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class DkimKey(Base):
    """A tenant's DKIM key for one customer domain and selector, the private half sealed.

    The private key lives here, sealed with ``[secrets] key_file`` (``store.dkimkeys``), so
    every node signs with the same key and none needs a key file or a shared disk.
    """

    __tablename__ = "dkim_keys"
    __table_args__ = (UniqueConstraint("domain", "selector"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    domain: Mapped[str] = mapped_column(String(255))
    selector: Mapped[str] = mapped_column(String(63))
    algorithm: Mapped[str] = mapped_column(String(16))  # rsa, ed25519
    # The private key (PEM, or dkimpy's base64 Ed25519 seed), sealed (store.secretbox). None
    # only for a key made before migration 0018 whose file `dkim import` has not read yet.
    private_key: Mapped[str | None] = mapped_column(Text, default=None)
    # The file a key made before 0018 was kept in (read once by `dkim import`, then it can be
    # deleted); None for every key made since.
    private_key_path: Mapped[str | None] = mapped_column(Text, default=None)
    # The TXT record to publish at <selector>._domainkey.<domain>.
    public_record: Mapped[str] = mapped_column(Text)
    # Set only when the live DNS check saw the record published and matching the key.
    verified_at: Mapped[datetime | None] = mapped_column(default=None)
    # The key signing uses for its domain; rotation switches it once the new one is verified.
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    # When it became the key signing uses: a domain's first key when made, a later one when
    # rotation switched to it.
    activated_at: Mapped[datetime | None] = mapped_column(default=None)
    retired_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ForwardingCheck(Base):
    """Our round-trip forwarding proof for a staff member (DESIGN §6)."""

    __tablename__ = "forwarding_checks"

    id: Mapped[int] = mapped_column(primary_key=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id", ondelete="CASCADE"), index=True)
    token: Mapped[str] = mapped_column(String(128), unique=True)
    sent_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    proven_at: Mapped[datetime | None] = mapped_column(default=None)
    # What the forwarded copy looked like: envelope pattern, DKIM and ARC signers, peer.
    observed: Mapped[dict[str, Any]] = mapped_column(default=dict)


# --- Forwarding health (forwarding/health.py): does a proven forward still work? ----------


class ForwardingHealth(Base):
    """Whether a staff member's proven forwarding still works, and since when it does not.

    A password change or an admin's policy stops a forward silently; the health pass
    (forwarding/health.py) rechecks it and watches for silence, and keeps its verdict here.
    """

    __tablename__ = "forwarding_health"

    id: Mapped[int] = mapped_column(primary_key=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id", ondelete="CASCADE"), unique=True)
    # "proven" or "broken", and since when; for broken, our best estimate of when it stopped.
    state: Mapped[str] = mapped_column(String(16))
    since: Mapped[datetime] = mapped_column()
    # Why it is broken: "no-return" (a check did not come back in time) or "silence"; "" else.
    reason: Mapped[str] = mapped_column(String(16), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    # When the staff member was mailed about this breakage: cleared when forwarding is proven
    # again, so each breakage is mailed once.
    notified_at: Mapped[datetime | None] = mapped_column(default=None)
    checked_at: Mapped[datetime] = mapped_column(default=utcnow)


class PeriodicRun(Base):
    """A periodic job that one node of several runs at a time (store/periodic.py)."""

    __tablename__ = "periodic_runs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The node running it now, until its lease lapses (a node that died is taken over).
    holder: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    last_started_at: Mapped[datetime | None] = mapped_column(default=None)
    last_finished_at: Mapped[datetime | None] = mapped_column(default=None)


class SenderCount(Base):
    """Messages seen from one sender per time bucket, for the loop guard (DESIGN §5)."""

    __tablename__ = "sender_counts"
    __table_args__ = (UniqueConstraint("tenant_id", "sender", "bucket"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    sender: Mapped[str] = mapped_column(String(320))
    bucket: Mapped[int] = mapped_column(BigInteger)
    count: Mapped[int] = mapped_column(Integer, default=0)


class ApiToken(Base):
    """A tenant's API token: only its SHA-256 is kept (store/apitokens.py)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    # The token's first characters, shown in lists so a person can tell tokens apart.
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    read_only: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class SigninToken(Base):
    """A one-time sign-in link for the web pages; only its SHA-256 is kept (store/websessions)."""

    __tablename__ = "signin_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column(default=None)


class WebSession(Base):
    """A signed-in browser: the cookie's SHA-256, its staff member, and its CSRF token."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column(default=None)


class FeedClock(Base):
    """SQLite's feed counter: one row, advanced by a trigger on every new activity."""

    __tablename__ = "feed_clock"

    id: Mapped[int] = mapped_column(primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, default=0)


install_feed_ddl(Base.metadata)


class LoginFailure(Base):
    """Failed relay logins of one key (a source, or a login from a network), for every node.

    ``key`` is ``ip:ADDRESS`` or ``user:LOGIN from:NETWORK`` (see ``store.logins``).
    """

    __tablename__ = "login_failures"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    # Failures since window_started_at; set back to 0 when they earn a lock.
    failures: Mapped[int] = mapped_column(Integer)
    window_started_at: Mapped[datetime] = mapped_column()
    locked_until: Mapped[datetime | None] = mapped_column(default=None)
    # The last failure: a row idle longer than the window and the lockout is pruned.
    updated_at: Mapped[datetime] = mapped_column(index=True)


class EndpointState(enum.StrEnum):
    ACTIVE = "active"
    FAILING = "failing"  # a delivery used up the retry schedule; a success makes it active
    DISABLED = "disabled"  # it answered 410 Gone, or the operator disabled it: nothing is sent


class WebhookDeliveryState(enum.StrEnum):
    PENDING = "pending"  # waiting for its next attempt (retry_after)
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # the schedule ran out, or the endpoint is gone or disabled


class WebhookEndpoint(Base):
    """A URL of a tenant's CRM that receives signed events (DESIGN §11)."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    # The event types it receives; empty: every type, those added later included.
    events: Mapped[list[Any]] = mapped_column(default=list)
    # "whsec_" + base64 of the key (Standard Webhooks); shown once, kept to sign with,
    # sealed with [secrets] key_file (store.secretbox): the database alone cannot sign.
    secret: Mapped[str] = mapped_column(String(500))
    # After a rotation the old secret signs too (a second signature) until it expires.
    previous_secret: Mapped[str] = mapped_column(String(500), default="")
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    state: Mapped[EndpointState] = mapped_column(
        _enum(EndpointState, "endpoint_state"), default=EndpointState.ACTIVE
    )
    state_reason: Mapped[str] = mapped_column(Text, default="")
    state_changed_at: Mapped[datetime | None] = mapped_column(default=None)
    # --- webhook upkeep: when the tenant's admins were mailed that it is failing; one mail
    # per failing spell, the spell that began at ``state_changed_at``.
    failing_notified_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookEvent(Base):
    """One event, written in the transaction of the change it reports: the outbox."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    # The webhook-id header: the same for every attempt and replay, so receivers dedupe on it.
    webhook_id: Mapped[str] = mapped_column(String(40), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    # The JSON body exactly as sent and signed: {"type", "timestamp", "data"}.
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event for one endpoint, with its queue state: the row a webhook worker claims."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index(None, "state", "retry_after"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    event_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("webhook_events.id", ondelete="CASCADE"),
        index=True,
    )
    endpoint_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True
    )
    state: Mapped[WebhookDeliveryState] = mapped_column(
        _enum(WebhookDeliveryState, "webhook_delivery_state"), default=WebhookDeliveryState.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    retry_after: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(200), default=None)
    claim_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str] = mapped_column(Text, default="")
    # The delivery this one replays, when an operator asked for it again.
    replay_of: Mapped[int | None] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("webhook_deliveries.id", ondelete="SET NULL"),
        default=None,
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookAttempt(Base):
    """One attempt at a delivery: when, the answer's status, how long, the answer's start."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"),
        index=True,
    )
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[int | None] = mapped_column(Integer, default=None)  # None: no answer
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    # The first kilobyte of the answer's body, decoded leniently.
    response: Mapped[str] = mapped_column(Text, default="")
    # What went wrong without an answer (refused target, time-out, connection reset).
    error: Mapped[str] = mapped_column(Text, default="")
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)


# --- Mailbox sync (DESIGN §12): accounts, their folders, what each fetched, and the error log ---


class AccountKind(enum.StrEnum):
    IMAP = "imap"  # a password (app password) over IMAP
    GOOGLE = "google"  # OAuth 2.0 + XOAUTH2 against Gmail
    MICROSOFT = "microsoft"  # OAuth 2.0 + XOAUTH2 against Microsoft 365


class SyncMode(enum.StrEnum):
    SWEEP = "sweep"  # INBOX + Sent (+ named folders), read-only, from a fixed window
    FOLDER = "folder"  # import what the user drops into one folder, then move it on


class AccountStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for its first pass, or over a limit
    SYNCING = "syncing"  # a pass is running
    ENABLED = "enabled"  # the last pass succeeded
    ERROR = "error"  # the last pass failed; retrying with back-off
    CONNECTION = "connection"  # failing for two days: no longer trying
    RECONNECT = "reconnect"  # authentication failed: disabled until the user re-connects


class _AccountState:
    """The columns every synced account has, which ``accounts/`` reads and writes.

    Mailbox and calendar accounts keep their credentials, OAuth sign-in and status the same
    way, so one implementation of the statuses, the error log's rules and OAuth serves both.
    """

    login: Mapped[str] = mapped_column(String(320))
    # Sealed (store/secretbox.py): the password, or the OAuth refresh token.
    secret: Mapped[str] = mapped_column(Text, default="")
    # Sealed OAuth access token and when it expires (refreshed before).
    access_token: Mapped[str] = mapped_column(Text, default="")
    access_token_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    # An OAuth sign-in under way (accounts/oauth.py): the state the provider sends back, the
    # sealed PKCE verifier, and when it began (it lapses after a quarter of an hour).
    oauth_state: Mapped[str | None] = mapped_column(String(64), default=None, unique=True)
    oauth_verifier: Mapped[str] = mapped_column(Text, default="")
    oauth_started_at: Mapped[datetime | None] = mapped_column(default=None)
    status: Mapped[AccountStatus] = mapped_column(
        _enum(AccountStatus, "account_status"), default=AccountStatus.PENDING
    )
    status_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The last status told to webhooks (`syncing` comes and goes every pass and is not), and
    # the last one the staff member was mailed about, so each is told once.
    announced_status: Mapped[str] = mapped_column(String(16), default="pending")
    mailed_status: Mapped[str] = mapped_column(String(16), default="")
    last_sync_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str] = mapped_column(Text, default="")
    # The start of the current unbroken run of failures (two days of it: `connection`).
    failing_since: Mapped[datetime | None] = mapped_column(default=None)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    # No pass before this (back-off, a server's "try again in N", the daily limit's next day).
    retry_at: Mapped[datetime | None] = mapped_column(default=None)
    claimed_by: Mapped[str | None] = mapped_column(String(200), default=None)
    claim_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MailboxAccount(_AccountState, Base):
    """A staff member's mailbox (or a shared one) that the server sweeps over IMAP."""

    __tablename__ = "mailbox_accounts"
    __table_args__ = (Index(None, "status", "retry_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    # Whose mailbox it is; for a shared account, the admin who connected it.
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id", ondelete="CASCADE"), index=True)
    kind: Mapped[AccountKind] = mapped_column(_enum(AccountKind, "account_kind"))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    security: Mapped[str] = mapped_column(String(16), default="tls")  # tls | starttls | none
    allow_invalid_cert: Mapped[bool] = mapped_column(Boolean, default=False)
    mode: Mapped[SyncMode] = mapped_column(_enum(SyncMode, "sync_mode"), default=SyncMode.SWEEP)
    # Mail from this moment on (`--since`), fixed when the account is created.
    since: Mapped[datetime] = mapped_column(default=utcnow)
    # `--folder NAME ...`: swept besides INBOX and Sent.
    extra_folders: Mapped[list[Any]] = mapped_column(default=list)
    # Folder mode: where the user drops mail, and where it goes once recorded.
    source_folder: Mapped[str] = mapped_column(String(255), default="mailledger")
    processed_folder: Mapped[str] = mapped_column(String(255), default="mailledger/Processed")
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    messages_synced: Mapped[int] = mapped_column(Integer, default=0)
    # Sent copies (sync.sentcopy): the last received message (submitted through our relay by
    # this staff member) already APPENDed to the mailbox's Sent folder; None until the first
    # look, which starts from the newest so history is not appended.
    sent_copied_through: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # --- Mailbox trust (DESIGN §4, §12) ---
    # `--authserv-id`: the id a plain IMAP account's own server stamps on its
    # Authentication-Results, the only ones trusted for its mail (verify.messageauth); empty:
    # none are. Google's and Microsoft 365's are known and not stored here.
    authserv_id: Mapped[str] = mapped_column(String(255), default="")


class MailboxViewer(Base):
    """A staff member a shared account is visible to (`--visible-to USER`)."""

    __tablename__ = "mailbox_viewers"
    __table_args__ = (UniqueConstraint("account_id", "staff_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("mailbox_accounts.id", ondelete="CASCADE"), index=True
    )
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id", ondelete="CASCADE"))


class MailboxFolder(Base):
    """Sync state of one folder of one account: where the next pass starts."""

    __tablename__ = "mailbox_folders"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("mailbox_accounts.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(1000))
    # What the folder is for us: inbox | sent | extra | source | processed.
    role: Mapped[str] = mapped_column(String(16), default="extra")
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger, default=None)
    highest_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    highestmodseq: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # STATUS (MESSAGES UIDNEXT) at the last pass: unchanged, the folder is skipped.
    uidnext: Mapped[int | None] = mapped_column(BigInteger, default=None)
    messages: Mapped[int | None] = mapped_column(Integer, default=None)
    checked_at: Mapped[datetime | None] = mapped_column(default=None)


class MailboxMessage(Base):
    """One message fetched from one folder: written with its received message, so never twice."""

    __tablename__ = "mailbox_messages"
    __table_args__ = (
        UniqueConstraint("account_id", "folder", "uidvalidity", "uid"),
        Index(None, "account_id", "message_id_header"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("mailbox_accounts.id", ondelete="CASCADE"))
    folder: Mapped[str] = mapped_column(String(1000))
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    uid: Mapped[int] = mapped_column(BigInteger)
    # The Message-ID header, for reconciling after a UIDVALIDITY change.
    message_id_header: Mapped[str] = mapped_column(String(998), default="")
    received_message_id: Mapped[int | None] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("received_messages.id", ondelete="SET NULL"),
        default=None,
        index=True,
    )
    # Folder mode: set once the message was moved to the processed folder.
    moved_at: Mapped[datetime | None] = mapped_column(default=None)
    fetched_at: Mapped[datetime] = mapped_column(default=utcnow)


class MailboxError(Base):
    """The account's error log: when, what went wrong in words, and how to fix it."""

    __tablename__ = "mailbox_errors"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("mailbox_accounts.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(16))
    what: Mapped[str] = mapped_column(Text)
    fix: Mapped[str] = mapped_column(Text, default="")


class MailboxDailyCount(Base):
    """Messages synced per staff member per UTC day, for `[sync] daily_limit_per_user`."""

    __tablename__ = "mailbox_daily_counts"
    __table_args__ = (UniqueConstraint("staff_id", "day"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id", ondelete="CASCADE"))
    day: Mapped[str] = mapped_column(String(10))  # YYYY-MM-DD, UTC
    count: Mapped[int] = mapped_column(Integer, default=0)


# --- Calendar sync (DESIGN §13): calendar accounts, their events, and the error log ---------


class CalendarKind(enum.StrEnum):
    CALDAV = "caldav"  # a password (or app password) over CalDAV
    GOOGLE = "google"  # OAuth 2.0 bearer tokens against Google's CalDAV endpoint


class CalendarPrivacy(enum.StrEnum):
    PUBLIC = "public"  # every colleague sees the details
    PRIVATE = "private"  # only the colleagues it is shared with; the rest see a busy block


class EventOrigin(enum.StrEnum):
    CRM = "crm"  # made in the CRM (`events add`, POST /v1/events): the CRM may change it
    CALENDAR = "calendar"  # made in the calendar: read-only in the CRM


class CalendarAccount(_AccountState, Base):
    """A staff member's CalDAV calendar, synced both ways over a window of days."""

    __tablename__ = "calendar_accounts"
    __table_args__ = (Index(None, "status", "retry_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id", ondelete="CASCADE"), index=True)
    kind: Mapped[CalendarKind] = mapped_column(_enum(CalendarKind, "calendar_kind"))
    # What `--caldav` named (a server, a principal or a calendar), and the calendar collection
    # found from it (current-user-principal → calendar-home-set → the one chosen).
    url: Mapped[str] = mapped_column(String(2000))
    calendar_url: Mapped[str] = mapped_column(String(2000), default="")
    calendar_name: Mapped[str] = mapped_column(String(255), default="")
    privacy: Mapped[CalendarPrivacy] = mapped_column(
        _enum(CalendarPrivacy, "calendar_privacy"), default=CalendarPrivacy.PUBLIC
    )
    # RFC 6578 sync token of the last pass ("": none yet, or the server has none), and the
    # collection's getctag for servers without sync tokens.
    sync_token: Mapped[str] = mapped_column(Text, default="")
    ctag: Mapped[str] = mapped_column(Text, default="")
    # The last full comparison of the window's hrefs and ETags: once a day the window moves
    # on, and events it reaches that did not change are read then.
    compared_at: Mapped[datetime | None] = mapped_column(default=None)
    events_synced: Mapped[int] = mapped_column(Integer, default=0)


class CalendarViewer(Base):
    """A colleague a private calendar is shared with (`--share-with USER`): sees the details."""

    __tablename__ = "calendar_viewers"
    __table_args__ = (UniqueConstraint("account_id", "staff_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("calendar_accounts.id", ondelete="CASCADE"), index=True
    )
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id", ondelete="CASCADE"))


class CalendarEvent(Base):
    """One occurrence of one calendar object in the window (a single event has one).

    ``recurrence_id`` is "" for a single event, and the occurrence's original start (UTC
    ``YYYYMMDDTHHMMSSZ``, or ``YYYYMMDD`` all day) for an occurrence of a recurring one.
    """

    __tablename__ = "calendar_events"
    __table_args__ = (
        UniqueConstraint("account_id", "href", "recurrence_id"),
        Index(None, "account_id", "uid"),
        Index(None, "tenant_id", "start_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("calendar_accounts.id", ondelete="CASCADE"))
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    href: Mapped[str] = mapped_column(String(2000))
    etag: Mapped[str] = mapped_column(String(200), default="")
    uid: Mapped[str] = mapped_column(String(500))
    recurrence_id: Mapped[str] = mapped_column(String(40), default="")
    origin: Mapped[EventOrigin] = mapped_column(_enum(EventOrigin, "event_origin"))
    recurring: Mapped[bool] = mapped_column(Boolean, default=False)
    summary: Mapped[str] = mapped_column(Text, default="")
    description: Mapped[str] = mapped_column(Text, default="")
    location: Mapped[str] = mapped_column(Text, default="")
    start_at: Mapped[datetime] = mapped_column()
    end_at: Mapped[datetime] = mapped_column()
    # The TZID the event was written in ("" for UTC, floating or all-day).
    tzid: Mapped[str] = mapped_column(String(64), default="")
    all_day: Mapped[bool] = mapped_column(Boolean, default=False)
    organizer: Mapped[str] = mapped_column(String(320), default="")
    attendees: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(16), default="confirmed")
    # A CRM change not yet on the calendar: "", "create", "update" or "delete".
    pending: Mapped[str] = mapped_column(String(8), default="")
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)
    # Why the CRM's last change was not written (the calendar changed it first: HTTP 412).
    conflict: Mapped[str] = mapped_column(Text, default="")
    activity_id: Mapped[int | None] = mapped_column(
        ForeignKey("activities.id", ondelete="SET NULL"), default=None, index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class CalendarError(Base):
    """The calendar account's error log, the shape of MailboxError's."""

    __tablename__ = "calendar_errors"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("calendar_accounts.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(16))
    what: Mapped[str] = mapped_column(Text)
    fix: Mapped[str] = mapped_column(Text, default="")


# --- Blobs in the database ([storage] backend = "database", store/dbblobs.py) ---------------


class StoredBlob(Base):
    """A blob kept in the database, named by its SHA-256; its bytes are its ``blob_chunks``.

    The row and every chunk commit in one transaction, so a row found means a complete blob.
    """

    __tablename__ = "blobs"

    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    # Every chunk but the last holds this many bytes, so a read at any offset finds its chunk.
    chunk_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BlobChunk(Base):
    """One piece of a stored blob: ``seq`` 0, 1, … in order (``bytea`` on PostgreSQL)."""

    __tablename__ = "blob_chunks"

    hash: Mapped[str] = mapped_column(
        ForeignKey("blobs.hash", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


# --- DNS checks (store/dnschecks.py): the last live check of each domain, for every node ------


class DnsCheck(Base):
    """The last live DNS check of one of a tenant's domains: when, by what, each verdict.

    A customer domain's row holds its SPF, DKIM and DMARC verdicts, the capture domain's its
    MX. One row per domain, replaced by the next check: a snapshot of DNS, not a history; it
    is here rather than in a server's memory so a restart or another node shows the same.
    """

    __tablename__ = "dns_checks"

    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    domain: Mapped[str] = mapped_column(String(255), primary_key=True)
    checked_at: Mapped[datetime] = mapped_column()
    # What ran it: "cli" (`mailledger dns check`), "api" (POST /v1/dns/check), "page" (/admin/dns).
    checked_by: Mapped[str] = mapped_column(String(8))
    # Who, where known: the staff member (page), the API token's name (api); "" from the CLI.
    actor: Mapped[str] = mapped_column(String(200), default="")
    # Each record's verdict (domains.check.RecordCheck.as_dict): kind, domain, name, status
    # (ok, missing, wrong, error), reason, fix, lookup_failed (DNS did not answer).
    results: Mapped[list[Any]] = mapped_column(default=list)


__all__ = [
    "AccountKind",
    "AccountStatus",
    "Activity",
    "ActivitySource",
    "ApiToken",
    "Attachment",
    "Base",
    "BlobChunk",
    "CalendarAccount",
    "CalendarError",
    "CalendarEvent",
    "CalendarKind",
    "CalendarPrivacy",
    "CalendarViewer",
    "Company",
    "CompanyDomain",
    "Contact",
    "ContactAddress",
    "CustomerDomain",
    "Direction",
    "DkimKey",
    "DnsCheck",
    "EndpointState",
    "EventOrigin",
    "FeedClock",
    "ForwardingCheck",
    "ForwardingConfirmation",
    "ForwardingHealth",
    "LoginFailure",
    "MailboxAccount",
    "MailboxDailyCount",
    "MailboxError",
    "MailboxFolder",
    "MailboxMessage",
    "MailboxViewer",
    "MessageRoute",
    "MessageState",
    "NeverLog",
    "OutboundKind",
    "OutboundMessage",
    "OutboundState",
    "Participant",
    "PartyKind",
    "PeriodicRun",
    "ReceivedMessage",
    "RouteKind",
    "SenderCount",
    "Staff",
    "StaffAddress",
    "StoredBlob",
    "SyncMode",
    "Tenant",
    "Thread",
    "TraceEntry",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookDeliveryState",
    "WebhookEndpoint",
    "WebhookEvent",
    "utcnow",
]
