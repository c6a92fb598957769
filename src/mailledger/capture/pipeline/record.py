"""Recording: one email, one activity, however many paths it arrived by (DESIGN §5).

The same email forwarded by Richard, BCC'd to log@ and forwarded by Bob is found by its
Message-ID (or a content checksum when it has none) and merged: each path becomes a source of
the one activity, and the parties a later path names are added to it.
"""

from __future__ import annotations

from sqlalchemy import bindparam, insert, select, update

from mailledger.capture.pipeline.claimed import ClaimedMessage
from mailledger.capture.pipeline.context import Context
from mailledger.capture.pipeline.decisions import Decision, Recorded
from mailledger.capture.pipeline.loopguard import same_email
from mailledger.capture.pipeline.pending import ATTACHMENTS, PARTICIPANTS, SOURCES
from mailledger.capture.pipeline.threads import thread_for
from mailledger.store import webhooks
from mailledger.store.models import Activity, OutboundMessage, Participant, utcnow
from mailledger.store.precompiled import Cursor, Statement

# Run on the driver's cursor, compiled once (``store.precompiled``).
_PARTICIPANTS_OF = Statement(
    select(Participant.role, Participant.address).where(
        Participant.activity_id == bindparam("activity_id")
    )
)
_NEW_ACTIVITY = Statement(insert(Activity).returning(Activity.id))
_TOUCH_ACTIVITY = Statement(
    update(Activity)
    .where(Activity.id == bindparam("activity_id"))
    .values(updated_at=bindparam("now"))
)
_LINK_RELAYED = Statement(
    update(OutboundMessage)
    .where(OutboundMessage.queue_id == bindparam("relayed_as"))
    .values(activity_id=bindparam("activity"))
)


class Record:
    """Find the same email's activity or create it; add this path as a source, and parties."""

    name = "record"

    def run(self, context: Context) -> Decision:
        """Record or merge the copy; the last step, so it always decides."""
        mail, route = context.mail, context.route
        activity, merged = _find_or_create(context)
        if merged:
            mail.trace("record", "merged", f"merged into activity {activity} (source {route.rcpt})")
            # A new source (and maybe parties): the API's updated_at says the activity changed.
            mail.sql.run(_TOUCH_ACTIVITY, {"activity_id": activity, "now": utcnow()})
        else:
            mail.trace("record", "captured", f"activity {activity} ({context.direction.value})")
        _add_participants(context, activity, merged=merged)
        _link_relayed(mail.sql, mail.message, activity)
        # In this transaction: a rollback takes the event with it (DESIGN §11). A merge always
        # adds this path as a source, so it is an update.
        event = webhooks.ACTIVITY_UPDATED if merged else webhooks.ACTIVITY_CREATED
        if mail.lookups.subscribed(context.tenant.id, event):
            mail.rows.write()  # the payload shows the sources and participants just added
            webhooks.activity_changed(
                mail.session,
                context.tenant.id,
                activity,
                event,
                base_url=mail.settings.http.public_url,
                delay_seconds=mail.settings.webhooks.retry_schedule_seconds[0],
            )
        return Recorded(activity, merged)


def _find_or_create(context: Context) -> tuple[int, bool]:
    """Find the same email's activity (Message-ID, then checksum) or create it.

    The checksum stands in for a missing Message-ID only: two present, different Message-IDs
    are two emails however alike their content (the same short reply sent twice), so a
    message with an ID matches by checksum only activities recorded without one.
    """
    mail, route = context.mail, context.route
    key, checksum = mail.dedupe_key, mail.checksum
    # The loop guard read the rows already, unless it was skipped (a forced release). Two
    # lookups, each on its own index (see ``loopguard``): with one OR query SQLite searched
    # (tenant_id, content_key) on tenant_id alone, every activity of the tenant per message
    # (found by `make bench`: processing slowed as the tenant grew).
    by_content_too = not mail.parsed.message_id
    found = [
        activity_id
        for activity_id, dedupe_key, content_key, message_id in same_email(context)
        if dedupe_key == key or (content_key == checksum and (by_content_too or not message_id))
    ]
    existing = min(found, default=None)
    activity = existing
    if activity is None:
        activity = _new_activity(context, key, checksum)
    mail.rows.add(
        SOURCES,
        [
            {
                "activity_id": activity,
                "message_id": mail.message.id,
                "route_id": route.id,
                "kind": route.kind,
                "staff_id": route.staff_id,
            }
        ],
    )
    mail.message.auth = context.verdicts
    return activity, existing is not None


