"""The Starlette application: the API's routes, their error shape, and what they run on."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from mailledger.config import HTTPSettings
from mailledger.store.blobs import BlobStore
from mailledger.web.api import activities
from mailledger.web.context import ApiContext
from mailledger.web.openapi import ROUTES as OPENAPI_ROUTES
from mailledger.web.problems import ProblemError, on_error, on_http_exception, on_problem
from mailledger.web.ratelimit import RateLimiter


def build_app(
    sessions: sessionmaker[Session], blobs: BlobStore, settings: HTTPSettings
) -> Starlette:
    """The HTTP application serve() runs; every error it gives is a problem document."""
    app = Starlette(
        routes=[*activities.ROUTES, *OPENAPI_ROUTES],
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
    return app
