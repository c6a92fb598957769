"""The Starlette application: the API's routes, their error shape, and what they run on."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from mailledger.config import HTTPSettings, Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.relay.outgoing import StaffSender
from mailledger.store.blobbackend import BlobBackend
from mailledger.web.api.routing import API_ROUTES
from mailledger.web.context import ApiContext
from mailledger.web.openapi import ROUTES as OPENAPI_ROUTES
from mailledger.web.pages.routes import ROUTES as PAGE_ROUTES
from mailledger.web.pages.site import PagesContext
from mailledger.web.problems import ProblemError, on_error, on_http_exception, on_problem
from mailledger.web.ratelimit import RateLimiter


def build_app(
    sessions: sessionmaker[Session],
    blobs: BlobBackend,
    settings: HTTPSettings,
    *,
    site: Settings | None = None,
    on_queued: Sequence[Callable[[], None]] = (),
) -> Starlette:
    """The HTTP application serve() runs; every API error it gives is a problem document.

    With ``site`` (the whole configuration: the relay and service settings the sign-in mail
    and the integrations page need) the web pages are served too, and mail can be sent
    through the relay (``POST /v1/messages``); ``on_queued`` wake the workers that take it on.
    """
    pages = [] if site is None else PAGE_ROUTES
    app = Starlette(
        routes=[*API_ROUTES, *OPENAPI_ROUTES, *pages],
        exception_handlers={
            ProblemError: on_problem,
            HTTPException: on_http_exception,
            Exception: on_error,
        },
    )
    app.state.api = ApiContext(
        sessions=sessions,
        blobs=blobs,
        settings=settings,
        limiter=RateLimiter(settings.rate_limit_per_minute),
    )
    # The DNS routes need the whole configuration too (web/api/dnsrecords.py).
    app.state.site = site
    # POST /v1/messages hands mail to the relay as submission does (relay/outgoing.py).
    app.state.on_queued = list(on_queued)
    app.state.staff_sender = (
        None if site is None else StaffSender(sessions, blobs, site, Resolver(site.dns))
    )
    if site is not None:
        app.state.pages = PagesContext(sessions=sessions, blobs=blobs, settings=site)
    return app
