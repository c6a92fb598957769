"""The volume brake: a flood from a sender nobody authenticated is held, and called volume.

Anyone can write a From header. When a staff member's mailbox forwards a thousand messages
from one unauthenticated sender in minutes (a runaway script, a spoofed flood), the brake
holds the rest for a person to look at. It is not loop detection (``loopguard`` does that
from loop evidence) and it never counts a sender that authenticated: a staff member's own
mail (log@, the relay) or a client whose own domain vouches for the message (DESIGN §5).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import aliased

from mailledger.capture.pipeline.context import Context
from mailledger.capture.pipeline.decisions import CONTINUE, Decision, Quarantine
from mailledger.store.models import SenderCount, utcnow
from mailledger.store.precompiled import Statement


def _count_sender(insert_for: Any) -> Statement:
    """One statement that adds one to a sender's bucket, creating it, and returns the count
    with the previous bucket's (None when that bucket is empty)."""
    earlier = aliased(SenderCount, name="earlier")
    previous = (
        select(earlier.count)
        .where(
            earlier.tenant_id == bindparam("tenant_id"),
            earlier.sender == bindparam("sender"),
            earlier.bucket == bindparam("previous"),
        )
        .scalar_subquery()
    )
    statement = insert_for(SenderCount).values(
        tenant_id=bindparam("tenant_id"),
        sender=bindparam("sender"),
        bucket=bindparam("bucket"),
        count=1,
    )
    return Statement(
        statement.on_conflict_do_update(
            index_elements=["tenant_id", "sender", "bucket"],
            set_={"count": SenderCount.count + 1},
        ).returning(SenderCount.count, previous)
    )


# Each dialect's upsert, run on the driver's cursor (``store.precompiled``).
_COUNT_SENDER = {
    "sqlite": _count_sender(sqlite.insert),
    "postgresql": _count_sender(postgresql.insert),
}


class VolumeBrake:
    """Count messages per unauthenticated sender; past the threshold within a window, hold."""

    name = "volume-brake"

    def run(self, context: Context) -> Decision:
        """Count this copy for its sender, unless the sender authenticated or it was forced.

        Counts live in buckets one window long; the current and the previous bucket are added
        up, so a burst that straddles a bucket boundary is still seen.
        """
        mail = context.mail
        if mail.force or context.sender_authenticated:
            return CONTINUE
        settings = mail.settings.processing
        sender = context.sender_key
        window = settings.loop_window_seconds
        bucket = int(utcnow().timestamp() // window)
        upsert = _COUNT_SENDER[mail.sql.dialect_name]
        params = {"tenant_id": context.tenant.id, "sender": sender, "bucket": bucket}
        [(current, previous)] = mail.sql.rows(upsert, params | {"previous": bucket - 1})
        if current + (previous or 0) > settings.loop_threshold:
            return Quarantine(
                f"volume: more than {settings.loop_threshold} messages from {sender} "
                f"within {window:g} s, and the sender is not authenticated"
            )
        return CONTINUE
