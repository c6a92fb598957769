"""Processing in processes of its own: mail is captured, and the processes stop with the server."""

from __future__ import annotations

import asyncio
import multiprocessing
import os

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings, VerifySettings
from mailledger.store.models import Activity, MessageState, ReceivedMessage
from mailledger.testing.mail import make_email
from mailledger.testing.ports import free_port
from mailledger.testing.scrape import scrape, value
from mailledger.testing.smtp import running_server, send_raw_async


def _states(sessions: sessionmaker[Session]) -> list[MessageState]:
    with sessions() as session:
        return list(session.scalars(select(ReceivedMessage.state)))


async def test_worker_processes_capture_mail_and_stop_with_the_server(
    settings: Settings, sessions: sessionmaker[Session], demo: DemoAddresses
) -> None:
    """With two processing processes every message is recorded once, by another process,
    and counted in the server's metrics."""
    processing = settings.processing.model_copy(update={"worker_processes": 2})
    mport = free_port()
    settings = settings.model_copy(
        update={
            "processing": processing,
            "verify": VerifySettings(demo_trust_loopback=True),
            "metrics": settings.metrics.model_copy(update={"listen": f"127.0.0.1:{mport}"}),
        }
    )
    async with running_server(settings) as port:
        children = {p.name: p.pid for p in multiprocessing.active_children()}
        assert {"mailledger-worker-0", "mailledger-worker-1"} <= set(children)
        # They run nicer than the listener, so a CPU shortage delays processing, not the 250.
        own = os.getpriority(os.PRIO_PROCESS, 0)
        for name in ("mailledger-worker-0", "mailledger-worker-1"):
            pid = children[name]
            assert pid is not None
            for _ in range(100):  # the child sets it first thing after starting
                if os.getpriority(os.PRIO_PROCESS, pid) != own:
                    break
                await asyncio.sleep(0.05)
            expected = min(own + settings.processing.worker_nice, 19)
            assert os.getpriority(os.PRIO_PROCESS, pid) == expected
        for index in range(12):
            sent = await send_raw_async(
                port, demo.contact_address, [demo.user_capture], make_email(subject=f"n{index}")
            )
            assert sent.accepted, sent
        for _ in range(300):
            states = _states(sessions)
            if len(states) == 12 and all(s is MessageState.PROCESSED for s in states):
                break
            await asyncio.sleep(0.05)
        # The processes' verdicts reach the parent's /metrics.
        for _ in range(100):
            scraped = await asyncio.to_thread(scrape, mport)
            if value(scraped, "mailledger_verdicts_total", state="processed") == 12:
                break
            await asyncio.sleep(0.05)
        assert value(scraped, "mailledger_verdicts_total", state="processed") == 12
        assert value(scraped, "mailledger_processing_latency_seconds_count") == 12
    assert _states(sessions) == [MessageState.PROCESSED] * 12
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Activity)) == 12
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("mailledger")]
