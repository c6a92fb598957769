"""What every route needs, built once by the app: sessions, blobs, links, the rate limiter."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from mailledger.config import HTTPSettings
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.engine import reading
from mailledger.web.ratelimit import RateLimiter

_T = TypeVar("_T")


@dataclass
class ApiContext:
    """The store behind the API and how the API presents itself."""

    sessions: sessionmaker[Session]
    blobs: BlobBackend
    settings: HTTPSettings
    limiter: RateLimiter

    @property
    def base_url(self) -> str:
        """``[http] public_url``: the base of every link in an answer."""
        return self.settings.public_url

    async def read(self, work: Callable[[Session], _T]) -> _T:
        """Run ``work`` in a reading session, in the thread pool (the loop serves SMTP too)."""

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


def context_of(request: Request) -> ApiContext:
    """The context the app was built with."""
    found: ApiContext = request.app.state.api
    return found
