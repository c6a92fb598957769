"""systemd's notify protocol (sd_notify(3)): READY, WATCHDOG, STOPPING, RELOADING.

With ``Type=notify`` systemd counts the service started only when it says ``READY=1``, i.e.
once the listeners are bound and mail can be sent, and with ``WatchdogSec=`` it restarts a
process that stops saying ``WATCHDOG=1``. The protocol is one datagram per message on the
unix socket named by ``$NOTIFY_SOCKET``, so a plain socket does it; no dependency needed.
Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from mailledger.logs import get_logger

log = get_logger(__name__)


class Notifier:
    """Sends state changes to systemd, if systemd asked for them."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # "@name" is an abstract socket: its address starts with a NUL byte.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_seconds = _watchdog_seconds(env)

    @property
    def enabled(self) -> bool:
        """Whether systemd is listening (``$NOTIFY_SOCKET`` set)."""
        return bool(self._address)

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields as one datagram; False when nobody listens or it failed."""
        if not self._address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall("\n".join(fields).encode())
        except OSError as exc:
            # A notification lost is not worth stopping mail for; systemd's timeouts cover it.
            log.warning("sd_notify failed", error=str(exc))
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """Startup finished: the listeners accept mail."""
        return self.send(
            "READY=1", f"STATUS={status or 'accepting mail'}", f"MAINPID={os.getpid()}"
        )

    def reloading(self) -> bool:
        """A configuration reload starts; ``ready`` ends it (systemd.service ``Type=notify``)."""
        # MONOTONIC_USEC lets ``Type=notify-reload`` (systemd 253+) match the reload to us.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> bool:
        """Shutdown begun: systemd now waits up to TimeoutStopSec for us to exit."""
        return self.send("STOPPING=1", "STATUS=stopping: finishing sessions in DATA")

    def watchdog(self) -> bool:
        """The event loop is alive; must come more often than ``WatchdogSec``."""
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """A one-line status shown by ``systemctl status``."""
        return self.send(f"STATUS={text}")


def _watchdog_seconds(env: Mapping[str, str]) -> float | None:
    """The watchdog interval systemd expects, or None when there is no watchdog for us.

    ``WATCHDOG_PID`` names the process the watchdog is meant for; a child that inherited the
    environment must not answer for its parent (sd_watchdog_enabled(3)).
    """
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000
