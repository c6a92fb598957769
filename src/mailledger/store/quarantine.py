"""The operator's actions on quarantined mail: release it for another try, or delete it.

Nothing accepted ever disappears on its own (DESIGN §2); these are the two ways an operator
ends a quarantine, and each leaves a trace entry or removes the message entirely.
"""

from __future__ import annotations

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from mailledger.store.blobbackend import BlobBackend
from mailledger.store.models import (
    Activity,
    Attachment,
    MessageState,
    OutboundMessage,
    ReceivedMessage,
    TraceEntry,
)
from mailledger.store.queries import get_message

# Each quarantine reason starts with a label (``unknown-sender: …``, set by the step that held
# the message back); these say in words what it means and what a person can do about it.
REASONS_IN_WORDS = {
    "unknown-sender": "The sender is not one of your contacts or companies. Add them as a "
    "contact, then release the message.",
    "unknown-recipients": "None of the recipients is one of your contacts or companies. Add "
    "one as a contact, then release the message.",
    "untrusted": "The forward could not be proven to come from the staff member's own "
    "mailbox (its sender authentication did not pass), so it may be forged.",
    "log-not-staff": "Mail to the log address must come from a staff member's own address; "
    "this one did not.",
    "never-log": "An address or domain in it is on a never-log list.",
    "internal": "Every party is a staff member: internal mail is not recorded.",
    "auto-reply": "It is an automatic reply (out-of-office or similar), not correspondence.",
    "bulk": "It is bulk or list mail (a newsletter or mailing list), not correspondence.",
    "bounce": "It is a delivery failure notice, not correspondence.",
    "loop": "It looks like a mail loop: the same mail came back again and again.",
    "volume": "Too many messages came from this sender in a short time.",
    "operator": "It was sent to a role address (postmaster, abuse) and is kept for the "
    "operator to read.",
    "forwarding-check": "It is the answer to a forwarding check that had already expired.",
    "forged-confirmation": "It claims to be a Gmail forwarding confirmation but is not signed "
    "by Google.",
    "ambiguous-from": "It has no single sender (no From header, or more than one), so nobody "
    "can say whose mail it is.",
    "ambiguous": "A header that may appear once appears several times, so the message may "
    "have been tampered with.",
    "mime-too-deep": "Its structure is nested too deeply to be read safely.",
    "mime-too-many-parts": "It has too many parts to be read safely.",
    "unparseable": "It could not be read as an email.",
}


def reason_in_words(reason: str) -> str:
    """What a quarantine reason means, in a sentence (the reason itself when it is unknown).

    A message with several routes may carry several reasons, joined with ``; ``.
    """
    sentences = []
    for part in reason.split("; "):
        label = part.partition(":")[0].strip()
        sentences.append(REASONS_IN_WORDS.get(label, part.strip() or "No reason was recorded."))
    return " ".join(dict.fromkeys(sentences))


class QuarantineError(ValueError):
    """The message is not in a state this action applies to."""


def _quarantined(session: Session, ref: int | str, tenant_id: int | None) -> ReceivedMessage:
    message = get_message(session, ref, tenant_id=tenant_id)
    if message.state != MessageState.QUARANTINED:
        raise QuarantineError(
            f"message {message.id} (queue ID {message.queue_id}) is {message.state.value}, "
            "not quarantined"
        )
    return message


def release(
    session: Session, ref: int | str, *, force: bool = False, tenant_id: int | None = None
) -> ReceivedMessage:
    """Put a quarantined message back in the queue; with ``force`` it is recorded regardless.

    The processing worker picks up messages in state ``received`` with no live claim, so
    clearing the state and the claim is all a release needs. ``ref`` is a row number, a
    queue ID or a Message-ID (``queries.get_message``); ``tenant_id`` limits it to one
    tenant's messages (the API).
    """
    message = _quarantined(session, ref, tenant_id)
    previous = message.reason
    message.state = MessageState.RECEIVED
    message.reason = ""
    message.claimed_by = None
    message.claim_expires_at = None
    message.finished_at = None
    message.attempts = 0
    message.force_record = force
    for route in message.routes:
        if route.activity_id is None:
            route.outcome = ""
    session.add(
        TraceEntry(
            message_id=message.id,
            step="operator",
            decision="released-forced" if force else "released",
            detail=f"was quarantined: {previous}" if previous else "was quarantined",
        )
    )
    session.flush()
    return message


# Every column that names a blob: a blob none of them names is bytes nobody can reach
# (``blob_in_use`` here, ``store.blobsweep`` for ``storage sweep``).
BLOB_REFERENCES = (
    ReceivedMessage.blob,
    Activity.raw_blob,
    Attachment.blob,
    OutboundMessage.blob,
)


def blob_in_use(session: Session, digest: str, *, except_message: int | None = None) -> bool:
    """Whether any message, activity, attachment or outbound row still references these bytes.

    Outbound rows count too: a forwarding confirmation is handed back with its received bytes
    unmodified, so one digest can name a quarantined message and a queued one at once.
    """
    others = select(ReceivedMessage.id).where(ReceivedMessage.blob == digest)
    if except_message is not None:
        others = others.where(ReceivedMessage.id != except_message)
    checks = [exists(others)] + [
        exists(select(column).where(column == digest))
        for column in BLOB_REFERENCES
        if column is not ReceivedMessage.blob
    ]
    return any(session.scalar(select(check)) for check in checks)


def delete(
    session: Session, blobs: BlobBackend, ref: int | str, *, tenant_id: int | None = None
) -> bool:
    """Delete a quarantined message, its routes and trace, and its raw bytes when unshared.

    Returns whether the blob was removed. The file goes inside the transaction, after the
    reference check: on SQLite the transaction holds the write lock, so no new row can start
    sharing the digest meanwhile; a failed commit then loses only bytes the operator asked to
    delete. On PostgreSQL one race remains: intake stores bytes before inserting their row, so
    a message with byte-identical content arriving in that instant could lose its blob.
    """
    message = _quarantined(session, ref, tenant_id)
    digest = message.blob
    session.delete(message)
    session.flush()
    if blob_in_use(session, digest):
        return False
    blobs.delete(digest)
    return True
