"""Several listener processes on one port: both accept, and a killed one comes back.

``[service] listener_processes = 2`` runs a second capture listener process beside ``serve``'s
own, bound to the same port with SO_REUSEPORT. Which process holds a connection is read from
``/proc``: the server side of the connection is a socket inode that one process has open.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import smtplib
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings, VerifySettings
from mailledger.store.models import MessageState, ReceivedMessage
from mailledger.testing.mail import make_email
from mailledger.testing.ports import free_port
from mailledger.testing.scrape import scrape, value
from mailledger.testing.smtp import running_server

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT")

LISTENER = "mailledger-listener-1"
CONNECTIONS = 24  # each lands on one of two processes: all on one has odds of 2**-23


def _server_inode(server_port: int, client_port: int) -> str:
    """The inode of the server's end of a loopback TCP connection, from /proc/net/tcp."""
    wanted_local, wanted_remote = f"{server_port:04X}", f"{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].split(":")[1], fields[2].split(":")[1]
        if local == wanted_local and remote == wanted_remote:
            return fields[9]
    raise LookupError(f"no connection {client_port} -> {server_port}")


def _owner(server_port: int, client: smtplib.SMTP, pids: list[int]) -> int:
    """Which of ``pids`` holds the server's end of the client's connection."""
    assert client.sock is not None
    target = f"socket:[{_server_inode(server_port, client.sock.getsockname()[1])}]"
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if str(fd.readlink()) == target:
                    return pid
            except OSError:
                continue
    raise LookupError(f"no process holds {target}")


def _connect(port: int) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    client.ehlo("client.example")
    return client


def _listener_pid() -> int | None:
    found = [p.pid for p in multiprocessing.active_children() if p.name == LISTENER]
    return found[0] if found else None


async def _client_held_by(port: int, pid: int, pids: list[int]) -> smtplib.SMTP:
    """A connected client whose connection process ``pid`` accepted (others are closed)."""
    others = []
    try:
        for _ in range(CONNECTIONS * 4):
            client = await asyncio.to_thread(_connect, port)
            if _owner(port, client, pids) == pid:
                return client
            others.append(client)
        raise AssertionError(f"no connection reached process {pid}")
    finally:
        for other in others:
            await asyncio.to_thread(other.quit)


def _send(client: smtplib.SMTP, demo: DemoAddresses, subject: str) -> tuple[int, bytes]:
    client.mail(demo.contact_address)
    client.rcpt(demo.user_capture)
    return client.data(make_email(subject=subject))


def _messages(sessions: sessionmaker[Session]) -> dict[str, MessageState]:
    with sessions() as session:
        return dict(session.execute(select(ReceivedMessage.queue_id, ReceivedMessage.state)).all())


async def test_two_listener_processes_share_the_port_and_a_killed_one_is_restarted(
    settings: Settings, sessions: sessionmaker[Session], demo: DemoAddresses
) -> None:
    """Connections reach both processes; mail the second process answered 250 is kept and
    processed after it is killed with SIGKILL; a new one takes its place on the same port,
    its mail counts in the server's metrics, and every process stops with the server."""
    mport = free_port()
    settings = settings.model_copy(
        update={
            "service": settings.service.model_copy(update={"listener_processes": 2}),
            "metrics": settings.metrics.model_copy(update={"listen": f"127.0.0.1:{mport}"}),
            "verify": VerifySettings(demo_trust_loopback=True),
        }
    )
    async with running_server(settings) as port:
        first = _listener_pid()
        assert first is not None
        pids = [os.getpid(), first]
        clients = [await asyncio.to_thread(_connect, port) for _ in range(CONNECTIONS)]
        owners = {_owner(port, client, pids) for client in clients}
        for client in clients:
            await asyncio.to_thread(client.quit)
        assert owners == set(pids)

        client = await _client_held_by(port, first, pids)
        code, reply = await asyncio.to_thread(_send, client, demo, "before the kill")
        assert code == 250, reply
        queue_id = reply.decode().split()[-1]
        os.kill(first, signal.SIGKILL)
        client.close()
        stored = _messages(sessions)
        assert queue_id in stored  # committed before the 250

        for _ in range(200):
            second = _listener_pid()
            if second not in (None, first):
                break
            await asyncio.sleep(0.05)
        assert second is not None
        assert second != first
        pids = [os.getpid(), second]
        held: smtplib.SMTP | None = None
        for _ in range(200):  # until it binds the port again
            try:
                held = await _client_held_by(port, second, pids)
                break
            except AssertionError:
                await asyncio.sleep(0.05)
        assert held is not None
        code, reply = await asyncio.to_thread(_send, held, demo, "after the restart")
        assert code == 250, reply
        await asyncio.to_thread(held.quit)
        after = reply.decode().split()[-1]

        for _ in range(300):
            states = _messages(sessions)
            if all(states.get(q) is MessageState.PROCESSED for q in (queue_id, after)):
                break
            await asyncio.sleep(0.05)
        assert states[queue_id] is MessageState.PROCESSED
        assert states[after] is MessageState.PROCESSED
        # The restarted process's count reaches the server's /metrics (sent once a second).
        for _ in range(100):
            scraped = await asyncio.to_thread(scrape, mport)
            if value(scraped, "mailledger_messages_accepted_total", listener="capture") >= 1:
                break
            await asyncio.sleep(0.05)
        assert value(scraped, "mailledger_messages_accepted_total", listener="capture") >= 1
    assert _listener_pid() is None