def _new_activity(context: Context, key: str, checksum: str) -> int:
    """Insert the activity and its attachments; returns the activity's id."""
    mail, tenant = context.mail, context.tenant
    parsed, sender, message = mail.parsed, mail.sender, mail.message
    subject_lower = parsed.subject.lower()
    keywords = mail.settings.processing.privacy_keywords
    external_keys = [p.key for p in context.external]
    activity = mail.sql.scalar(
        _NEW_ACTIVITY,
        {
            "tenant_id": tenant.id,
            "dedupe_key": key,
            "content_key": checksum,
            "direction": context.direction,
            "staff_id": context.owner,
            "thread_id": thread_for(mail.sql, tenant, parsed, external_keys),
            "subject": parsed.subject,
            "from_address": sender.address,
            "from_name": sender.name[:200],
            "message_id": parsed.message_id[:998],
            "in_reply_to": " ".join(parsed.in_reply_to),
            "references": " ".join(parsed.references),
            "occurred_at": parsed.date or message.received_at,
            "text_body": parsed.body.text,
            "html_body": parsed.body.html,
            "private": any(word.lower() in subject_lower for word in keywords),
            "auth": dict(context.verdicts),
            "raw_blob": mail.auth.stored_copy(context.verdict_source, message.blob),
        },
    )
    parts = parsed.body.parts
    # Stored before the transaction (``processor.prepare``); else now, with the transaction.
    stored = mail.attachments or tuple(mail.blobs.put_pieces(part.pieces) for part in parts)
    attachments = [
        {
            "activity_id": activity,
            "filename": part.filename,
            "content_type": part.content_type[:255],
            "size": part.size,
            "blob": blob,
            "content_id": part.content_id[:255],
            "inline": part.inline,
        }
        for part, blob in zip(parts, stored, strict=True)
    ]
    if attachments:
        mail.rows.add(ATTACHMENTS, attachments)
    return int(activity)


def _add_participants(context: Context, activity: int, *, merged: bool) -> None:
    """Add each party once per role; a merged path may name parties the first one did not."""
    mail = context.mail
    have: set[tuple[str, str]] = set()
    if merged:
        mail.rows.write()  # an earlier message of this transaction may have added some
        have = {
            (role, address)
            for role, address in mail.sql.rows(_PARTICIPANTS_OF, {"activity_id": activity})
        }
    rows = []
    for party in context.parties:
        if (party.role, party.key) in have:
            continue
        match = context.matches[party.key]
        rows.append(
            {
                "activity_id": activity,
                "role": party.role,
                "address": party.key,
                "name": party.mailbox.name[:200],
                "kind": match.kind,
                "staff_id": match.staff_id,
                "contact_id": match.contact_id,
                "company_id": match.company_id,
            }
        )
        have.add((party.role, party.key))
    if rows:
        mail.rows.add(PARTICIPANTS, rows)


def _link_relayed(sql: Cursor, message: ClaimedMessage, activity: int) -> None:
    """Point the relay's queued copies of a submitted message at its activity."""
    if message.submitted_by_staff_id is None:
        return
    # The relayed copies share the submitted message's queue id.
    sql.run(_LINK_RELAYED, {"relayed_as": message.queue_id, "activity": activity})
