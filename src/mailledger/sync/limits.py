"""The daily sync limit per staff member (``[sync] daily_limit_per_user``, SharpSpring's 100).

Mail over the limit is never dropped: the pass stops short, the account waits (``pending``)
until the next UTC day, and the next pass fetches the rest from where this one stopped. The
count is per staff member, over all their accounts, and per UTC day.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mailledger.config import SyncSettings
from mailledger.store.models import AccountStatus, MailboxAccount, MailboxDailyCount
from mailledger.sync.statuses import next_utc_day, set_status


def day_of(now: datetime) -> str:
    """The UTC day ``now`` falls in, as the count rows name it."""
    return now.astimezone(UTC).strftime("%Y-%m-%d")


def synced_today(session: Session, staff_id: int, now: datetime) -> int:
    """Messages synced for ``staff_id`` on ``now``'s UTC day."""
    found = session.scalar(
        select(MailboxDailyCount.count).where(
            MailboxDailyCount.staff_id == staff_id, MailboxDailyCount.day == day_of(now)
        )
    )
    return int(found or 0)


def allowance(
    session: Session, account: MailboxAccount, now: datetime, settings: SyncSettings
) -> int | None:
    """How many more messages ``account`` may sync today; None: no limit.

    At 0 the account is deferred: ``pending`` until the next UTC day (call it inside the
    pass, after ``pass_started``; ``pass_succeeded`` then keeps it ``pending``).
    """
    limit = settings.daily_limit_per_user
    if limit is None:
        return None
    left = max(limit - synced_today(session, account.staff_id, now), 0)
    if left == 0:
        defer(session, account, now)
    return left


def defer(session: Session, account: MailboxAccount, now: datetime) -> None:
    """Over the limit: ``pending``, not tried again before the next UTC day."""
    account.retry_at = next_utc_day(now)
    set_status(session, account, AccountStatus.PENDING, now)


def count(session: Session, account: MailboxAccount, now: datetime, n: int) -> None:
    """Add ``n`` synced messages to the account's staff member's count for today."""
    if n <= 0:
        return
    values = {"staff_id": account.staff_id, "day": day_of(now), "count": n}
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(MailboxDailyCount).values(values)
    statement = statement.on_conflict_do_update(
        index_elements=[MailboxDailyCount.staff_id, MailboxDailyCount.day],
        set_={"count": MailboxDailyCount.count + statement.excluded.count},
    )
    session.execute(statement)


__all__ = ["allowance", "count", "day_of", "defer", "synced_today"]
