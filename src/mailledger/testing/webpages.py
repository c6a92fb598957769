"""The web pages in tests: the HTTP server on its own loop, and Debian's headless Chromium.

Debian's chromium is driven through Playwright (a test dependency; never ``playwright
install``, which would download browsers of its own). Playwright is imported only when a
browser is launched, so this module loads where it is not installed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from mailledger.config import Settings
from mailledger.store import websessions
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.models import Staff
from mailledger.web.app import build_app
from mailledger.web.serving import HTTPServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


class RunningPages:
    """The HTTP server with the pages, on its own event loop in a thread, on a loopback port."""

    def __init__(self, sessions: sessionmaker[Session], blobs: BlobBackend, settings: Settings):
        self.app = build_app(sessions, blobs, settings.http, site=settings)
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = HTTPServer(self.app, "127.0.0.1:0", trusted_proxies=[], grace_seconds=1)
        self.url = ""

    def __enter__(self) -> RunningPages:
        self.thread.start()
        host, port = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.url = f"http://{host}:{port}"
        # Mailed links must point at this server: its port is known only now.
        http = self.settings.http.model_copy(update={"public_url": self.url})
        self.app.state.pages.settings = self.settings.model_copy(update={"http": http})
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Browser:
    """One Chromium page, with what it said on the console and what it threw."""

    page: Any
    shots: Path
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def shot(self, name: str) -> Path:
        """A full-page screenshot under the test's directory."""
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@contextmanager
def chromium_page(shots: Path, *, width: int = 1000, height: int = 900) -> Iterator[Browser]:
    """Headless Debian Chromium with one page; console messages and page errors collected."""
    from playwright import sync_api  # noqa: PLC0415 - a test dependency, loaded on use

    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = chromium.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        found = Browser(page, shots)
        page.on("console", lambda m: found.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: found.errors.append(str(e)))
        try:
            yield found
        finally:
            context.close()
            chromium.close()


def signin_link(sessions: sessionmaker[Session], base_url: str, staff_id: int) -> str:
    """A fresh one-time sign-in link for a staff member, as ``web link`` prints it."""
    with sessions.begin() as session:
        token = websessions.create_link(session, session.get_one(Staff, staff_id))
    return f"{base_url}/signin/{token}"


def sign_in(browser: Browser, link: str) -> None:
    """Open a sign-in link and press its button: the browser holds a session afterwards."""
    browser.page.goto(link)
    browser.page.click("#continue")
    browser.page.wait_for_url("**/integrations")
