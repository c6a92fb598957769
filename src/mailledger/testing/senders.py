"""Client threads that send mail the way a real MTA does: retrying until the server says 250.

A server under a crash test is killed, frozen and restarted while mail arrives. A real
sending MTA keeps each message queued until it gets a 250 or a 5xx: after a refused
connection, a dropped session or a 4xx it waits a little and tries again, on the next of the
receiving hosts. :class:`Senders` is a few such threads sharing one numbered batch of
messages, and it keeps what a test needs to check durability: which messages got their 250,
how many times each was tried, and the exact bytes sent.
"""

from __future__ import annotations

import smtplib
import threading
import time
from collections import Counter
from collections.abc import Sequence

from mailledger.testing.mail import make_email
from mailledger.testing.smtp import send_raw

DEFAULT_FROM = "carol@client.example"
DEFAULT_RCPT = "richard@acme.capture.example"


class Senders:
    """``count`` messages sent by threads that retry each one until a final reply.

    Message ``n`` has the Message-ID ``{prefix}-{n}@client.example`` and the subject
    ``Message {n}``. Its first attempt goes to ``ports[n % len(ports)]`` and each retry to the
    next port, so with several servers the load is spread and a dead one is passed over.
    A message is *acked* on 250 after DATA, *refused* on any 5xx (with that reply); a
    connection error or a 4xx means try again after ``retry_pause_seconds``, until
    ``deadline_seconds`` after the thread started.
    """

    def __init__(
        self,
        ports: Sequence[int],
        count: int,
        *,
        prefix: str,
        mail_from: str = DEFAULT_FROM,
        rcpt_to: Sequence[str] = (DEFAULT_RCPT,),
        io_timeout_seconds: float = 10.0,
        deadline_seconds: float = 240.0,
        retry_pause_seconds: float = 0.05,
    ) -> None:
        if not ports:
            raise ValueError("senders need at least one port to send to")
        self.ports = list(ports)
        self.count = count
        self.prefix = prefix
        self.mail_from = mail_from
        self.rcpt_to = list(rcpt_to)
        self.io_timeout_seconds = io_timeout_seconds
        self.deadline_seconds = deadline_seconds
        self.retry_pause_seconds = retry_pause_seconds
        self.lock = threading.Lock()
        self.next = 0
        self.attempts: Counter[str] = Counter()
        self.acked: set[str] = set()
        self.refused: dict[str, str] = {}
        self.sent: dict[str, bytes] = {}
        self.threads: list[threading.Thread] = []

    def message_id(self, n: int) -> str:
        """The Message-ID of message ``n``."""
        return f"{self.prefix}-{n}@client.example"

    def start(self, threads: int) -> None:
        """Start ``threads`` sending threads (daemons: a hung one never blocks the exit)."""
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def join(self, timeout_seconds: float) -> bool:
        """Wait for every thread, up to ``timeout_seconds`` each; whether all have finished."""
        for thread in self.threads:
            thread.join(timeout_seconds)
        return not any(thread.is_alive() for thread in self.threads)

    @property
    def acked_count(self) -> int:
        """How many messages got their 250 so far."""
        with self.lock:
            return len(self.acked)

    def _take(self) -> int | None:
        with self.lock:
            if self.next >= self.count:
                return None
            self.next += 1
            return self.next - 1

    def run(self) -> None:
        """One thread's work: take the next message and send it until a final reply."""
        stop_at = time.monotonic() + self.deadline_seconds
        while (n := self._take()) is not None:
            message_id = self.message_id(n)
            data = make_email(message_id=message_id, subject=f"Message {n}")
            with self.lock:
                self.sent[message_id] = data
            attempt = n
            while time.monotonic() < stop_at:
                port = self.ports[attempt % len(self.ports)]
                attempt += 1
                with self.lock:
                    self.attempts[message_id] += 1
                try:
                    tx = send_raw(
                        port,
                        self.mail_from,
                        self.rcpt_to,
                        data,
                        io_timeout=self.io_timeout_seconds,
                    )
                except (OSError, smtplib.SMTPException):
                    # The server is down, or frozen: an MTA keeps the message and retries.
                    time.sleep(self.retry_pause_seconds)
                    continue
                if tx.accepted:
                    with self.lock:
                        self.acked.add(message_id)
                    break
                last = tx.data or (tx.rcpt[-1] if tx.rcpt else tx.mail)
                if 500 <= last[0] < 600:
                    with self.lock:
                        self.refused[message_id] = f"{last[0]} {last[1]}"
                    break
                time.sleep(self.retry_pause_seconds)  # 4xx: try again later
