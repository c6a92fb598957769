"""Where the server's CPU goes: a py-spy run of the full server, samples grouped by part.

py-spy samples every thread (the intake writer, the verification pool) of every process (the
listener, the processing processes), which cProfile would not. Each sample is charged to the
innermost frame that belongs to a known part, so SQLAlchemy called from the processor counts
as storage, not matching.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from bench import procstat
from bench.load import prepare, run_load
from bench.processed import queue_id, wait_processed
from bench.world import GMAIL_IP, RICHARD_CAPTURE, Mail
from mailledger.testing.servers import ServerProcess

SESSIONS = 10

# Leaf to root, the first part whose marker is in a frame's file name takes the sample.
PARTS = [
    ("logging", ("structlog", "/logging/", "mailledger/logs")),
    (
        "verification",
        (
            "/dkim/",
            "/spf.py",
            "/dns/",
            "mailledger/verify",
            "mailledger/dnsauth",
            "nacl/",
            "cryptography",
            "authres",
        ),
    ),
    ("parsing", ("/email/", "mailledger/mail/", "nh3")),
    ("storage", ("sqlalchemy", "sqlite3", "mailledger/store", "psycopg")),
    (
        "matching+recording",
        (
            "mailledger/routing",
            "mailledger/capture/processor",
            "mailledger/capture/pipeline",
            "mailledger/capture/worker",
            "mailledger/smtp/screening",
            "mailledger/forwarding",
        ),
    ),
    ("listener", ("aiosmtpd", "mailledger/smtp", "mailledger/capture/handler", "asyncio/")),
]


# Leaf frames of threads that wait rather than run (py-spy's idle detection misses some).
WAITING = (
    "threading.py",
    "selectors.py",
    "concurrent/futures/thread.py:81",
    "queue.py",
    "multiprocessing/synchronize.py",  # a processing process waiting to be woken
    "spawn_main(",
)
# With --subprocesses a stack starts with the process's own frame; alone, it ran no Python.
PROCESS_FRAME = "process "


def _part(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        for part, markers in PARTS:
            if any(marker in frame for marker in markers):
                return part
    return "other"


def breakdown(raw: str) -> dict[str, Any]:
    """Sample counts per part, and the hottest functions, from py-spy's raw (collapsed) output."""
    parts: dict[str, int] = {}
    leaves: dict[str, int] = {}
    idle = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.split(";")[-1]
        if any(marker in leaf for marker in WAITING) or leaf.startswith(PROCESS_FRAME):
            idle += int(count)  # a thread waiting for work, a lock or the selector: no CPU
            continue
        parts[_part(stack)] = parts.get(_part(stack), 0) + int(count)
        leaves[leaf] = leaves.get(leaf, 0) + int(count)
    total = sum(parts.values()) or 1
    return {
        "samples": total,
        "waiting_samples": idle,
        "share_percent": {
            k: round(v * 100 / total, 1) for k, v in sorted(parts.items(), key=lambda x: -x[1])
        },
        "top_functions": [
            {"frame": k, "percent": round(v * 100 / total, 1)}
            for k, v in sorted(leaves.items(), key=lambda x: -x[1])[:15]
        ],
    }


def run(
    server: list[str], port: int, work: Path, mails: list[Mail], db: sessionmaker[Session]
) -> dict[str, Any]:
    """Start the server under py-spy, send ``mails`` and wait for processing, then stop."""
    spy = shutil.which("py-spy") or str(Path(server[0]).with_name("py-spy"))
    out = work / "profile.txt"
    # --subprocesses: processing runs in worker processes of the server.
    argv = [spy, "record", "--subprocesses", "--rate", "250", "--format", "raw"]
    argv += ["--output", str(out), "--", *server]
    profiled = ServerProcess(
        argv, port=port, log=work / "profile.log", name="py-spy", ready_timeout_seconds=60
    )
    try:
        profiled.start()
        load = asyncio.run(run_load(port, RICHARD_CAPTURE, prepare(mails), SESSIONS, GMAIL_IP))
        ids = [queue_id(s.reply) for s in load.accepted]
        wait_processed(db, ids, seconds=120)
    finally:
        _stop(profiled)
    if not out.exists():
        return {"error": "py-spy wrote no profile (ptrace not permitted?)"}
    result = breakdown(out.read_text())
    result["messages"] = len(mails)
    result["sessions"] = SESSIONS
    return result


def _stop(profiled: ServerProcess) -> None:
    """Stop the server py-spy runs, so py-spy writes its profile and exits with it."""
    if profiled.proc is None:
        return
    children = procstat.tree(profiled.pid)[1:]
    for pid in children[:1]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not children:
        profiled.signal(signal.SIGINT)
    deadline = time.monotonic() + 60
    while profiled.running and time.monotonic() < deadline:
        time.sleep(0.1)
    profiled.kill()
