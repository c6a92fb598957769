"""``python -m bench.api``: latency of ``GET /v1/activities?limit=100`` under concurrent readers.

Seeds one tenant with N activities (each with two participants and a source-less row, as the
record step inserts them), starts ``python -m mailledger.service.server`` as an operator
would, and lets C clients page through the feed from random cursors for a fixed time.
Prints p50/p99/max and requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import insert, select

from mailledger.cli.main import main as cli_main
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.feed import Cursor
from mailledger.store.models import Activity, Direction, Participant, PartyKind, Tenant
from mailledger.testing.api import make_token
from mailledger.testing.ports import free_port
from mailledger.testing.servers import ServerProcess, server_argv, write_config

BATCH = 2000


def seed(url: str, count: int) -> tuple[str, list[Cursor]]:
    """N activities of tenant acme and a token; returns the token and cursors to start from."""
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        tenant = Tenant(name="acme", capture_domain="acme.capture.example")
        session.add(tenant)
        session.flush()
        token = make_token(session, tenant)
        tenant_id = tenant.id
    for start in range(0, count, BATCH):
        with sessions.begin() as session:
            rows = [
                {
                    "tenant_id": tenant_id,
                    "dedupe_key": f"mid:<{n}@bench>",
                    "direction": Direction.INBOUND,
                    "subject": f"Quote {n}",
                    "from_address": f"client{n % 500}@client.example",
                    "message_id": f"<{n}@bench>",
                    "text_body": "Hello,\r\nplease send the quote.\r\n" * 5,
                    "auth": {"spf": "pass", "dkim": "pass", "dmarc": "pass"},
                }
                for n in range(start, min(count, start + BATCH))
            ]
            ids = session.execute(insert(Activity).returning(Activity.id), rows).scalars().all()
            session.execute(
                insert(Participant),
                [
                    {
                        "activity_id": i,
                        "role": role,
                        "address": address,
                        "kind": kind,
                    }
                    for i in ids
                    for role, address, kind in (
                        ("from", f"client{i % 500}@client.example", PartyKind.CONTACT),
                        ("to", "richard@acme.example", PartyKind.STAFF),
                    )
                ],
            )
    with sessions() as session:
        positions = session.execute(select(Activity.feed_position, Activity.id)).all()
    engine.dispose()
    return token, [Cursor(p, i) for p, i in positions]


async def load(
    base: str, token: str, cursors: list[Cursor], clients: int, seconds: float
) -> list[float]:
    """Each client asks for a page after a random cursor, again and again, for ``seconds``."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {token}"}

    async def client(rng: random.Random) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            while time.monotonic() < deadline:
                after = rng.choice(cursors).encode()
                started = time.perf_counter()
                response = await http.get(
                    "/v1/activities", params={"limit": "100", "after": after}, headers=headers
                )
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code}: {response.text[:200]}")

    await asyncio.gather(*(client(random.Random(n)) for n in range(clients)))
    return latencies


def main() -> int:
    """Seed, serve, measure, print."""
    parser = argparse.ArgumentParser(prog="python -m bench.api")
    parser.add_argument("--activities", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--database", default="", help="a database URL (default: SQLite)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        url = args.database or f"sqlite:///{root / 'bench.db'}"
        port, smtp = free_port(), free_port()
        config = write_config(
            root / "bench.toml",
            database_url=url,
            blob_dir=root / "blobs",
            capture_port=smtp,
            http={"listen": f"127.0.0.1:{port}", "rate_limit_per_minute": 10_000_000},
            logging={"format": "json", "level": "warning"},
        )
        if cli_main(["--config", str(config), "db", "upgrade"]) != 0:
            raise RuntimeError("db upgrade failed")
        started = time.monotonic()
        token, cursors = seed(url, args.activities)
        print(f"seeded {args.activities} activities in {time.monotonic() - started:.1f} s")
        with ServerProcess(server_argv(config), port=smtp, log=root / "server.log"):
            for _ in range(100):  # the API starts just after the SMTP banner
                try:
                    httpx.get(f"http://127.0.0.1:{port}/v1/openapi.json", timeout=5)
                    break
                except httpx.TransportError:
                    time.sleep(0.05)
            latencies = asyncio.run(
                load(f"http://127.0.0.1:{port}", token, cursors, args.clients, args.seconds)
            )
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    print(
        f"GET /v1/activities?limit=100, {args.clients} clients, {args.seconds:.0f} s: "
        f"{len(latencies)} requests, {len(latencies) / args.seconds:.0f}/s; "
        f"p50 {pct(0.50):.1f} ms, p99 {pct(0.99):.1f} ms, max {latencies[-1] * 1000:.1f} ms, "
        f"mean {statistics.fmean(latencies) * 1000:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
