"""One phase of the bench: messages sent to one server over N sessions, and what it cost.

The same measurement for every server the bench runs (bare aiosmtpd, mailledger on SQLite or
PostgreSQL, Haraka): the rate of ``250`` replies, the latency from the end of DATA to the
reply, the server's CPU per message and its memory peak, and for mailledger the rate and
latency of processing, read from its database.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from bench import procstat
from bench.load import LoadResult, prepare, run_load
from bench.processed import queue_id, wait_processed
from bench.results import ms
from bench.world import GMAIL_IP, RICHARD_CAPTURE, Mail

MB = 1024 * 1024


def _cpu(*pids: int | None) -> float:
    """CPU seconds of the process trees of ``pids`` (``None`` counts nothing)."""
    return sum(procstat.cpu_seconds(pid) for pid in pids if pid is not None)


def measure(
    port: int,
    pid: int,
    mails: list[Mail],
    sessions: int,
    db: sessionmaker[Session] | None,
    *,
    rate: float | None = None,
    db_pid: int | None = None,
) -> dict[str, Any]:
    """Send ``mails`` over ``sessions`` connections; for the full server, wait for processing.

    With a ``rate`` (messages per second) the sessions offer that rate, not all they can.
    ``db_pid`` is a database server's main process (PostgreSQL): its CPU is the server's
    too, as SQLite's is inside the server's own processes.
    """
    work = prepare(mails)
    size = sum(len(m.data) for m in mails) / len(mails)
    cpu0 = _cpu(pid, db_pid)
    db_cpu0 = _cpu(db_pid)
    with procstat.RSSSampler(pid) as rss:
        load: LoadResult = asyncio.run(
            run_load(port, RICHARD_CAPTURE, work, sessions, GMAIL_IP, rate=rate)
        )
        intake_cpu = _cpu(pid, db_pid) - cpu0
        out: dict[str, Any] = {"sessions": sessions, "messages": len(mails), "bytes": round(size)}
        accepted = load.accepted
        out["accepted"] = len(accepted)
        out["intake_msgs_per_s"] = round(len(accepted) / load.seconds, 1)
        out["accept_ms"] = ms([s.data_to_reply for s in accepted])
        out["intake_cpu_ms_per_msg"] = round(intake_cpu / max(len(mails), 1) * 1000, 3)
        if db is None:
            out["msgs_per_s"] = out["intake_msgs_per_s"]
            out["cpu_ms_per_msg"] = out["intake_cpu_ms_per_msg"]
        else:
            by_id = {queue_id(s.reply): s for s in accepted}
            finished = wait_processed(db, list(by_id), seconds=120 + len(mails) * 0.5)
            cpu = _cpu(pid, db_pid) - cpu0
            if db_pid is not None:
                out["db_cpu_ms_per_msg"] = round((_cpu(db_pid) - db_cpu0) / len(mails) * 1000, 3)
            states: dict[str, int] = {}
            for state, _ in finished.values():
                states[state] = states.get(state, 0) + 1
            states["unfinished"] = len(by_id) - len(finished)
            ends = [at.timestamp() for _, at in finished.values() if at is not None]
            last = max(ends, default=time.time())
            out["states"] = states
            out["msgs_per_s"] = round(len(finished) / (last - load.started_at), 1)
            out["cpu_ms_per_msg"] = round(cpu / max(len(mails), 1) * 1000, 3)
            out["activity_ms"] = ms(
                [
                    at.timestamp() - by_id[qid].replied_at
                    for qid, (_, at) in finished.items()
                    if at is not None
                ]
            )
    out["rss_baseline_mb"] = round(rss.baseline / MB, 1)
    out["rss_peak_mb"] = round(rss.peak / MB, 1)
    out["rss_growth_mb"] = round((rss.peak - rss.baseline) / MB, 1)
    out["rss_hwm_sum_growth_mb"] = round((rss.hwm_sum - rss.baseline) / MB, 1)
    return out
