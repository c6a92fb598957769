"""Debian's Radicale as a real CalDAV server for tests, on a loopback port.

Radicale is GPL-3.0, so it is never a Python dependency of mailledger: the tests start the
Debian package's ``python3 -m radicale`` (the system Python, not our venv) as a separate
process, with its filesystem storage, an htpasswd file of users (plain text: they are test
users) and its log in one temporary directory. Radicale logs one line per request it
receives, so :meth:`Radicale.requests` counts what a client really sent, by method, which
is how a test proves that a pass with nothing to do writes nothing.

Debian bookworm's Radicale (3.1) implements RFC 6578 sync tokens, ``getctag``, ETags and
``If-Match``/``If-None-Match``, and evaluates time-range filters on recurring events with
its own expansion of RRULE, EXDATE and RECURRENCE-ID; it does not implement the
``CALDAV:expand`` element, so tests compare occurrences through time-range queries.
"""

from __future__ import annotations

import base64
import contextlib
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from mailledger.testing.ports import free_port

PYTHON = "/usr/bin/python3"
RADICALE = "/usr/bin/radicale"
START_TIMEOUT_SECONDS = 20.0
_REQUEST_LINE = re.compile(r"\b([A-Z]+) request for '([^']*)'")


class RadicaleMissingError(RuntimeError):
    """Radicale is not installed: ``apt-get install radicale``."""


@dataclass(frozen=True, slots=True)
class HTTPAnswer:
    """What the server answered to one raw request."""

    status: int
    headers: dict[str, str]
    body: str


class Radicale:
    """A Radicale server on 127.0.0.1 with the given users (name → password)."""

    def __init__(self, users: dict[str, str]) -> None:
        if not Path(RADICALE).exists():
            raise RadicaleMissingError("Radicale is not installed: apt-get install radicale")
        self.users = dict(users)
        self.root = Path(tempfile.mkdtemp(prefix="mailledger-radicale-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log = self.root / "radicale.log"

    # --- life ---------------------------------------------------------------------------------

    def start(self) -> Radicale:
        """Write the configuration and start the server; return when it answers."""
        (self.root / "users").write_text(
            "".join(f"{name}:{password}\n" for name, password in self.users.items()),
            encoding="utf-8",
        )
        (self.root / "config").write_text(
            "[server]\n"
            f"hosts = 127.0.0.1:{self.port}\n"
            "[auth]\n"
            "type = htpasswd\n"
            f"htpasswd_filename = {self.root / 'users'}\n"
            "htpasswd_encryption = plain\n"
            "delay = 0\n"
            "[rights]\n"
            "type = owner_only\n"
            "[storage]\n"
            f"filesystem_folder = {self.root / 'collections'}\n"
            "[logging]\n"
            "level = info\n"
            "mask_passwords = True\n",
            encoding="utf-8",
        )
        log = self._log.open("ab")
        self._process = subprocess.Popen(  # noqa: S603 - a fixed, trusted command line
            [PYTHON, "-m", "radicale", "--config", str(self.root / "config")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"Radicale did not start:\n{self.log_text()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"Radicale did not listen in time:\n{self.log_text()}")

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Radicale:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def log_text(self) -> str:
        """The server's log so far (shown when a test fails)."""
        try:
            return self._log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def requests(self) -> Counter[str]:
        """How many requests of each method the server has received so far."""
        return Counter(m.group(1) for m in _REQUEST_LINE.finditer(self.log_text()))

    # --- what a calendar app would do -----------------------------------------------------

    def calendar_url(self, user: str, name: str) -> str:
        """The address of ``user``'s calendar collection ``name``."""
        return f"{self.url}/{user}/{name}/"

    def request(
        self,
        user: str,
        method: str,
        url: str,
        body: str = "",
        headers: dict[str, str] | None = None,
    ) -> HTTPAnswer:
        """One raw request as ``user`` (what another calendar client sends)."""
        token = base64.b64encode(f"{user}:{self.users[user]}".encode()).decode()
        request = urllib.request.Request(  # noqa: S310 - loopback http only
            url,
            data=body.encode() if body else None,
            method=method,
            headers={"Authorization": f"Basic {token}", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
                return HTTPAnswer(
                    answer.status, dict(answer.headers), answer.read().decode("utf-8")
                )
        except urllib.error.HTTPError as error:
            return HTTPAnswer(error.code, dict(error.headers), error.read().decode("utf-8"))

    def make_calendar(self, user: str, name: str, display_name: str = "") -> str:
        """Create a calendar collection (MKCALENDAR); returns its URL."""
        url = self.calendar_url(user, name)
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            '<C:mkcalendar xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
            "<D:set><D:prop>"
            f"<D:displayname>{display_name or name}</D:displayname>"
            '<C:supported-calendar-component-set><C:comp name="VEVENT"/>'
            "</C:supported-calendar-component-set>"
            "</D:prop></D:set></C:mkcalendar>"
        )
        answer = self.request(
            user, "MKCALENDAR", url, body, {"Content-Type": "application/xml; charset=utf-8"}
        )
        if answer.status not in (200, 201):
            raise RuntimeError(f"MKCALENDAR {url}: {answer.status} {answer.body}")
        return url

    def put(self, user: str, url: str, ics: str, *, etag: str | None = None) -> HTTPAnswer:
        """Store an object as the user's calendar app would (``If-Match`` with ``etag``)."""
        headers = {"Content-Type": "text/calendar; charset=utf-8"}
        if etag is not None:
            headers["If-Match"] = etag
        return self.request(user, "PUT", url, ics, headers)

    def get(self, user: str, url: str) -> HTTPAnswer:
        """Fetch an object as it is stored now."""
        return self.request(user, "GET", url)

    def delete(self, user: str, url: str) -> HTTPAnswer:
        """Delete an object as the user's calendar app would."""
        return self.request(user, "DELETE", url)

    def matches(self, user: str, calendar: str, start: str, end: str) -> list[str]:
        """The hrefs Radicale's own time-range filter finds in ``[start, end)``.

        ``start`` and ``end`` are UTC ``YYYYMMDDTHHMMSSZ``. Radicale expands recurring events
        itself to decide (RFC 4791 §9.9), so this is the server's view of the occurrences.
        """
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            '<C:calendar-query xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
            "<D:prop><D:getetag/></D:prop>"
            '<C:filter><C:comp-filter name="VCALENDAR"><C:comp-filter name="VEVENT">'
            f'<C:time-range start="{start}" end="{end}"/>'
            "</C:comp-filter></C:comp-filter></C:filter></C:calendar-query>"
        )
        answer = self.request(
            user,
            "REPORT",
            calendar,
            body,
            {"Content-Type": "application/xml; charset=utf-8", "Depth": "1"},
        )
        if answer.status != 207:
            raise RuntimeError(f"REPORT {calendar}: {answer.status} {answer.body}")
        return re.findall(r"<(?:\w+:)?href>([^<]+)</(?:\w+:)?href>", answer.body)
