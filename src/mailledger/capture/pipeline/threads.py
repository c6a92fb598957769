"""Which thread a new activity joins: In-Reply-To/References first, then the subject (DESIGN §5).

A subject alone ("Re: quote") is shared by unrelated conversations, so it joins a thread only
together with the same external parties.
"""

from __future__ import annotations

from sqlalchemy import bindparam, insert, select

from mailledger.mail.parsing import ParsedMessage
from mailledger.routing import dedupe
from mailledger.store.models import Activity, Tenant, Thread
from mailledger.store.precompiled import Cursor, Statement

# Run on the driver's cursor, compiled once (``store.precompiled``).
_THREAD_BY_MESSAGE_IDS = Statement(
    select(Activity.thread_id)
    .where(
        Activity.tenant_id == bindparam("tenant_id"),
        Activity.message_id.in_(bindparam("ids", expanding=True)),
        Activity.thread_id.is_not(None),
    )
    .limit(1)
)
_THREAD_BY_SUBJECT = Statement(
    select(Thread.id)
    .where(
        Thread.tenant_id == bindparam("tenant_id"),
        Thread.subject_key == bindparam("subject_key"),
        Thread.parties_key == bindparam("parties_key"),
    )
    .order_by(Thread.id.desc())
    .limit(1)
)
_NEW_THREAD = Statement(insert(Thread).returning(Thread.id))


def thread_for(sql: Cursor, tenant: Tenant, parsed: ParsedMessage, external_keys: list[str]) -> int:
    """The thread's id: the replied-to activity's, the same subject and parties', or a new one."""
    ids = [*parsed.in_reply_to, *parsed.references]
    if ids:
        thread_id = sql.scalar(_THREAD_BY_MESSAGE_IDS, {"tenant_id": tenant.id, "ids": ids})
        if thread_id is not None:
            return int(thread_id)
    subject = dedupe.subject_key(parsed.subject)
    parties = dedupe.parties_key(external_keys)
    key = {"tenant_id": tenant.id, "subject_key": subject[:998], "parties_key": parties}
    if subject:
        existing = sql.scalar(_THREAD_BY_SUBJECT, key)
        if existing is not None:
            return int(existing)
    return int(sql.scalar(_NEW_THREAD, key))
