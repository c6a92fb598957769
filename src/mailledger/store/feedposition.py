"""Where an activity sits in the API's feed, so a reader paging with a cursor misses nothing.

A reader that remembers "the last id I saw" misses rows on PostgreSQL: two transactions take
ids 7 and 8, the one with 8 commits first, the reader sees 8 and moves past 7 before 7
commits. Ordering by a commit timestamp or a sequence taken at insert has the same hole.

What makes a position safe is that no row can later appear *behind* it. So:

- **PostgreSQL**: an activity's position is the id of the transaction that created it
  (``pg_current_xact_id()``), and a reader only reads positions below the oldest transaction
  still running when its statement started (``pg_snapshot_xmin``). Every transaction below that
  horizon has finished, so the rows under it are final; a transaction still running has an id
  at or above the horizon, so its rows come after anything the reader has passed. Rows of one
  transaction are ordered by id. A long transaction delays the feed; it never loses a row.
- **SQLite** has one writer at a time, so commits are ordered by the writers themselves: a
  trigger takes the next number of a one-row counter (``feed_clock``) for every new activity.
  Unlike a row id, the counter never goes back when the newest activity is deleted, so a
  position is never handed out twice.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import DDL, BigInteger, MetaData, event
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

# The largest BIGINT: on SQLite every committed position is below the horizon.
_NO_HORIZON = 2**63 - 1


class FeedPosition(FunctionElement[int]):
    """The position a new activity takes (the insert default of ``activities.feed_position``)."""

    type = BigInteger()
    name = "feed_position"
    inherit_cache = True


class FeedHorizon(FunctionElement[int]):
    """Positions below this are final: no transaction can still add a row under it."""

    type = BigInteger()
    name = "feed_horizon"
    inherit_cache = True


@compiles(FeedPosition, "postgresql")
def _position_postgresql(element: FeedPosition, compiler: Any, **kw: Any) -> str:
    return "CAST(CAST(pg_current_xact_id() AS TEXT) AS BIGINT)"


@compiles(FeedPosition)
def _position_default(element: FeedPosition, compiler: Any, **kw: Any) -> str:
    # SQLite: a placeholder the trigger below replaces in the same statement.
    return "0"


@compiles(FeedHorizon, "postgresql")
def _horizon_postgresql(element: FeedHorizon, compiler: Any, **kw: Any) -> str:
    return "CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS TEXT) AS BIGINT)"


@compiles(FeedHorizon)
def _horizon_default(element: FeedHorizon, compiler: Any, **kw: Any) -> str:
    return str(_NO_HORIZON)


# The SQLite side, run by the migration and by create_all (tests, `db upgrade` on a new file).
SQLITE_CLOCK_ROW = "INSERT OR IGNORE INTO feed_clock (id, position) VALUES (1, 0)"
SQLITE_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS activities_feed_position AFTER INSERT ON activities
BEGIN
    UPDATE feed_clock SET position = position + 1 WHERE id = 1;
    UPDATE activities SET feed_position = (SELECT position FROM feed_clock WHERE id = 1)
    WHERE id = NEW.id;
END
"""
SQLITE_DROP_TRIGGER = "DROP TRIGGER IF EXISTS activities_feed_position"


def install_feed_ddl(metadata: MetaData) -> None:
    """Create SQLite's counter row and trigger whenever ``metadata`` creates the tables."""
    for statement in (SQLITE_CLOCK_ROW, SQLITE_TRIGGER):
        ddl = DDL(statement)  # type: ignore[no-untyped-call]
        event.listen(metadata, "after_create", ddl.execute_if(dialect="sqlite"))
