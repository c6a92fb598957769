"""Where the full server's CPU sits idle: CPU use per process over time at 50 sessions.

``python -m bench.timeline`` runs the full server as ``make bench`` does, sends it a warm-up,
then ``--messages`` 10 KB Gmail forwards over ``--sessions`` sessions, and samples the CPU
time of the listener process and of each processing process every 0.1 s until the last
activity is recorded. It prints the processed rate, the CPU per message, how much of the
machine's CPU the server used over that time (``busy``), each process's user and system
(kernel) CPU a message, and the timeline: a worker below 1.0
after the listener has gone quiet is waiting (on an fsync, a lock), not computing.
``--processing KEY=VALUE`` overrides a ``[processing]`` setting (``worker_processes=3``), and
``--storage KEY=VALUE`` a ``[storage]`` one (``backend="database"``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench import procstat
from bench.load import prepare, run_load
from bench.processed import queue_id, wait_processed
from bench.results import ms
from bench.servers import full_server, set_up_world
from bench.world import (
    GMAIL_IP,
    RICHARD_CAPTURE,
    make_keys,
    make_messages,
)
from mailledger.testing.dnsserver import DNSServer

KB = 1024
WARM_UP = 100  # messages sent first, so the processes have imported and cached what they use
SAMPLE_SECONDS = 0.1


def _override(config: Path, settings: list[str], section: str = "processing") -> None:
    """Set ``[section]`` keys in the written configuration."""
    text = config.read_text()
    for setting in settings:
        key, _, raw = setting.partition("=")
        value = json.dumps(json.loads(raw))
        if re.search(rf"^{re.escape(key)} = ", text, flags=re.MULTILINE):
            text = re.sub(rf"^{re.escape(key)} = .*$", f"{key} = {value}", text, flags=re.M)
        else:
            text = text.replace(f"[{section}]\n", f"[{section}]\n{key} = {value}\n", 1)
    config.write_text(text)


class _Sampler:
    """CPU seconds per process of the server's tree, every ``SAMPLE_SECONDS``."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.samples: list[tuple[float, dict[int, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last: dict[int, float] = {}
        while not self._stop.is_set():
            now = {p: procstat.process_cpu_seconds(p) for p in procstat.tree(self._pid)}
            used = {p: now[p] - last.get(p, now[p]) for p in now}
            self.samples.append((time.monotonic(), used))
            last = now
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _user_system(pid: int) -> dict[int, tuple[float, float]]:
    """Each process's user and system CPU so far, across the server's tree."""
    found = {}
    for p in procstat.tree(pid):
        try:
            found[p] = procstat.process_user_system_seconds(p)
        except OSError:
            continue
    return found


def main() -> int:
    """Run one phase and print the rate, the CPU use and the timeline."""
    parser = argparse.ArgumentParser(prog="python -m bench.timeline")
    parser.add_argument("--messages", type=int, default=800)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--processing", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--storage", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    keys = make_keys()
    cpus = os.cpu_count() or 1
    with (
        tempfile.TemporaryDirectory(prefix="mailledger-timeline-") as tmp,
        DNSServer() as dns,
        ProcessPoolExecutor(2) as pool,
    ):
        work = Path(tmp)
        world = set_up_world(work, dns, keys)
        ports, db, config = world.ports, world.db, world.config
        _override(config, args.processing)
        _override(config, args.storage, "storage")
        warm = make_messages(keys, WARM_UP, 10 * KB, pool)
        mails = make_messages(keys, args.messages, 10 * KB, pool)
        with full_server(config, ports["capture"], work / "server.log") as full:
            port = ports["capture"]
            asyncio.run(run_load(port, RICHARD_CAPTURE, prepare(warm), 10, GMAIL_IP))
            time.sleep(3)
            with _Sampler(full.pid) as sampler:
                split0 = _user_system(full.pid)
                cpu0 = procstat.cpu_seconds(full.pid)
                load = asyncio.run(
                    run_load(port, RICHARD_CAPTURE, prepare(mails), args.sessions, GMAIL_IP)
                )
                ids = [queue_id(s.reply) for s in load.accepted]
                finished = wait_processed(db, ids, seconds=300)
                cpu = procstat.cpu_seconds(full.pid) - cpu0
                split1 = _user_system(full.pid)
            ends = [at.timestamp() for _, at in finished.values() if at is not None]
            wall = max(ends) - load.started_at
            count = len(finished)
            print(
                f"{count}/{args.messages} processed in {wall:.2f} s = {count / wall:.1f} msg/s, "
                f"answered in {load.seconds:.2f} s; {cpu / count * 1000:.2f} ms CPU a message; "
                f"busy {cpu / wall / cpus:.0%} of {cpus} CPUs"
            )
            accept = ms([s.data_to_reply for s in load.accepted])
            print(f"end of DATA to 250, ms: p50 {accept['p50']}, p99 {accept['p99']}")
            listener = full.pid
            for pid in sorted(split1, key=lambda p: p != listener):
                before = split0.get(pid, (0.0, 0.0))
                user, system = split1[pid][0] - before[0], split1[pid][1] - before[1]
                if user + system:
                    name = "listener" if pid == listener else f"pid {pid}"
                    print(
                        f"{name}: {user / count * 1000:.2f} ms user + "
                        f"{system / count * 1000:.2f} ms system CPU a message"
                    )
            others = sorted({p for _, used in sampler.samples for p in used} - {listener})
            print("seconds  listener  " + "  ".join(f"pid {p}" for p in others))
            start = sampler.samples[0][0]
            for at, used in sampler.samples[::3]:
                if at - start > wall + 0.5:
                    break
                row = [used.get(p, 0.0) / SAMPLE_SECONDS for p in others]
                cells = "  ".join(f"{v:8.2f}" for v in row)
                print(
                    f"{at - start:7.1f}  {used.get(listener, 0.0) / SAMPLE_SECONDS:8.2f}  {cells}"
                )
        for recorder in world.recorders:
            recorder.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
