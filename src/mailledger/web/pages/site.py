"""What every page needs: the store, the settings, the templates, and the headers pages carry.

Every page answer goes through :meth:`PagesContext.page` or :meth:`PagesContext.redirect`,
which add the security headers: a strict Content-Security-Policy (our own scripts and styles
only, no inline script), no framing, no referrer leaving the site, no MIME sniffing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.engine import reading
from mailledger.web.pages.limits import PageLimits

_T = TypeVar("_T")

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    # Pages hold addresses and sign-in state: no shared cache keeps them.
    "Cache-Control": "no-store",
}


def templates() -> Environment:
    """The page templates, autoescaped: nothing from mail reaches a page as markup."""
    return Environment(
        loader=PackageLoader("mailledger.web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def secure(response: Response) -> Response:
    """Add the headers every page carries."""
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response


@dataclass
class PagesContext:
    """The store and settings behind the pages."""

    sessions: sessionmaker[Session]
    blobs: BlobBackend
    settings: Settings
    env: Environment = field(default_factory=templates)
    limits: PageLimits = field(default_factory=PageLimits)
    _resolver: Resolver | None = None

    @property
    def base_url(self) -> str:
        """``[http] public_url``: the base of every link we mail."""
        return self.settings.http.public_url

    @property
    def secure_cookies(self) -> bool:
        """Cookies are ``Secure`` whenever the public URL is https (behind the TLS proxy)."""
        return self.base_url.startswith("https://")

    @property
    def resolver(self) -> Resolver:
        """The DNS resolver signing uses, made on first need."""
        if self._resolver is None:
            self._resolver = Resolver(self.settings.dns)
        return self._resolver

    def page(self, name: str, status: int = 200, **values: Any) -> Response:
        """A rendered template with the security headers."""
        html = self.env.get_template(name).render(**values)
        return secure(HTMLResponse(html, status_code=status))

    def redirect(self, url: str) -> Response:
        """A 303 to ``url`` (after a POST, the browser GETs it), with the security headers."""
        return secure(RedirectResponse(url, status_code=303))

    def not_found(self) -> Response:
        """The same 404 for what does not exist and for what belongs to someone else."""
        return self.page("notfound.html", status=404, signed_in=True)

    async def read(self, work: Callable[[Session], _T]) -> _T:
        """Run ``work`` in a reading session, in the thread pool."""

        def run() -> _T:
            with reading(self.sessions) as session:
                return work(session)

        return await run_in_threadpool(run)

    async def write(self, work: Callable[[Session], _T]) -> _T:
        """Run ``work`` in one committed transaction, in the thread pool."""

        def run() -> _T:
            with self.sessions.begin() as session:
                return work(session)

        return await run_in_threadpool(run)


def pages_of(request: Request) -> PagesContext:
    """The context the app was built with."""
    found: PagesContext = request.app.state.pages
    return found
