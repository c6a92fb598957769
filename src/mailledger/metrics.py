"""Prometheus metrics: what this node did (counters, latencies) and what the queues hold.

Two kinds of numbers. Events this process saw (messages accepted and refused, verdicts,
processing and delivery latency, retention deletions) are counters and histograms updated
where they happen, so each node reports its own and Prometheus sums them. The state of the
shared database (queue depths and ages, quarantine size) is read from the database at scrape
time; every node reports the same cluster-wide values, so aggregate those with ``max``.

Everything lives in a registry of its own (not prometheus_client's global one): a process can
hold several servers in tests, and nothing of a library we import leaks into our exposition.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger import __version__
from mailledger.mail import replies
from mailledger.mail.replies import Reply
from mailledger.store.engine import reading
from mailledger.store.models import (
    MessageState,
    OutboundMessage,
    OutboundState,
    ReceivedMessage,
    utcnow,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds: processing is usually well under a second; DNS-bound checks and retries stretch it
# to minutes, delivery retries to hours.
_PROCESSING_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)
_DELIVERY_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)


def _reply_names() -> tuple[dict[Reply, str], dict[tuple[int, str], str]]:
    """Each constant of ``mail.replies`` → its name, and each refusal's (code, status) → name.

    Labels must come from a small fixed set; the reply table is exactly that.
    """
    constants: dict[Reply, str] = {}
    refusals: dict[tuple[int, str], str] = {}
    for name, value in vars(replies).items():
        if isinstance(value, Reply):
            constants.setdefault(value, name.lower())
            if not value.is_success:
                refusals.setdefault((value.code, value.status), name.lower())
    return constants, refusals


_CONSTANTS, _REFUSALS = _reply_names()


def reason_of(reply: Reply) -> str:
    """A short reason label for a reply we gave: ``unknown_user``, ``storage_failed``, …

    A constant is labelled with its name; a constant given a more precise text (``with_text``)
    keeps the label of its code and enhanced status; anything else is ``{code}_{status}``.
    """
    # Several constants share a code and status: the constant itself tells them apart.
    found = _CONSTANTS.get(reply) or _REFUSALS.get((reply.code, reply.status))
    if found is not None:
        return found
    return f"{reply.code}_{reply.status}" if reply.status else str(reply.code)


@dataclass(frozen=True, slots=True)
class QueueState:
    """What the shared database holds, read at scrape time."""

    received: int
    received_oldest_seconds: float
    outbound: int
    outbound_oldest_seconds: float
    outbound_held: int
    quarantined: int
    quarantined_bytes: int


def processing_latency(received_at: datetime | None) -> float | None:
    """Seconds from the 250 to now, or None when the arrival time is unknown."""
    if received_at is None:
        return None
    return max((utcnow() - received_at).total_seconds(), 0.0)


class FinishedSink(Protocol):
    """Where a worker counts the messages it finished: ``Metrics``, or a pipe to the parent."""

    def message_finished(self, state: MessageState, received_at: datetime | None) -> None:
        """Processing left a message in a final state."""


class Metrics:
    """This node's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The standard process_* series (CPU, memory, open files, start time) of this process.
        ProcessCollector(registry=r)
        self.build_info = Gauge(
            "mailledger_build_info",
            "Always 1; the labels say which mailledger and Python this node runs.",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.accepted = Counter(
            "mailledger_messages_accepted",
            "Messages stored and answered 250, by listener.",
            ["listener"],
            registry=r,
        )
        self.refused = Counter(
            "mailledger_messages_refused",
            "SMTP refusals (4xx and 5xx), by stage and reason.",
            ["stage", "reason"],
            registry=r,
        )
        self.verdicts = Counter(
            "mailledger_verdicts",
            "Messages that reached a final state in processing on this node, by state.",
            ["state"],
            registry=r,
        )
        self.processing_latency = Histogram(
            "mailledger_processing_latency_seconds",
            "From the 250 to the final processing state.",
            buckets=_PROCESSING_BUCKETS,
            registry=r,
        )
        self.deliveries = Counter(
            "mailledger_deliveries",
            "Outbound rows that reached a final state on this node, by state.",
            ["state"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "mailledger_delivery_latency_seconds",
            "From queueing to the final delivery state of an outbound row.",
            buckets=_DELIVERY_BUCKETS,
            registry=r,
        )
        self.retention_deleted = Counter(
            "mailledger_retention_deleted",
            "What the retention pass deleted, by kind (raw, quarantine).",
            ["kind"],
            registry=r,
        )
        self.reloads = Counter(
            "mailledger_config_reloads",
            "Configuration reloads (SIGHUP), by result.",
            ["result"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "mailledger_queue_depth",
            "Messages waiting in each queue (cluster-wide: aggregate with max).",
            ["queue"],
            registry=r,
        )
        self.queue_oldest = Gauge(
            "mailledger_queue_oldest_age_seconds",
            "Age of the oldest message waiting in each queue (cluster-wide).",
            ["queue"],
            registry=r,
        )
        self.quarantine_messages = Gauge(
            "mailledger_quarantine_messages",
            "Messages in quarantine (cluster-wide).",
            registry=r,
        )
        self.quarantine_bytes = Gauge(
            "mailledger_quarantine_bytes",
            "Raw size of the messages in quarantine (cluster-wide).",
            registry=r,
        )
        self.database_up = Gauge(
            "mailledger_database_up",
            "1 when the last scrape could read the database, else 0.",
            registry=r,
        )
        self.storage_free = Gauge(
            "mailledger_storage_free_bytes",
            "Bytes free where intake writes (blob directory, SQLite database).",
            ["path"],
            registry=r,
        )

    # --- events ----------------------------------------------------------------------------

    def message_accepted(self, listener: str = "capture") -> None:
        """A message was stored and answered 250."""
        self.accepted.labels(listener).inc()

    def message_refused(self, stage: str, reply: Reply) -> None:
        """A command was refused with ``reply``."""
        self.refused.labels(stage, reason_of(reply)).inc()

    def message_finished(self, state: MessageState, received_at: datetime | None) -> None:
        """Processing left a message in a final state."""
        self.verdict(state.value, processing_latency(received_at))

    def verdict(self, state: str, latency_seconds: float | None) -> None:
        """A final processing state, from this process or reported by a processing process."""
        self.verdicts.labels(state).inc()
        if latency_seconds is not None:
            self.processing_latency.observe(latency_seconds)

    def delivery_finished(self, state: OutboundState, created_at: datetime | None) -> None:
        """An outbound row reached a final state (delivered, bounced, expired)."""
        self.deliveries.labels(state.value).inc()
        if created_at is not None:
            self.delivery_latency.observe(max((utcnow() - created_at).total_seconds(), 0.0))

    # --- the shared state --------------------------------------------------------------------

    def refresh(self, sessions: sessionmaker[Session], free: dict[str, int]) -> None:
        """Read queue and quarantine state from the database (call off the event loop)."""
        for path, value in free.items():
            self.storage_free.labels(path).set(value)
        try:
            state = read_queue_state(sessions)
        except Exception:
            # The scrape still answers, with the database marked down and the last values kept.
            self.database_up.set(0)
            raise
        self.database_up.set(1)
        self.queue_depth.labels("received").set(state.received)
        self.queue_oldest.labels("received").set(state.received_oldest_seconds)
        self.queue_depth.labels("outbound").set(state.outbound)
        self.queue_oldest.labels("outbound").set(state.outbound_oldest_seconds)
        self.queue_depth.labels("outbound_held").set(state.outbound_held)
        self.quarantine_messages.set(state.quarantined)
        self.quarantine_bytes.set(state.quarantined_bytes)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


def read_queue_state(sessions: sessionmaker[Session]) -> QueueState:
    """Queue depths, the oldest waiting message of each queue, and the quarantine's size."""
    now = utcnow()
    with reading(sessions) as session:
        received, received_oldest = session.execute(
            select(func.count(), func.min(ReceivedMessage.received_at)).where(
                ReceivedMessage.state == MessageState.RECEIVED
            )
        ).one()
        outbound, outbound_oldest = session.execute(
            select(func.count(), func.min(OutboundMessage.created_at)).where(
                OutboundMessage.state == OutboundState.QUEUED
            )
        ).one()
        held = session.scalar(
            select(func.count()).where(OutboundMessage.state == OutboundState.HELD)
        )
        quarantined, quarantined_bytes = session.execute(
            select(func.count(), func.coalesce(func.sum(ReceivedMessage.size), 0)).where(
                ReceivedMessage.state == MessageState.QUARANTINED
            )
        ).one()

    def age(oldest: datetime | None) -> float:
        return max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0

    return QueueState(
        received=int(received),
        received_oldest_seconds=age(_aware(received_oldest)),
        outbound=int(outbound),
        outbound_oldest_seconds=age(_aware(outbound_oldest)),
        outbound_held=int(held or 0),
        quarantined=int(quarantined),
        quarantined_bytes=int(quarantined_bytes),
    )


def _aware(value: datetime | None) -> datetime | None:
    """Aggregates bypass the column type, so SQLite's MIN comes back naive (stored as UTC)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
