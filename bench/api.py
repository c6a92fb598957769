"""``python -m bench.api``: latency of ``GET /v1/activities?limit=100`` under concurrent readers.

Seeds one tenant with N activities (each with two participants and a source-less row, as the
record step inserts them), starts ``python -m mailledger.service.server`` as an operator
would, and lets C clients page through the feed from random cursors for a fixed time.
Prints p50/p99/max, requests per second and the server's CPU per request; ``make bench``
calls ``measure`` for its ``api_*`` figures.
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
from typing import Any

import httpx
from sqlalchemy import insert, select

from bench import procstat
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


def _percentile(ordered: list[float], p: float) -> float:
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 1)


def measure(
    root: Path, activities: int, clients: int, seconds: float, url: str = ""
) -> dict[str, Any]:
    """Seed ``activities`` into a database under ``root``, serve it, and load it for ``seconds``.

    Returns the seeding time, p50/p99/max latency in ms, requests per second and the server's
    CPU milliseconds per request (its whole process tree, read from /proc).
    """
    root.mkdir(parents=True, exist_ok=True)
    url = url or f"sqlite:///{root / 'api.db'}"
    port, smtp = free_port(), free_port()
    config = write_config(
        root / "api.toml",
        database_url=url,
        blob_dir=root / "api-blobs",
        capture_port=smtp,
        http={"listen": f"127.0.0.1:{port}", "rate_limit_per_minute": 10_000_000},
        logging={"format": "json", "level": "warning"},
    )
    if cli_main(["--config", str(config), "db", "upgrade"]) != 0:
        raise RuntimeError("db upgrade failed")
    started = time.monotonic()
    token, cursors = seed(url, activities)
    seeded = time.monotonic() - started
    with ServerProcess(server_argv(config), port=smtp, log=root / "api-server.log") as server:
        for _ in range(100):  # the API starts just after the SMTP banner
            try:
                httpx.get(f"http://127.0.0.1:{port}/v1/openapi.json", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        cpu_before = procstat.cpu_seconds(server.pid)
        latencies = asyncio.run(load(f"http://127.0.0.1:{port}", token, cursors, clients, seconds))
        cpu = procstat.cpu_seconds(server.pid) - cpu_before
    latencies.sort()
    return {
        "activities": activities,
        "clients": clients,
        "seconds": seconds,
        "seed_seconds": round(seeded, 1),
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
        "max_ms": round(latencies[-1] * 1000, 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1),
        "cpu_ms_per_request": round(cpu * 1000 / len(latencies), 1),
    }


def main() -> int:
    """Seed, serve, measure, print."""
    parser = argparse.ArgumentParser(prog="python -m bench.api")
    parser.add_argument("--activities", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--database", default="", help="a database URL (default: SQLite)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        got = measure(Path(tmp), args.activities, args.clients, args.seconds, args.database)
    print(f"seeded {got['activities']} activities in {got['seed_seconds']} s")
    print(
        f"GET /v1/activities?limit=100, {args.clients} clients, {args.seconds:.0f} s: "
        f"{got['requests']} requests, {got['requests_per_s']:.0f}/s; "
        f"p50 {got['p50_ms']} ms, p99 {got['p99_ms']} ms, max {got['max_ms']} ms, "
        f"mean {got['mean_ms']} ms; server CPU {got['cpu_ms_per_request']} ms a request"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
