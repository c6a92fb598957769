"""CPU time and memory of a process tree, read from /proc (Linux)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(p) for p in task.read_text().split()]
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """The process and all its live descendants."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo += _children(current)
    return pids


def _stat_cpu_ticks(pid: int) -> int:
    return sum(_stat_user_system_ticks(pid))


def _stat_user_system_ticks(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])  # utime, stime (stat fields 14 and 15)


def process_user_system_seconds(pid: int) -> tuple[float, float]:
    """User and system (kernel) CPU of one process and its threads, apart."""
    user, system = _stat_user_system_ticks(pid)
    return user / _TICKS, system / _TICKS


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of one process and its threads, without its child processes."""
    return _stat_cpu_ticks(pid) / _TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process tree (every thread, every child process)."""
    total = 0
    for p in tree(pid):
        try:
            total += _stat_cpu_ticks(p)
        except OSError:
            continue
    return total / _TICKS


def rss_bytes(pid: int) -> int:
    """Resident memory of the process tree now."""
    total = 0
    for p in tree(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * _PAGE
        except OSError:
            continue
    return total


def hwm_bytes(pid: int) -> int:
    """Peak resident memory (VmHWM) of the process tree since the last reset."""
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


class RSSSampler:
    """Samples a process tree's RSS every few milliseconds and keeps the peak.

    ``peak`` is the most the whole tree held at one moment: the server's memory. ``hwm_sum``
    adds up each process's own peak (VmHWM) even when they came at different moments, so it
    is an upper bound, exact for spikes too short to sample.
    """

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.baseline = rss_bytes(pid)
        self.peak = self.baseline
        self.hwm_sum = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> RSSSampler:
        for p in tree(self.pid):
            # Resets VmHWM (the kernel's own peak) so it covers only this phase.
            try:
                Path(f"/proc/{p}/clear_refs").write_text("5")
            except OSError:
                continue
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))
        self.hwm_sum = max(self.peak, hwm_bytes(self.pid))
