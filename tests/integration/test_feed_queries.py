"""The feed reads a page with a fixed number of indexed queries, whatever the page holds."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert
from sqlalchemy.orm import Session, sessionmaker

from mailledger.store import queries
from mailledger.store.feed import ActivityFilters, Cursor, activity_page, page_query
from mailledger.store.models import Activity, Attachment, Participant, PartyKind, Tenant
from mailledger.testing.api import insert_activity

FEED_INDEX = "ix_activities_tenant_id_feed_position_id"

FILTERS = [
    ActivityFilters(),
    ActivityFilters(direction="inbound"),
    ActivityFilters(contact=("carol@client.example",)),
    ActivityFilters(staff="richard"),
    ActivityFilters(company="Client"),
    ActivityFilters(company="7"),
    ActivityFilters(thread=3),
]


def _plan(engine: Engine, statement: Any) -> list[str]:
    compiled = statement.compile(
        engine, compile_kwargs={"literal_binds": True, "render_postcompile": True}
    )
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").all()
    return [row[-1] for row in rows]


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: repr(f)[15:60])
def test_a_page_walks_the_feed_index_in_order(engine: Engine, filters: ActivityFilters) -> None:
    """On SQLite every filter reads activities through (tenant_id, feed_position, id) from the
    cursor on, sorted by the index itself (no scan of the table, no sort step)."""
    plan = _plan(engine, page_query(1, after=Cursor(5, 7), limit=100, filters=filters))
    activities = [line for line in plan if " activities" in line]
    assert activities == [
        f"SEARCH activities USING INDEX {FEED_INDEX} "
        "(tenant_id=? AND feed_position>? AND feed_position<?)"
    ], plan
    assert not any("TEMP B-TREE" in line for line in plan), plan


@pytest.mark.parametrize(
    ("statement", "table"),
    [
        (queries.PARTICIPANTS_OF_IDS, "participants"),
        (queries.SOURCES_OF_IDS, "activity_sources"),
    ],
)
def test_a_page_finds_its_children_by_index(engine: Engine, statement: Any, table: str) -> None:
    """Participants and sources of a page are looked up by activity id, not scanned."""
    plan = _plan(engine, statement.params(ids=[1, 2, 3]))
    assert any(line.startswith(f"SEARCH {table} USING") for line in plan), plan
    assert not any(line.startswith("SCAN") for line in plan), plan


def test_a_page_finds_its_attachments_by_index(engine: Engine) -> None:
    """Attachments of a page are looked up by activity id (ix_attachments_activity_id)."""
    plan = _plan(engine, queries.ATTACHMENTS_OF_IDS.params(ids=[1, 2, 3]))
    assert not any(line.startswith("SCAN attachments") for line in plan), plan


def _seed(session: Session, tenant_id: int, count: int) -> list[int]:
    ids = [insert_activity(session, tenant_id, subject=f"quote {n}") for n in range(count)]
    session.execute(
        insert(Participant),
        [
            {"activity_id": i, "role": role, "address": address, "kind": kind}
            for i in ids
            for role, address, kind in (
                ("from", "carol@client.example", PartyKind.CONTACT),
                ("to", "richard@acme.example", PartyKind.STAFF),
            )
        ],
    )
    session.execute(
        insert(Attachment),
        [
            {"activity_id": i, "content_type": "text/plain", "size": 3, "blob": f"b{i}-{n}"}
            for i in ids
            for n in range(2)
        ],
    )
    return ids


@pytest.fixture
def statements(engine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(*args: Any) -> None:
        seen.append(args[2])

    event.listen(engine, "before_cursor_execute", count)
    yield seen
    event.remove(engine, "before_cursor_execute", count)


@pytest.mark.postgres
def test_a_page_costs_the_same_queries_for_one_activity_or_forty(
    sessions: sessionmaker[Session], engine: Engine, statements: list[str]
) -> None:
    """No query per activity: a page of 40 runs exactly the statements a page of 1 runs, and
    each activity still shows its participants and attachments in the order stored."""
    with sessions.begin() as session:
        tenant = Tenant(name="acme", capture_domain="acme.capture.example")
        session.add(tenant)
        session.flush()
        tenant_id = tenant.id
        _seed(session, tenant_id, 41)
    counts = []
    for limit in (1, 40):
        statements.clear()
        with sessions() as session:
            data, _ = activity_page(session, tenant_id, limit=limit)
        assert len(data) == limit
        counts.append(len(statements))
    assert counts[0] == counts[1], statements
    first = data[0]
    assert [p["role"] for p in first["participants"]] == ["from", "to"]
    assert first["contacts"] == ["carol@client.example"]
    assert [a["n"] for a in first["attachments"]] == [1, 2]
    assert first["attachments"][0]["url"] == f"/v1/activities/{first['id']}/attachments/1"


@pytest.mark.postgres
def test_an_object_and_a_row_of_the_same_activity_show_alike(
    sessions: sessionmaker[Session],
) -> None:
    """``activity_dicts`` gives one representation whether it is handed the ORM object (one
    activity, webhooks) or a plain row (lists and the feed)."""
    with sessions.begin() as session:
        tenant = Tenant(name="acme", capture_domain="acme.capture.example")
        session.add(tenant)
        session.flush()
        [activity_id] = _seed(session, tenant.id, 1)
    with sessions() as session:
        row = session.execute(queries.activity_rows().where(Activity.id == activity_id)).one()
        obj = session.scalars(queries.activity_query().where(Activity.id == activity_id)).one()
        from_row = queries.activity_dicts(session, [row], base_url="https://crm.example")
        from_obj = queries.activity_dicts(session, [obj], base_url="https://crm.example")
    assert from_row == from_obj
    assert from_row[0]["tenant"] == "acme"
