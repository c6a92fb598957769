"""What an activity is about in the CRM: one rule behind ``activities regard`` and the API's PATCH.

A free reference (an opportunity, a property, a work ticket…) that users set after the
email was recorded: a type, the CRM's id for the record, and a label people read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy.orm import Session

from mailledger.store import webhooks
from mailledger.store.feed import FeedError, tenant_activity
from mailledger.store.models import Activity

_TYPE = re.compile(r"^[a-z][a-z0-9_.-]{0,39}$")
MAX_REF = 200
MAX_LABEL = 200


@dataclass(frozen=True)
class Regarding:
    """A reference to a record in the CRM."""

    type: str
    ref: str
    label: str = ""


def check_regarding(value: Regarding) -> Regarding:
    """The reference as stored, or a FeedError naming the part that is wrong."""
    kind = value.type.strip().lower()
    if not _TYPE.match(kind):
        raise FeedError(
            "regarding.type",
            "must be a word such as opportunity or ticket (a-z, digits, _ . -; up to 40)",
        )
    ref = value.ref.strip()
    if not ref or len(ref) > MAX_REF:
        raise FeedError("regarding.id", f"must be 1 to {MAX_REF} characters")
    label = value.label.strip()
    if len(label) > MAX_LABEL:
        raise FeedError("regarding.label", f"must be at most {MAX_LABEL} characters")
    return Regarding(kind, ref, label)


def set_regarding(
    session: Session,
    tenant_id: int,
    activity_id: int,
    value: Regarding | None,
    *,
    base_url: str = "",
) -> Activity:
    """Link one of the tenant's activities to a CRM record, or (None) unlink it.

    ``updated_at`` moves, and ``activity.updated`` is written to the webhook outbox in the
    same transaction, only when something changed, so a repeated PATCH is not news.
    ``base_url`` (``[http] public_url``) makes the event's links absolute.
    """
    row = tenant_activity(session, tenant_id, activity_id)
    wanted = ("", "", "") if value is None else _columns(check_regarding(value))
    if (row.regarding_type, row.regarding_ref, row.regarding) != wanted:
        row.regarding_type, row.regarding_ref, row.regarding = wanted
        session.flush()
        webhooks.activity_changed(
            session, tenant_id, activity_id, webhooks.ACTIVITY_UPDATED, base_url=base_url
        )
    return row


def _columns(value: Regarding) -> tuple[str, str, str]:
    return value.type, value.ref, value.label
