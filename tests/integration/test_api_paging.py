"""Following ``next`` sees every activity exactly once, even those committed while it pages."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.store.models import Tenant
from mailledger.testing.api import bearer, insert_activity, make_token, running_api

pytestmark = pytest.mark.postgres

WRITERS = 4
PER_WRITER = 25


def _acme(sessions: sessionmaker[Session]) -> tuple[int, str]:
    with sessions.begin() as session:
        tenant = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        return tenant.id, make_token(session, tenant)


async def _page(client: httpx.AsyncClient, token: str, after: str | None) -> tuple[list[int], str]:
    params = {"limit": "7", **({"after": after} if after else {})}
    response = await client.get("/v1/activities", params=params, headers=bearer(token))
    assert response.status_code == 200, response.text
    body = response.json()
    return [a["id"] for a in body["data"]], body["next"]


async def test_paging_while_recording_sees_each_activity_once(
    settings: Settings, sessions: sessionmaker[Session], demo: DemoAddresses
) -> None:
    """Writers hold their transactions open for random times so commits land out of id order;
    a reader following ``next`` all along ends with every committed id, none twice."""
    tenant_id, token = _acme(sessions)
    committed: list[int] = []
    lock = threading.Lock()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(PER_WRITER):
            with sessions.begin() as session:
                activity = insert_activity(session, tenant_id)
                time.sleep(rng.uniform(0, 0.02))  # commit later than others that began after
            with lock:
                committed.append(activity)

    async with (
        running_api(settings) as api,
        httpx.AsyncClient(base_url=api.base_url, timeout=20) as client,
    ):
        writing = [asyncio.to_thread(writer, seed) for seed in range(WRITERS)]
        done = asyncio.ensure_future(asyncio.gather(*writing))
        seen: list[int] = []
        cursor: str | None = None
        while not done.done():
            ids, cursor = await _page(client, token, cursor)
            seen += ids
            await asyncio.sleep(0.002)
        await done
        while True:  # drain what was committed after the last page
            ids, cursor = await _page(client, token, cursor)
            if not ids:
                break
            seen += ids
    assert len(committed) == WRITERS * PER_WRITER
    assert len(seen) == len(set(seen)), "an activity was seen twice"
    assert sorted(seen) == sorted(committed), "an activity was never seen"


async def test_a_late_commit_with_a_lower_id_is_not_skipped(
    settings: Settings, sessions: sessionmaker[Session], demo: DemoAddresses, database_url: str
) -> None:
    """PostgreSQL: A takes an id, B takes a higher one and commits first; the reader must not
    move past A's place before A commits (ordering by id alone loses A here)."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time: B cannot commit while A is open")
    tenant_id, token = _acme(sessions)
    async with (
        running_api(settings) as api,
        httpx.AsyncClient(base_url=api.base_url, timeout=20) as client,
    ):
        slow = sessions()
        slow.begin()
        first = insert_activity(slow, tenant_id)
        with sessions.begin() as fast:
            second = insert_activity(fast, tenant_id)
        assert first < second
        ids, cursor = await _page(client, token, None)
        # B is committed but not shown yet: A's open transaction holds the horizon.
        assert ids == []
        slow.commit()
        slow.close()
        ids, cursor = await _page(client, token, cursor)
        assert ids == [first, second]
        assert (await _page(client, token, cursor))[0] == []
