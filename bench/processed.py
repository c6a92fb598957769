"""Waiting until the full server has processed what it accepted, read from its database.

The capture listener answers 250 before processing (store first, then process); a phase's
throughput counts a message when its processing finished, so the bench reads each accepted
message's final state and finish time from the database.
"""

from __future__ import annotations

import time
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.store.models import MessageState, ReceivedMessage


def queue_id(reply: str) -> str:
    """The queue id at the end of the capture listener's ``250 2.0.0 Queued as …``."""
    return reply.rsplit(maxsplit=1)[-1]


def wait_processed(
    sessions: sessionmaker[Session], queue_ids: list[str], seconds: float
) -> dict[str, tuple[str, datetime | None]]:
    """Poll until every message left ``received``; their states and finish times.

    After ``seconds`` it returns what has finished so far: the caller counts the rest as
    unfinished.
    """
    deadline = time.monotonic() + seconds
    wanted = set(queue_ids)
    while True:
        with sessions() as session:
            rows = session.execute(
                select(
                    ReceivedMessage.queue_id, ReceivedMessage.state, ReceivedMessage.finished_at
                ).where(ReceivedMessage.queue_id.in_(wanted))
            ).all()
        done = [r for r in rows if r.state is not MessageState.RECEIVED]
        if len(done) == len(wanted) or time.monotonic() > deadline:
            return {r.queue_id: (r.state.value, r.finished_at) for r in done}
        time.sleep(0.05)
