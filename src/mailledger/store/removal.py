"""Removing a staff member or a contact, keeping or removing their history as the user chooses.

Neither is the default (SharpSpring asks "keep or remove all prior communication"; so do we):

- **keep**: the person goes, the record stays. A staff member's capture address is refused at
  RCPT from then on (550 5.1.1), his relay password and forwarding proofs are revoked, his own
  addresses and per-staff never-log entries are freed; his row stays as the name his kept
  activities carry, so a second removal is a clear error. A contact's row and addresses go;
  the activities keep the addresses they were written with.
- **remove**: also every activity only they brought in (a staff member: every source of it was
  his capture address; a contact: no other outside party took part) is deleted, with the
  received messages nothing else needs; an activity others brought in too loses only their
  source and participant rows. A removed staff member's row goes as well.

Raw bytes and attachments go from the blob store only when no remaining row references them
(``quarantine.blob_in_use``, the rule ``quarantine delete`` and retention follow). Files are
deleted inside the transaction, after that check, as ``quarantine.delete`` does.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from mailledger.store.blobbackend import BlobBackend, is_digest
from mailledger.store.models import (
    Activity,
    ActivitySource,
    Attachment,
    Contact,
    ForwardingCheck,
    MessageRoute,
    NeverLog,
    Participant,
    PartyKind,
    ReceivedMessage,
    Staff,
    StaffAddress,
    TraceEntry,
    utcnow,
)
from mailledger.store.quarantine import blob_in_use


class History(enum.StrEnum):
    """What happens to the correspondence of someone who is removed."""

    KEEP = "keep"
    REMOVE = "remove"


@dataclass(slots=True)
class RemovalReport:
    """What a removal did, counted: what the CLI prints and the API returns."""

    history: History
    activities_kept: int = 0
    activities_deleted: int = 0
    activities_trimmed: int = 0  # kept, but lost this person's sources and participant rows
    sources_deleted: int = 0
    participants_deleted: int = 0
    messages_deleted: int = 0
    blobs_deleted: int = 0
    addresses_freed: int = 0
    forwarding_checks_revoked: int = 0
    relay_password_revoked: bool = False

    def summary(self) -> str:
        """One line for a terminal."""
        if self.history is History.KEEP:
            return f"history kept: {self.activities_kept} activity(ies) stay"
        return (
            f"history removed: {self.activities_deleted} activity(ies) deleted, "
            f"{self.activities_trimmed} shared one(s) kept without this person's "
            f"{self.sources_deleted} source(s) and {self.participants_deleted} participant "
            f"row(s); {self.messages_deleted} received message(s) and "
            f"{self.blobs_deleted} stored blob(s) deleted"
        )


def remove_staff(
    session: Session, blobs: BlobBackend, staff: Staff, history: History
) -> RemovalReport:
    """Remove a staff member (found with ``directory.find_staff``), keeping or removing history.

    Either way his capture address stops accepting mail, his relay password and forwarding
    proofs are revoked and his own addresses are freed for others.
    """
    report = RemovalReport(history)
    report.relay_password_revoked = staff.password_hash is not None
    staff.password_hash = None
    report.forwarding_checks_revoked = _delete(
        session, delete(ForwardingCheck).where(ForwardingCheck.staff_id == staff.id)
    )
    report.addresses_freed = _delete(
        session, delete(StaffAddress).where(StaffAddress.staff_id == staff.id)
    )
    _delete(session, delete(NeverLog).where(NeverLog.staff_id == staff.id))
    if history is History.KEEP:
        report.activities_kept = _count_distinct(
            session,
            select(Activity.id)
            .outerjoin(ActivitySource, ActivitySource.activity_id == Activity.id)
            .where((Activity.staff_id == staff.id) | (ActivitySource.staff_id == staff.id)),
        )
        staff.removed_at = utcnow()
        if staff.disabled_at is None:
            staff.disabled_at = staff.removed_at
        session.flush()
        return report

    touched = set(
        session.scalars(
            select(ActivitySource.activity_id).where(ActivitySource.staff_id == staff.id)
        )
    )
    others = set(
        session.scalars(
            select(ActivitySource.activity_id).where(
                ActivitySource.activity_id.in_(touched),
                ActivitySource.staff_id.is_distinct_from(staff.id),
            )
        )
    )
    only_his = touched - others
    shared = touched & others
    digests = _delete_activities(session, only_his)
    report.activities_deleted = len(only_his)
    report.activities_trimmed = len(shared)
    report.sources_deleted = _delete(
        session,
        delete(ActivitySource).where(
            ActivitySource.activity_id.in_(shared), ActivitySource.staff_id == staff.id
        ),
    )
    report.participants_deleted = _delete(
        session,
        delete(Participant).where(
            Participant.activity_id.in_(shared), Participant.staff_id == staff.id
        ),
    )
    _reassign_owner(session, shared, staff.id)

    # His received mail: a message every route of which was his capture address goes, unless
    # a kept activity still names it as a source; on a shared message only his routes go.
    his_messages = set(
        session.scalars(select(MessageRoute.message_id).where(MessageRoute.staff_id == staff.id))
    )
    shared_messages = set(
        session.scalars(
            select(MessageRoute.message_id).where(
                MessageRoute.message_id.in_(his_messages),
                MessageRoute.staff_id.is_distinct_from(staff.id),
            )
        )
    )
    still_sourced = set(
        session.scalars(
            select(ActivitySource.message_id).where(ActivitySource.message_id.in_(his_messages))
        )
    )
    doomed = his_messages - shared_messages - still_sourced
    digests |= _delete_messages(session, doomed)
    report.messages_deleted = len(doomed)
    sourced_routes = select(ActivitySource.route_id)
    _delete(
        session,
        delete(MessageRoute).where(
            MessageRoute.staff_id == staff.id, MessageRoute.id.not_in(sourced_routes)
        ),
    )
    # Whatever still points at him (a kept message's route, queued relay mail) forgets him.
    for model in (MessageRoute, ActivitySource, Participant, Activity):
        session.execute(update(model).where(model.staff_id == staff.id).values(staff_id=None))
    session.execute(
        update(ReceivedMessage)
        .where(ReceivedMessage.submitted_by_staff_id == staff.id)
        .values(submitted_by_staff_id=None)
    )
    session.delete(staff)
    session.flush()
    report.blobs_deleted = _drop_unused_blobs(session, blobs, digests)
    return report


def remove_contact(
    session: Session, blobs: BlobBackend, contact: Contact, history: History
) -> RemovalReport:
    """Remove a contact (found with ``directory.find_contact``), keeping or removing history."""
    report = RemovalReport(history)
    touched = set(
        session.scalars(select(Participant.activity_id).where(Participant.contact_id == contact.id))
    )
    if history is History.KEEP:
        report.activities_kept = len(touched)
        report.addresses_freed = len(contact.addresses)
        session.delete(contact)
        session.flush()
        return report

    own = {a.address for a in contact.addresses}
    # Another outside party: a participant that is neither staff nor this contact.
    others = set(
        session.scalars(
            select(Participant.activity_id).where(
                Participant.activity_id.in_(touched),
                Participant.kind != PartyKind.STAFF,
                Participant.contact_id.is_distinct_from(contact.id),
                Participant.address.not_in(own),
            )
        )
    )
    only_theirs = touched - others
    shared = touched & others
    message_ids = set(
        session.scalars(
            select(ActivitySource.message_id).where(ActivitySource.activity_id.in_(only_theirs))
        )
    )
    # A received message stays when something kept refers to it: a route recorded into an
    # activity that stays, or one not recorded at all (waiting or quarantined).
    kept = set(
        session.scalars(
            select(MessageRoute.message_id).where(
                MessageRoute.message_id.in_(message_ids),
                MessageRoute.activity_id.is_(None) | MessageRoute.activity_id.not_in(only_theirs),
            )
        )
    )
    digests = _delete_activities(session, only_theirs)
    report.activities_deleted = len(only_theirs)
    report.activities_trimmed = len(shared)
    report.participants_deleted = _delete(
        session,
        delete(Participant).where(
            Participant.activity_id.in_(shared),
            (Participant.contact_id == contact.id) | Participant.address.in_(own),
        ),
    )
    kept |= set(
        session.scalars(
            select(ActivitySource.message_id).where(ActivitySource.message_id.in_(message_ids))
        )
    )
    doomed = message_ids - kept
    digests |= _delete_messages(session, doomed)
    report.messages_deleted = len(doomed)
    report.addresses_freed = len(own)
    session.delete(contact)
    session.flush()
    report.blobs_deleted = _drop_unused_blobs(session, blobs, digests)
    return report


def remove_mailbox_history(session: Session, blobs: BlobBackend, account_id: int) -> RemovalReport:
    """Delete what one mailbox account brought in (``account remove --remove-history``).

    An activity every source of which is a message this account fetched goes; one that also
    came another way (a forward, a BCC, another account) only loses this account's sources.
    The account's received messages go unless a kept activity still names them. The account
    row itself is the caller's to delete.
    """
    report = RemovalReport(History.REMOVE)
    fetched = set(
        session.scalars(
            select(ReceivedMessage.id).where(ReceivedMessage.mailbox_account_id == account_id)
        )
    )
    touched = set(
        session.scalars(
            select(ActivitySource.activity_id).where(ActivitySource.message_id.in_(fetched))
        )
    )
    others = set(
        session.scalars(
            select(ActivitySource.activity_id).where(
                ActivitySource.activity_id.in_(touched), ActivitySource.message_id.not_in(fetched)
            )
        )
    )
    only_its = touched - others
    shared = touched & others
    digests = _delete_activities(session, only_its)
    report.activities_deleted = len(only_its)
    report.activities_trimmed = len(shared)
    report.sources_deleted = _delete(
        session,
        delete(ActivitySource).where(
            ActivitySource.activity_id.in_(shared), ActivitySource.message_id.in_(fetched)
        ),
    )
    still_sourced = set(
        session.scalars(
            select(ActivitySource.message_id).where(ActivitySource.message_id.in_(fetched))
        )
    )
    doomed = fetched - still_sourced
    digests |= _delete_messages(session, doomed)
    report.messages_deleted = len(doomed)
    session.flush()
    report.blobs_deleted = _drop_unused_blobs(session, blobs, digests)
    return report


# --- the pieces -------------------------------------------------------------------------------


def _delete(session: Session, statement: object) -> int:
    result = session.execute(statement)  # type: ignore[call-overload]
    return int(result.rowcount or 0)


def _count_distinct(session: Session, query: object) -> int:
    subquery = query.distinct().subquery()  # type: ignore[attr-defined]
    return int(session.scalar(select(func.count()).select_from(subquery)) or 0)


def _delete_activities(session: Session, ids: set[int]) -> set[str]:
    """Delete activities with their rows; the digests they referenced."""
    if not ids:
        return set()
    digests = set(session.scalars(select(Attachment.blob).where(Attachment.activity_id.in_(ids))))
    digests |= set(session.scalars(select(Activity.raw_blob).where(Activity.id.in_(ids))))
    for model in (Participant, ActivitySource, Attachment):
        session.execute(delete(model).where(model.activity_id.in_(ids)))
    session.execute(
        update(MessageRoute).where(MessageRoute.activity_id.in_(ids)).values(activity_id=None)
    )
    session.execute(delete(Activity).where(Activity.id.in_(ids)))
    session.expire_all()
    return {d for d in digests if d}


def _delete_messages(session: Session, ids: set[int]) -> set[str]:
    """Delete received messages with their routes and trace; the digests they referenced."""
    if not ids:
        return set()
    digests = set(session.scalars(select(ReceivedMessage.blob).where(ReceivedMessage.id.in_(ids))))
    session.execute(delete(ActivitySource).where(ActivitySource.message_id.in_(ids)))
    session.execute(delete(TraceEntry).where(TraceEntry.message_id.in_(ids)))
    session.execute(delete(MessageRoute).where(MessageRoute.message_id.in_(ids)))
    # Forwarding confirmations cascade with their message (models: ondelete CASCADE).
    session.execute(delete(ReceivedMessage).where(ReceivedMessage.id.in_(ids)))
    session.expire_all()
    return digests


def _reassign_owner(session: Session, activity_ids: Iterable[int], staff_id: int) -> None:
    """A shared activity he owned now belongs to the staff member of its earliest other source."""
    for activity in session.scalars(
        select(Activity).where(Activity.id.in_(list(activity_ids)), Activity.staff_id == staff_id)
    ):
        activity.staff_id = session.scalars(
            select(ActivitySource.staff_id)
            .where(ActivitySource.activity_id == activity.id, ActivitySource.staff_id.is_not(None))
            .order_by(ActivitySource.id)
            .limit(1)
        ).first()
    session.flush()


def _drop_unused_blobs(session: Session, blobs: BlobBackend, digests: set[str]) -> int:
    removed = 0
    for digest in sorted(digests):
        if not is_digest(digest):  # not a digest we wrote: nothing in the store to delete
            continue
        if blob_in_use(session, digest):
            continue
        if blobs.exists(digest):
            blobs.delete(digest)
            removed += 1
    return removed
