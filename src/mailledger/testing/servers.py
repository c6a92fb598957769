"""The real server as a subprocess: its TOML configuration, starting it, stopping it, killing it.

System tests (crash recovery, two nodes on one database, a kill mid-delivery) and the
benchmark run ``python -m mailledger.service.server --config FILE`` exactly as an operator
would, so a SIGKILL really kills and the processing processes really are processes. This
module holds the one way they all do it: :func:`write_config` renders the sections a caller
chooses on top of the few every run needs, and :class:`ServerProcess` starts a command, waits
for its SMTP banner, and stops or kills it, keeping the output in a log file whose tail goes
into every failure message.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from mailledger.testing.ports import free_port

TomlScalar = str | int | float | bool | Path
TomlValue = TomlScalar | Sequence[TomlScalar]
Sections = Mapping[str, Mapping[str, TomlValue]]

# Nothing listens on the discard port: a run that names no DNS server asks no one outside.
NO_NAMESERVER = "127.0.0.1:9"
LOG_TAIL_CHARS = 3000


def _toml_value(value: TomlValue) -> str:
    if isinstance(value, str | Path) or not isinstance(value, Sequence):
        return _toml_scalar(value)
    return "[" + ", ".join(_toml_scalar(item) for item in value) + "]"


def _toml_scalar(value: TomlScalar) -> str:
    # bool before int: True is an int too, and TOML spells it `true`.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a TOML number for a setting: {value}")
        return repr(value)
    # A JSON string is a TOML basic string: quotes, backslashes and controls escaped.
    return json.dumps(str(value))


def render_config(sections: Sections) -> str:
    """``sections`` as TOML text: one ``[section]`` table each, keys in the order given."""
    parts = []
    for name, keys in sections.items():
        parts.append(f"[{name}]")
        parts += [f"{key} = {_toml_value(value)}" for key, value in keys.items()]
        parts.append("")
    return "\n".join(parts)


def write_config(
    path: Path,
    *,
    database_url: str,
    blob_dir: Path,
    capture_port: int,
    **sections: Mapping[str, TomlValue],
) -> Path:
    """Write a server configuration to ``path`` and return it.

    Every run names its database, its blob directory and its capture port, and logs JSON
    lines. It binds no fixed port another run could hold: submission is off and metrics go
    to a free port (and so does the HTTP API) unless ``submission``, ``metrics`` or ``http``
    say otherwise; DNS goes to
    :data:`NO_NAMESERVER` unless ``dns`` does. Each keyword is a section
    (``processing={...}``, ``relay={...}``); its keys are added to those defaults or replace
    them, so ``capture={"timeout_seconds": 30}`` keeps the listen address.
    """
    merged: dict[str, dict[str, TomlValue]] = {
        "database": {"url": database_url},
        "storage": {"blob_dir": blob_dir},
        "capture": {"listen": [f"127.0.0.1:{capture_port}"]},
        "submission": {"listen": []},
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "dns": {"nameservers": [NO_NAMESERVER]},
        "logging": {"format": "json"},
    }
    for name, keys in sections.items():
        merged.setdefault(name, {}).update(keys)
    path.write_text(render_config(merged), encoding="utf-8")
    return path


def server_argv(config: Path) -> list[str]:
    """The command that runs every listener and worker of the server with ``config``."""
    return [sys.executable, "-m", "mailledger.service.server", "--config", str(config)]


class ServerStartError(RuntimeError):
    """The process exited, or never answered on its port, while it was starting."""


class ServerProcess:
    """One server subprocess that can be started again after it stopped or was killed.

    ``start`` waits until ``port`` answers with an SMTP ``220`` banner, so the caller can send
    at once. The child gets the caller's environment without any ``MAILLEDGER_`` variable (the
    configuration file is the whole configuration), plus ``env``. Output goes to ``log``,
    appended across restarts. As a context manager it starts on entry and stops on exit.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        port: int,
        log: Path,
        name: str = "server",
        env: Mapping[str, str] | None = None,
        ready_timeout_seconds: float = 30.0,
    ) -> None:
        self.argv = list(argv)
        self.port = port
        self.log = log
        self.name = name
        self.env = dict(env or {})
        self.ready_timeout_seconds = ready_timeout_seconds
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @classmethod
    def for_config(
        cls,
        config: Path,
        *,
        port: int,
        log: Path,
        name: str = "server",
        env: Mapping[str, str] | None = None,
        ready_timeout_seconds: float = 30.0,
    ) -> Self:
        """``python -m mailledger.service.server --config config``, ready when ``port`` is."""
        return cls(
            server_argv(config),
            port=port,
            log=log,
            name=name,
            env=env,
            ready_timeout_seconds=ready_timeout_seconds,
        )

    @property
    def pid(self) -> int:
        """The running process's id."""
        return self._proc().pid

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self) -> str:
        """The end of the output so far: what a failure message should show."""
        if not self.log.exists():
            return ""
        return self.log.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:]

    def start(self) -> None:
        """Start the process and wait for its banner; raises :class:`ServerStartError`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILLEDGER_")}
        env.update(self.env)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - the caller's argv, no shell
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        self.starts += 1
        self.wait_ready()

    def wait_ready(self) -> None:
        """Wait until ``port`` sends a ``220`` banner; the process must stay alive meanwhile."""
        proc = self._proc()
        deadline = time.monotonic() + self.ready_timeout_seconds
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServerStartError(
                    f"{self.name} exited with {proc.returncode} while starting:\n" + self.log_tail()
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    if sock.recv(512).startswith(b"220 "):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise ServerStartError(
            f"{self.name} did not answer on port {self.port}:\n" + self.log_tail()
        )

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` (SIGSTOP to freeze it, SIGHUP to reload…)."""
        self._proc().send_signal(sig)

    def wait(self, timeout_seconds: float) -> int:
        """Wait for the process to exit (after a signal sent with :meth:`signal`); its status."""
        return self._proc().wait(timeout_seconds)

    def kill(self) -> None:
        """SIGKILL, as a power cut would, and reap it; nothing if it is not running."""
        if self.running:
            proc = self._proc()
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def stop(self, timeout_seconds: float = 60.0) -> int:
        """SIGTERM and wait for the clean stop; SIGKILL after ``timeout_seconds``.

        Returns the exit status: 0 for a clean stop, ``-9`` when it had to be killed.
        """
        proc = self._proc()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None:
            self.stop()

    def _proc(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.proc
