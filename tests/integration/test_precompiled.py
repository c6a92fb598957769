"""Statements compiled once and run on the driver's cursor behave as SQLAlchemy's execution:
defaults, types, lists, savepoints and errors, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.store.blobs import BlobStore
from mailledger.store.models import MessageState, ReceivedMessage, TraceEntry
from mailledger.store.precompiled import Cursor, Statement
from mailledger.testing.mail import make_email, store_received

pytestmark = pytest.mark.postgres

RICHARD = "richard@acme.capture.example"

_TRACE = Statement(insert(TraceEntry))
_TRACE_OF = Statement(
    select(TraceEntry.step, TraceEntry.at, TraceEntry.detail)
    .where(TraceEntry.message_id == bindparam("message_id"))
    .order_by(TraceEntry.id)
)
_MESSAGES = Statement(
    select(ReceivedMessage.id, ReceivedMessage.state, ReceivedMessage.auth)
    .where(ReceivedMessage.id.in_(bindparam("ids", expanding=True)))
    .order_by(ReceivedMessage.id)
)
_SET_OUTCOME = Statement(
    update(ReceivedMessage).where(ReceivedMessage.id == bindparam("message_key"))
)
_SAME_QUEUE_ID = Statement(insert(ReceivedMessage))


@pytest.fixture
def stored(sessions: sessionmaker[Session], blobs: BlobStore, demo: DemoAddresses) -> list[int]:
    """Five received messages."""
    return [store_received(sessions, blobs, make_email(), [RICHARD]) for _ in range(5)]


def test_an_insert_takes_the_models_defaults_and_types(
    sessions: sessionmaker[Session], stored: list[int]
) -> None:
    """A column the rows leave out gets its model default; a timestamp comes back in UTC."""
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with sessions.begin() as session, Cursor.of(session) as sql:
        sql.many(
            _TRACE,
            [
                {"message_id": stored[0], "at": when, "step": "one", "decision": "d"},
                {"message_id": stored[0], "at": when, "step": "two", "decision": "d"},
            ],
        )
        sql.run(_TRACE, {"message_id": stored[0], "step": "three", "decision": "d"})
        rows = sql.rows(_TRACE_OF, {"message_id": stored[0]})
    mine = [row for row in rows if row[0] in ("one", "two", "three")]
    assert [(step, detail) for step, _, detail in mine] == [("one", ""), ("two", ""), ("three", "")]
    assert mine[0][1] == when
    assert mine[2][1].tzinfo is not None  # utcnow(), the column's default
    with sessions() as session:
        loaded = session.scalars(
            select(TraceEntry.at).where(
                TraceEntry.message_id == stored[0], TraceEntry.step == "one"
            )
        ).one()
        assert loaded == when


def test_lists_of_any_length_and_results_typed_as_the_model_says(
    sessions: sessionmaker[Session], stored: list[int]
) -> None:
    """An IN list is compiled per padded length; enums and JSON come back as Python values."""
    with sessions.begin() as session, Cursor.of(session) as sql:
        for length in (1, 2, 3, 5):
            rows = sql.rows(_MESSAGES, {"ids": stored[:length]})
            assert [row[0] for row in rows] == stored[:length]
        sql.run(
            _SET_OUTCOME,
            {"message_key": stored[1], "state": MessageState.QUARANTINED, "auth": {"spf": "pass"}},
        )
        rows = sql.rows(_MESSAGES, {"ids": [stored[1]]})
    assert rows == [(stored[1], MessageState.QUARANTINED, {"spf": "pass"})]
    with sessions() as session:
        message = session.get_one(ReceivedMessage, stored[1])
        assert (message.state, message.auth) == (MessageState.QUARANTINED, {"spf": "pass"})


class _RollBackError(Exception):
    """Raised inside a savepoint to roll it back."""


def test_a_savepoint_rolls_back_alone_and_errors_are_sqlalchemys(
    sessions: sessionmaker[Session], stored: list[int]
) -> None:
    """Work in a failed savepoint is gone, the rest of the transaction commits, and a
    constraint the driver refuses is SQLAlchemy's IntegrityError (what the worker handles)."""
    with sessions() as session:
        taken = session.get_one(ReceivedMessage, stored[0])
        duplicate = {
            "queue_id": taken.queue_id,  # unique
            "trace_id": "t",
            "blob": taken.blob,
            "size": 1,
            "peer": "127.0.0.1:1",
            "mail_from": "",
            "rcpt_to": [],
        }
    with sessions.begin() as session, Cursor.of(session) as sql:
        sql.run(_TRACE, {"message_id": stored[2], "step": "kept", "decision": "d"})
        with pytest.raises(_RollBackError), sql.savepoint():
            sql.run(_TRACE, {"message_id": stored[2], "step": "dropped", "decision": "d"})
            raise _RollBackError
        with pytest.raises(IntegrityError), sql.savepoint():
            sql.run(_SAME_QUEUE_ID, duplicate)
        with sql.savepoint():
            sql.run(_TRACE, {"message_id": stored[2], "step": "released", "decision": "d"})
    with sessions() as session, Cursor.of(session) as sql:
        steps = [row[0] for row in sql.rows(_TRACE_OF, {"message_id": stored[2]})]
    assert "kept" in steps
    assert "released" in steps
    assert "dropped" not in steps


def test_each_dialect_gets_its_own_text(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """SQLite takes ? placeholders in order, PostgreSQL psycopg's named ones."""
    with sessions() as session:
        compiled = _MESSAGES.compiled(session.connection().dialect, {"ids": [1, 2, 3]})
    if settings.database.url.startswith("sqlite"):
        assert "IN (?, ?, ?, ?)" in compiled.sql
    else:
        assert "%(ids_4)s" in compiled.sql
