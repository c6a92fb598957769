"""The service under a systemd-like supervisor: readiness, watchdog, reload, clean stop.

The real server runs as a subprocess with ``NOTIFY_SOCKET`` pointing at a datagram socket the
test reads, as systemd's would be, and ``WATCHDOG_USEC`` set. The test checks READY, regular
WATCHDOG pings, a SIGHUP reload (RELOADING then READY; safe limits applied, the rest named as
needing a restart), and SIGTERM: STOPPING, 421 4.3.2 to a newcomer, a session in DATA still
getting its 250, and exit status 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mailledger.cli.demo import seed_demo
from mailledger.service.notify import Notifier
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.models import Base, ReceivedMessage
from mailledger.testing.mail import make_email
from mailledger.testing.ports import free_port
from mailledger.testing.smtp import dot_stuff

pytestmark = pytest.mark.slow

RCPT = "richard@acme.capture.example"


def config_text(tmp_path: Path, port: int, *, max_recipients: int, batch_size: int) -> str:
    return f"""
[database]
url = "sqlite:///{tmp_path / "life.db"}"
[storage]
blob_dir = "{tmp_path / "blobs"}"
min_free_bytes = 0
[capture]
listen = ["127.0.0.1:{port}"]
max_recipients = {max_recipients}
[submission]
listen = []
[service]
shutdown_grace_seconds = 20
[processing]
batch_size = {batch_size}
[dns]
nameservers = ["127.0.0.1:9"]
timeout_seconds = 0.5
[metrics]
listen = ""
[http]
listen = "127.0.0.1:0"
[logging]
format = "json"
level = "info"
"""


class NotifySocket:
    """The supervisor's end of sd_notify: collects the datagrams the service sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, timeout: float = 30.0) -> dict[str, str]:
        """The next message (after those already read) that carries ``key``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            self.messages.append(fields)
            if key in fields:
                return fields
        raise AssertionError(f"no {key} from the service; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


class Session:
    """A hand-driven SMTP session, to hold a DATA open across a signal."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")

    def reply(self) -> str:
        lines = []
        while True:
            line = self.file.readline().decode()
            if not line:
                return "".join(lines) or "(closed)"
            lines.append(line)
            if line[3:4] != "-":
                return "".join(lines)

    def say(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def log_events(log: Path) -> list[dict[str, object]]:
    events = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def test_notify_reload_and_clean_stop(tmp_path: Path, notify: NotifySocket) -> None:
    """READY, WATCHDOG, RELOADING/READY on SIGHUP, and SIGTERM that lets DATA finish."""
    engine = make_engine(f"sqlite:///{tmp_path / 'life.db'}")
    Base.metadata.create_all(engine)
    with make_sessionmaker(engine).begin() as session:
        seed_demo(session)
    port = free_port()
    config = tmp_path / "life.toml"
    config.write_text(config_text(tmp_path, port, max_recipients=5, batch_size=32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILLEDGER_")}
    env.update(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="400000")
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailledger.service.server", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        ready = notify.wait_for("READY")
        assert ready["MAINPID"] == str(proc.pid)
        assert f"127.0.0.1:{port}" in ready["STATUS"]
        notify.wait_for("WATCHDOG")
        notify.wait_for("WATCHDOG", timeout=2)  # again within a few intervals

        # Reload: max_recipients applies at once, batch_size needs a restart.
        config.write_text(config_text(tmp_path, port, max_recipients=1, batch_size=8))
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING")
        assert "READY" in notify.wait_for("READY")
        limited = Session(port)
        limited.reply()
        limited.say("EHLO client.test")
        limited.say("MAIL FROM:<carol@client.example>")
        first, second = limited.say(f"RCPT TO:<{RCPT}>"), limited.say(f"RCPT TO:<{RCPT}>")
        limited.say("QUIT")
        limited.close()
        assert first.startswith("250") and second.startswith("452 4.5.3")

        # A session in the middle of DATA when SIGTERM arrives.
        busy = Session(port)
        busy.reply()
        busy.say("EHLO client.test")
        busy.say("MAIL FROM:<carol@client.example>")
        busy.say(f"RCPT TO:<{RCPT}>")
        assert busy.say("DATA").startswith("354")
        body = dot_stuff(make_email(subject="in flight at SIGTERM"))
        busy.sock.sendall(body[: len(body) // 2])
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING")
        newcomer = Session(port)
        refused = newcomer.reply()
        newcomer.close()
        busy.sock.sendall(body[len(body) // 2 :] + b".\r\n")
        finished = busy.reply()
        busy.close()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert refused.startswith("421 4.3.2"), refused
    assert finished.startswith("250 2.0.0"), finished
    with make_sessionmaker(engine)() as session:
        assert session.scalar(select(func.count()).select_from(ReceivedMessage)) == 1
    engine.dispose()
    reloaded = [e for e in log_events(log) if e.get("event") == "configuration reloaded"]
    assert reloaded, log.read_text()[-2000:]
    assert reloaded[0]["applied"] == ["capture.max_recipients"]
    assert reloaded[0]["needs_restart"] == ["processing.batch_size"]


def test_notifier_is_silent_outside_systemd() -> None:
    """Without NOTIFY_SOCKET nothing is sent and no watchdog is expected."""
    notifier = Notifier(environ={})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog_seconds is None


def test_watchdog_meant_for_another_process_is_ignored() -> None:
    """WATCHDOG_PID naming another process means the watchdog is not ours (sd_watchdog_enabled)."""
    theirs = Notifier(environ={"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    ours = Notifier(environ={"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())})
    assert theirs.watchdog_seconds is None
    assert ours.watchdog_seconds == 1.0
