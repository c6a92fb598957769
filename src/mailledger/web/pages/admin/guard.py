"""Who may open an admin page: a signed-in tenant admin, and nobody else.

A signed-in staff member who is not an admin gets the same 404 as a page that does not exist:
the admin pages' existence is not confirmed to them (DESIGN §11).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from mailledger.store.websessions import WebIdentity
from mailledger.web.pages.identity import current
from mailledger.web.pages.site import pages_of

AdminView = Callable[[Request, WebIdentity], Awaitable[Response]]


def admin_only(view: AdminView) -> Callable[[Request], Awaitable[Response]]:
    """Wrap ``view`` so it runs only for a tenant admin's session.

    Signed out: to the sign-in page. Signed in but not an admin: 404.
    """

    async def guarded(request: Request) -> Response:
        pages = pages_of(request)
        identity = await current(request)
        if identity is None:
            return pages.redirect("/signin")
        if not identity.admin:
            return pages.not_found()
        return await view(request, identity)

    guarded.__name__ = view.__name__
    guarded.__doc__ = view.__doc__
    return guarded
