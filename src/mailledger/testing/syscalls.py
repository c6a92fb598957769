"""Run a command under ``strace`` and read back the order of its system calls.

Durability is a promise about order (write, fsync the file, rename, fsync the directory,
commit, then answer ``250``), and the only witness that sees every thread of the real server
is the kernel's: ``strace -f`` records each call as it happens. :func:`strace_argv` wraps a
command so that file paths show behind descriptors (``-y``) and written strings are long
enough to read a reply; :func:`parse_trace` turns the file into :class:`Call` records that know
on which line of the trace each call began and ended. A call that finished before another one
began is on an earlier line, whichever threads made them: strace reports a thread's next call
only after it has handled the end of its previous one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TRACED_CALLS = "fsync,fdatasync,rename,renameat,renameat2,write,sendto,openat,mkdir,mkdirat"
STRING_CHARS = 256

_LINE = re.compile(r"^(?P<pid>\d+)\s+(?:\d\d:\d\d:\d\d\.\d+\s+)?(?P<rest>.*)$")
_START = re.compile(r"^(?P<name>\w+)\((?P<args>.*)$")
_RESUMED = re.compile(r"^<\.\.\. (?P<name>\w+) resumed>(?P<args>.*)$")
_RESULT = re.compile(r"^(?P<result>-?\d+|\?)")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_FD_PATH = re.compile(r"^\d+<(?P<path>[^>]*)>")


@dataclass(frozen=True, slots=True)
class Call:
    """One finished system call: who made it, its arguments as strace printed them, and when."""

    pid: int
    name: str
    args: str
    result: int | None  # None when strace printed "?" (the process went away)
    start: int  # the trace line where the call began
    end: int  # the trace line where it returned

    @property
    def ok(self) -> bool:
        """Whether it returned without an error."""
        return self.result is not None and self.result >= 0

    @property
    def strings(self) -> list[str]:
        """The quoted string arguments (paths, written bytes), strace's escapes left as is."""
        return _STRING.findall(self.args)

    @property
    def fd_path(self) -> str:
        """The path of the first argument's descriptor (``-y``), or ""."""
        match = _FD_PATH.match(self.args)
        return match.group("path") if match else ""


def strace_unavailable() -> str | None:
    """Why ``strace -f`` cannot trace a child here (missing, ptrace refused), or None."""
    strace = shutil.which("strace")
    if strace is None:
        return "strace is not installed"
    probe = subprocess.run(  # noqa: S603 - a fixed command
        [strace, "-f", "-o", "/dev/null", "true"], capture_output=True, timeout=30, check=False
    )
    if probe.returncode != 0:
        error = probe.stderr.decode(errors="replace").strip().splitlines()
        return "strace cannot trace here: " + (error[-1] if error else f"exit {probe.returncode}")
    return None


def strace_argv(trace_file: Path, argv: Sequence[str]) -> list[str]:
    """``argv`` under ``strace -f``, every thread and child, paths shown behind descriptors."""
    return [
        "strace",
        "-f",
        "-tt",
        "-y",
        "-s",
        str(STRING_CHARS),
        "-e",
        f"trace={TRACED_CALLS}",
        "-o",
        str(trace_file),
        "--",
        *argv,
    ]


def parse_trace(text: str) -> list[Call]:
    """The finished calls of an ``strace -f`` output, in the order they returned."""
    calls: list[Call] = []
    unfinished: dict[int, tuple[str, str, int]] = {}
    for number, line in enumerate(text.splitlines()):
        match = _LINE.match(line)
        if match is None:
            continue
        pid, rest = int(match.group("pid")), match.group("rest")
        if rest.startswith(("---", "+++")):
            continue  # a signal, or the thread's exit
        if (resumed := _RESUMED.match(rest)) is not None:
            begun = unfinished.pop(pid, None)
            if begun is None or begun[0] != resumed.group("name"):
                continue  # began before the trace did
            name, args, start = begun[0], begun[1] + resumed.group("args"), begun[2]
        elif (started := _START.match(rest)) is not None:
            name, args, start = started.group("name"), started.group("args"), number
            if args.endswith("<unfinished ...>"):
                unfinished[pid] = (name, args.removesuffix("<unfinished ...>").rstrip(), start)
                continue
        else:
            continue
        # The last " = " after the closing parenthesis: a written string may hold one too.
        result = _RESULT.match(args.rpartition(") = ")[2])
        value = None if result is None or result["result"] == "?" else int(result["result"])
        calls.append(Call(pid, name, args, value, start, number))
    return calls
