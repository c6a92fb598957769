"""Every page route, and the static files (CSS, the copy-button script) they use."""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from mailledger.web.pages import integrations, signin

ROUTES: list[BaseRoute] = [
    *signin.ROUTES,
    *integrations.ROUTES,
    Mount("/static", StaticFiles(packages=[("mailledger.web", "static")]), name="static"),
]
