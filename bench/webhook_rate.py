"""Webhook delivery rate: events delivered per second from the outbox to a local receiver.

``python -m bench.webhook_rate [--events N] [--concurrency C] [--database URL]`` writes N
events for one endpoint, then runs the webhook worker ``serve()`` runs until every delivery
is recorded as delivered, and prints the rate. The receiver is the tests' threaded HTTP server
on 127.0.0.1, so the figure is the worker's (claim, sign, connect, post, record) plus a small
Python receiver's, on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select

from mailledger.cli.demo import seed_demo
from mailledger.config import LoggingSettings, Settings, WebhookSettings, load_settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.logs import configure_logging
from mailledger.store import directory, webhooks
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.models import Base, WebhookDelivery, WebhookDeliveryState
from mailledger.store.secretbox import SecretBox, ensure_key_file
from mailledger.testing.webhookreceiver import WebhookReceiver
from mailledger.web.webhooks import WebhookWorker


async def _deliver_all(settings: Settings, sessions: object, total: int) -> float:
    worker = WebhookWorker(sessions, settings, Resolver(settings.dns))  # type: ignore[arg-type]
    started = time.perf_counter()
    task = asyncio.create_task(worker.run())
    while True:
        done = await asyncio.to_thread(_delivered, sessions)
        if done >= total:
            break
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - started
    await worker.stop()
    await task
    return elapsed


def _delivered(sessions: object) -> int:
    with sessions() as session:  # type: ignore[operator]
        return int(
            session.scalar(
                select(func.count())
                .select_from(WebhookDelivery)
                .where(WebhookDelivery.state == WebhookDeliveryState.DELIVERED)
            )
            or 0
        )


def main() -> None:
    """Run once and print the rate."""
    parser = argparse.ArgumentParser(prog="python -m bench.webhook_rate")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--database", help="a database URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    # One log line per attempt, as in production, but not rendered to the terminal.
    configure_logging(LoggingSettings(format="json", level="warning"))
    with tempfile.TemporaryDirectory() as tmp, WebhookReceiver() as receiver:
        url = args.database or f"sqlite:///{Path(tmp) / 'bench.db'}"
        key_file = str(Path(tmp) / "secret.key")
        ensure_key_file(key_file)
        env = {"MAILLEDGER_DATABASE__URL": url, "MAILLEDGER_SECRETS__KEY_FILE": key_file}
        settings = load_settings(None, env).model_copy(
            update={
                "webhooks": WebhookSettings(
                    allow_private_targets=True,
                    max_concurrent=args.concurrency,
                    poll_interval_seconds=0.05,
                )
            }
        )
        engine = make_engine(url, lock_poll_seconds=0.001)  # as serve() makes it
        Base.metadata.create_all(engine)
        sessions = make_sessionmaker(engine)
        with sessions.begin() as session:
            seed_demo(session)
            tenant = directory.find_tenant(session, "acme")
            webhooks.add_endpoint(
                session, tenant, receiver.url(), box=SecretBox.from_file(key_file)
            )
            for n in range(args.events):
                webhooks.emit(
                    session, tenant.id, webhooks.MESSAGE_QUARANTINED, {"n": n, "pad": "x" * 500}
                )
        elapsed = asyncio.run(_deliver_all(settings, sessions, args.events))
        engine.dispose()
        print(
            f"{args.events} webhook deliveries in {elapsed:.2f} s: "
            f"{args.events / elapsed:.0f}/s (concurrency {args.concurrency}, "
            f"{url.split(':', 1)[0]}, {len(receiver.requests)} requests received)"
        )


if __name__ == "__main__":
    main()
