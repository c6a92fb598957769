"""Relay: staff submit over STARTTLS with AUTH; the relay signs and delivers to a recording MX."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiosmtplib

from bench import procstat
from bench.results import ms
from bench.world import RICHARD_LOGIN, RICHARD_PASSWORD
from mailledger.testing.mail import make_email
from mailledger.testing.recorder import Recorder
from mailledger.testing.tls import trusting_client_context

SESSIONS = 10


async def _submit(port: int, cert: Path, work: list[bytes], took: list[float]) -> None:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, start_tls=True, tls_context=trusting_client_context(cert)
    )
    await client.connect()
    await client.login(RICHARD_LOGIN, RICHARD_PASSWORD)
    while work:
        data = work.pop()
        begun = time.perf_counter()
        await client.sendmail("richard@acme.example", ["carol@client.example"], data)
        took.append(time.perf_counter() - begun)
    await client.quit()


def measure(port: int, mx: Recorder, count: int, pid: int, cert: Path) -> dict[str, Any]:
    """Submit ``count`` 10 KB messages over 10 sessions; wait until the MX has them all."""
    body = "Dear Carol,\r\nthe quote is attached below.\r\n" * 220  # about 10 KB
    work = [
        make_email(
            sender="Richard Smith <richard@acme.example>",
            to="Carol Client <carol@client.example>",
            subject=f"Quote {i}",
            body=body,
        )
        for i in range(count)
    ]
    before = len(mx.accepted)
    took: list[float] = []
    cpu0 = procstat.cpu_seconds(pid)
    begun = time.perf_counter()

    async def _all() -> None:
        await asyncio.gather(*(_submit(port, cert, work, took) for _ in range(SESSIONS)))

    asyncio.run(_all())
    submitted = time.perf_counter() - begun
    deadline = time.monotonic() + 60 + count * 0.5
    while len(mx.accepted) - before < count and time.monotonic() < deadline:
        time.sleep(0.01)
    delivered_in = time.perf_counter() - begun
    delivered = len(mx.accepted) - before
    return {
        "messages": count,
        "sessions": SESSIONS,
        "delivered": delivered,
        "intake_msgs_per_s": round(count / submitted, 1),
        "delivered_msgs_per_s": round(delivered / delivered_in, 1),
        "submit_ms": ms(took),
        "cpu_ms_per_msg": round((procstat.cpu_seconds(pid) - cpu0) / count * 1000, 3),
    }
