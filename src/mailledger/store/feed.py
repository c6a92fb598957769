"""The activity feed the API pages through: every activity of a tenant once, in a stable order.

The order is ``(feed_position, id)``; store/feedposition.py explains why a position is final
once a reader can see it, so a reader that follows the cursor never skips a row committed
late. Every query here is scoped by the tenant first: an id from another tenant is "not
found", exactly as an id that does not exist.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Integer, Select, and_, bindparam, exists, or_, select
from sqlalchemy.orm import Session

from mailledger.mail.addresses import AddressError, normalize
from mailledger.store.feedposition import FeedHorizon
from mailledger.store.models import (
    Activity,
    Attachment,
    Company,
    Contact,
    Direction,
    Participant,
    Staff,
)
from mailledger.store.queries import (
    NotFoundError,
    activity_dicts,
    activity_query,
    activity_rows,
    core_connection,
)

MAX_PAGE = 500
DEFAULT_PAGE = 100
_CURSOR_SHAPE = re.compile(r"^(\d{1,19})\.(\d{1,19})$")


class FeedError(ValueError):
    """A parameter of a feed request is wrong; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Cursor:
    """The place after the last activity a reader has seen."""

    position: int = 0
    activity_id: int = 0

    def encode(self) -> str:
        """Opaque to readers: they hand it back as ``after``, nothing more."""
        raw = f"{self.position}.{self.activity_id}".encode("ascii")
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """The cursor ``encode`` made; anything else is a FeedError naming ``after``."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raw = ""
        match = _CURSOR_SHAPE.match(raw)
        if match is None:
            raise FeedError("after", "not a cursor this API gave out: use the `next` of a page")
        return cls(int(match[1]), int(match[2]))


@dataclass(frozen=True)
class ActivityFilters:
    """What a reader narrows the feed to; every field optional."""

    # The address as each tenant policy could have stored it: with and without a +tag.
    contact: tuple[str, ...] = ()
    staff: str = ""
    company: str = ""
    direction: str = ""
    since: datetime | None = None
    thread: int | None = None


def parse_filters(params: dict[str, str]) -> ActivityFilters:
    """Query parameters as filters; a bad value is a FeedError naming its parameter."""
    direction = params.get("direction", "")
    if direction and direction not in {d.value for d in Direction}:
        raise FeedError("direction", "must be inbound or outbound")
    contact: tuple[str, ...] = ()
    if params.get("contact"):
        try:
            contact = tuple(
                {normalize(params["contact"], strip_plus=strip) for strip in (True, False)}
            )
        except AddressError as exc:
            raise FeedError("contact", f"not an email address: {exc}") from exc
    since = None
    if params.get("since"):
        try:
            since = datetime.fromisoformat(params["since"].replace("Z", "+00:00"))
        except ValueError as exc:
            raise FeedError("since", "not an ISO 8601 date or time") from exc
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
    thread = None
    if params.get("thread"):
        if not params["thread"].isdigit():
            raise FeedError("thread", "must be a thread id (a number)")
        thread = int(params["thread"])
    return ActivityFilters(
        contact=contact,
        staff=params.get("staff", ""),
        company=params.get("company", ""),
        direction=direction,
        since=since,
        thread=thread,
    )


def _filtered(query: Select[Any], tenant_id: int, filters: ActivityFilters) -> Select[Any]:
    if filters.direction:
        query = query.where(Activity.direction == Direction(filters.direction))
    if filters.since is not None:
        query = query.where(Activity.occurred_at >= filters.since)
    if filters.thread is not None:
        query = query.where(Activity.thread_id == filters.thread)
    if filters.staff:
        staff_ids = select(Staff.id).where(
            Staff.tenant_id == tenant_id, Staff.username == filters.staff.lower()
        )
        query = query.where(Activity.staff_id.in_(staff_ids))
    if filters.contact:
        query = query.where(
            exists().where(
                Participant.activity_id == Activity.id, Participant.address.in_(filters.contact)
            )
        )
    if filters.company:
        company = select(Company.id).where(Company.tenant_id == tenant_id)
        if filters.company.isdigit():
            company = company.where(Company.id == int(filters.company))
        else:
            company = company.where(Company.name == filters.company)
        members = select(Contact.id).where(Contact.company_id.in_(company))
        query = query.where(
            exists().where(
                Participant.activity_id == Activity.id,
                or_(Participant.company_id.in_(company), Participant.contact_id.in_(members)),
            )
        )
    return query


def _page_rows() -> Select[Any]:
    """A page's rows from the cursor on, its values left as parameters: ``tenant_id``,
    ``position`` and ``activity_id`` (the cursor), and ``limit``."""
    return (
        activity_rows()
        .where(Activity.tenant_id == bindparam("tenant_id"))
        # Implied by the condition below, but said on its own: SQLite does not take a range
        # bound out of an OR, and without it walked the tenant's index from its first row to
        # the cursor on every page (most of a page's CPU, and more the further the cursor).
        .where(Activity.feed_position >= bindparam("position"))
        .where(Activity.feed_position < FeedHorizon())
        .where(
            or_(
                Activity.feed_position > bindparam("position"),
                and_(
                    Activity.feed_position == bindparam("position"),
                    Activity.id > bindparam("activity_id"),
                ),
            )
        )
    )


def _ordered(query: Select[Any]) -> Select[Any]:
    return query.order_by(Activity.feed_position, Activity.id).limit(
        bindparam("limit", type_=Integer)
    )


# The unfiltered page, built once: a page runs it with new values only, so no statement is
# built, nor its cached compilation matched to new column objects, per request.
_UNFILTERED_PAGE = _ordered(_page_rows())


def _page(
    tenant_id: int, after: Cursor | None, limit: int, filters: ActivityFilters | None
) -> tuple[Select[Any], dict[str, int]]:
    start = after or Cursor()
    values = {
        "tenant_id": tenant_id,
        "position": start.position,
        "activity_id": start.activity_id,
        "limit": limit,
    }
    if filters is None or filters == ActivityFilters():
        return _UNFILTERED_PAGE, values
    return _ordered(_filtered(_page_rows(), tenant_id, filters)), values


def page_query(
    tenant_id: int,
    *,
    after: Cursor | None = None,
    limit: int = DEFAULT_PAGE,
    filters: ActivityFilters | None = None,
) -> Select[Any]:
    """The rows of one feed page, in feed order: what ``activity_page`` runs.

    It walks the (tenant_id, feed_position, id) index from the cursor on and stops after
    ``limit`` rows; filters are checked on the rows it walks (tests/integration/
    test_feed_queries.py holds every filter to that plan on SQLite).
    """
    query, values = _page(tenant_id, after, limit, filters)
    return query.params(values)


def activity_page(
    session: Session,
    tenant_id: int,
    *,
    after: Cursor | None = None,
    limit: int = DEFAULT_PAGE,
    filters: ActivityFilters | None = None,
    base_url: str = "",
) -> tuple[list[dict[str, Any]], Cursor]:
    """Up to ``limit`` activities after ``after``, oldest first, and the cursor to go on from.

    An empty page hands back the cursor it was given: the reader asks again later. A page
    costs a fixed number of queries however many activities it holds (queries.activity_dicts).
    """
    if not 1 <= limit <= MAX_PAGE:
        raise FeedError("limit", f"must be between 1 and {MAX_PAGE}")
    query, values = _page(tenant_id, after, limit, filters)
    rows = core_connection(session).execute(query, values).all()
    if not rows:
        return [], after or Cursor()
    last = rows[-1]
    return activity_dicts(session, rows, base_url=base_url), Cursor(last.feed_position, last.id)


def tenant_activity(session: Session, tenant_id: int, activity_id: int) -> Activity:
    """The tenant's activity with this id; another tenant's is not found, as a missing one."""
    row: Activity | None = session.scalars(
        activity_query().where(Activity.tenant_id == tenant_id, Activity.id == activity_id)
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"no activity {activity_id}")
    return row


def activity_detail(
    session: Session, tenant_id: int, activity_id: int, *, base_url: str = ""
) -> dict[str, Any]:
    """One of the tenant's activities: the feed's object plus its text and HTML bodies."""
    row = tenant_activity(session, tenant_id, activity_id)
    data = activity_dicts(session, [row], base_url=base_url)[0]
    data["text_body"] = row.text_body
    data["html_body"] = row.html_body
    return data


def raw_blob(session: Session, tenant_id: int, activity_id: int) -> str:
    """The blob digest of the activity's raw message."""
    row = tenant_activity(session, tenant_id, activity_id)
    if not row.raw_blob:
        raise NotFoundError(f"activity {activity_id} has no raw message kept")
    return row.raw_blob


def attachment(session: Session, tenant_id: int, activity_id: int, n: int) -> Attachment:
    """The activity's ``n``-th attachment, counted from 1 as the representation numbers them."""
    row = tenant_activity(session, tenant_id, activity_id)
    if not 1 <= n <= len(row.attachments):
        raise NotFoundError(f"activity {activity_id} has no attachment {n}")
    return row.attachments[n - 1]
