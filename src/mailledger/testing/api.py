"""The HTTP API in tests: the real server started by ``serve()``, and tokens and rows to ask for.

``running_api`` runs every listener in the test's event loop, as ``serve`` does in production,
and hands over the SMTP port and the API's base URL (both on port 0, read back).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from mailledger.config import Settings
from mailledger.service.server import serve
from mailledger.store import apitokens
from mailledger.store.models import Activity, Direction, Tenant
from mailledger.testing.smtp import on_loopback_port_zero


@dataclass(frozen=True)
class RunningApi:
    """Where the running server listens."""

    smtp_port: int
    base_url: str


@asynccontextmanager
async def running_api(settings: Settings) -> AsyncIterator[RunningApi]:
    """Run ``serve`` with the API on 127.0.0.1 port 0; stopped as SIGTERM stops it."""
    http = settings.http.model_copy(update={"listen": "127.0.0.1:0"})
    configured = on_loopback_port_zero(settings).model_copy(update={"http": http})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    smtp: asyncio.Future[list[tuple[str, int]]] = loop.create_future()
    api: asyncio.Future[tuple[str, int]] = loop.create_future()
    task = asyncio.create_task(
        serve(configured, ready=smtp.set_result, http_ready=api.set_result, stop=stop)
    )
    ready = asyncio.gather(smtp, api)
    waiters: set[asyncio.Future[Any]] = {task, ready}
    done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        await asyncio.gather(ready, return_exceptions=True)
        task.result()
        raise RuntimeError("the server stopped before it was ready")
    host, port = api.result()
    try:
        yield RunningApi(smtp.result()[0][1], f"http://{host}:{port}")
    finally:
        stop.set()
        await task


def make_token(session: Session, tenant: Tenant, *, read_only: bool = False) -> str:
    """A new API token for ``tenant``."""
    return apitokens.create_token(session, tenant, name="test", read_only=read_only)[1]


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for ``token``."""
    return {"Authorization": f"Bearer {token}"}


def insert_activity(session: Session, tenant_id: int, **values: Any) -> int:
    """A bare activity row as the record step inserts it (Core insert); returns its id."""
    row = {
        "tenant_id": tenant_id,
        "dedupe_key": f"mid:<{secrets.token_hex(8)}@test>",
        "direction": Direction.INBOUND,
        "subject": "bare activity",
        "from_address": "carol@client.example",
        **values,
    }
    return int(
        session.connection().execute(insert(Activity).returning(Activity.id), row).scalar_one()
    )
