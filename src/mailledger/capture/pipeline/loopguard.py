"""The loop guard: a loop is told by loop evidence, never by how much one sender writes.

Two mail systems passing one message back and forth (a forwarding rule pointing back at a
capture address, a copy we sent coming back through us) leave marks: trace fields naming us,
too many hops, an ``X-Loop`` naming us (``mail.loops``), or the same email arriving at the same
capture address again and again. A staff member's 500 BCCs in an hour leave none of them; how
many messages a sender nobody authenticated may send is the volume brake's business
(``volume``), not this step's (DESIGN §5).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import bindparam, func, select, union_all

from mailledger.capture.pipeline.context import Context
from mailledger.capture.pipeline.decisions import CONTINUE, Decision, Quarantine
from mailledger.mail.loops import loop_evidence
from mailledger.store.models import Activity, ActivitySource, MessageRoute, utcnow
from mailledger.store.precompiled import Statement

# The activities that are this email: found by its dedupe key (Message-ID, or the checksum
# when it has none) or by its content checksum (a forwarder that rewrites the Message-ID
# sends the same From, To, Date, Subject and text round again under a new one). Each lookup
# on its own index; the record step decides from the same rows which one it merges into.
_SAME_EMAIL = Statement(
    union_all(
        select(Activity.id, Activity.dedupe_key, Activity.content_key, Activity.message_id).where(
            Activity.tenant_id == bindparam("tenant_id"), Activity.dedupe_key == bindparam("key")
        ),
        select(Activity.id, Activity.dedupe_key, Activity.content_key, Activity.message_id).where(
            Activity.tenant_id == bindparam("tenant_id"),
            Activity.content_key == bindparam("checksum"),
        ),
    )
)
# How often those activities were recorded from this capture address within the window.
_ARRIVALS = Statement(
    select(func.count())
    .select_from(ActivitySource)
    .join(MessageRoute, MessageRoute.id == ActivitySource.route_id)
    .where(
        ActivitySource.activity_id.in_(bindparam("activities", expanding=True)),
        MessageRoute.rcpt == bindparam("rcpt"),
        ActivitySource.created_at >= bindparam("since"),
    )
)


def same_email(context: Context) -> list[tuple[int, str, str, str]]:
    """The tenant's activities that are this email, read once per route (``Context``)."""
    if context.same_email is None:
        mail = context.mail
        rows = mail.sql.rows(
            _SAME_EMAIL,
            {"tenant_id": context.tenant.id, "key": mail.dedupe_key, "checksum": mail.checksum},
        )
        context.same_email = [(int(r[0]), r[1], r[2], r[3]) for r in rows]
    return context.same_email


class LoopGuard:
    """Quarantine a copy that carries loop evidence, or that keeps coming to one address."""

    name = "loop-guard"

    def run(self, context: Context) -> Decision:
        """Look for loop evidence; an operator's forced release is let through.

        Only recorded arrivals are counted, so a loop once held stays held while the window
        remembers its first rounds; a loop that outlives the window adds at most
        ``loop_max_arrivals`` sources per window.
        """
        mail = context.mail
        if mail.force:
            return CONTINUE
        settings = mail.settings
        evidence = loop_evidence(
            mail.parsed.headers,
            hostname=settings.service.hostname,
            capture_domain=context.tenant.capture_domain,
            max_hops=settings.capture.max_received_headers,
            max_own_hops=settings.processing.loop_max_own_hops,
        )
        if evidence is not None:
            return Quarantine(evidence)
        return _repeated(context)


def _repeated(context: Context) -> Decision:
    """Hold the copy when the same email already arrived here as often as a path allows.

    One email legitimately reaches one capture address more than once (a sender's retry after
    a lost ``250``, the same reply sent twice within a second); again and again is a loop.
    """
    mail, route = context.mail, context.route
    processing = mail.settings.processing
    parsed = mail.parsed
    window = processing.loop_window_seconds
    activities = sorted({row[0] for row in same_email(context)})
    if not activities:
        return CONTINUE  # a new email: it never arrived before
    mail.rows.write()  # the sources this transaction added so far are counted too
    arrivals = mail.sql.scalar(
        _ARRIVALS,
        {
            "activities": activities,
            "rcpt": route.rcpt,
            "since": utcnow() - timedelta(seconds=window),
        },
    )
    if arrivals < processing.loop_max_arrivals:
        return CONTINUE
    email = f"<{parsed.message_id}>" if parsed.message_id else "an email without a Message-ID"
    return Quarantine(
        f"loop: {email} (or the same From, To, Date, Subject and text) arrived at "
        f"{route.rcpt} {arrivals + 1} times within {window:g} s"
    )
