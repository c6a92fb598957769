"""``/admin/tokens``: the tenant's API tokens: list, create (shown once), revoke.

The same functions as ``mailledger api-token …`` (``store.apitokens``), scoped by the
session's tenant: another tenant's token id is a 404. A new token is shown once, in the
answer to the POST that made it, never in a URL; only its hash is kept.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailledger.store import apitokens
from mailledger.store.models import Tenant
from mailledger.store.websessions import WebIdentity
from mailledger.web.pages.admin.forms import Missing, page, path_id, posted, refused
from mailledger.web.pages.admin.guard import admin_only
from mailledger.web.pages.admin.times import when
from mailledger.web.pages.site import pages_of

MAX_NAME = 200  # ApiToken.name's length
DONE = {"revoked": "Token revoked: the next request with it is refused (401)."}


def _token_rows(session: Session, tenant_id: int) -> list[dict[str, Any]]:
    rows = apitokens.list_tokens(session, session.get_one(Tenant, tenant_id))
    for row in rows:
        for key in ("created_at", "last_used_at", "revoked_at"):
            row[key] = when(row[key])
    # Newest first, the revoked ones after the working ones.
    return sorted(rows, key=lambda r: (r["state"] != "active", -int(r["id"])))


async def _page(
    request: Request, identity: WebIdentity, *, status: int = 200, **values: Any
) -> Response:
    def read(session: Session) -> list[dict[str, Any]]:
        return _token_rows(session, identity.tenant_id)

    rows = await pages_of(request).read(read)
    values.setdefault("error", "")
    values.setdefault("done", DONE.get(request.query_params.get("done", ""), ""))
    values.setdefault("token_name", "")
    values.setdefault("created", None)
    return page(request, identity, "admin/tokens.html", status=status, tokens=rows, **values)


@admin_only
async def tokens_page(request: Request, identity: WebIdentity) -> Response:
    """Every token of the tenant (never the token itself), and the form to make one."""
    return await _page(request, identity)


@admin_only
async def token_create(request: Request, identity: WebIdentity) -> Response:
    """Make a token (``api-token create``); the answer shows it, once."""
    form = await posted(request, identity)
    if form is None:
        return refused(request)
    name = " ".join(form.get("name").split())
    read_only = form.get("read_only") == "on"
    if len(name) > MAX_NAME:
        return await _page(
            request, identity, status=422, token_name=name[:MAX_NAME],
            error=f"name: at most {MAX_NAME} characters (this one has {len(name)})",
        )  # fmt: skip

    def create(session: Session) -> dict[str, Any]:
        tenant = session.get_one(Tenant, identity.tenant_id)
        row, token = apitokens.create_token(session, tenant, name=name, read_only=read_only)
        return {"id": row.id, "name": row.name, "read_only": row.read_only, "token": token}

    created = await pages_of(request).write(create)
    return await _page(request, identity, status=201, created=created)


@admin_only
async def token_revoke(request: Request, identity: WebIdentity) -> Response:
    """Stop a token working (``api-token revoke``); another tenant's id is a 404."""
    pages = pages_of(request)
    token_id = path_id(request, "token_id")
    if token_id is None:
        return pages.not_found()
    if await posted(request, identity) is None:
        return refused(request)

    def revoke(session: Session) -> None:
        tenant = session.get_one(Tenant, identity.tenant_id)
        try:
            apitokens.revoke_token(session, token_id, tenant)
        except apitokens.TokenError as exc:
            raise Missing from exc

    try:
        await pages.write(revoke)
    except Missing:
        return pages.not_found()
    return pages.redirect("/admin/tokens?done=revoked")


ROUTES = [
    Route("/admin/tokens", tokens_page, methods=["GET"]),
    Route("/admin/tokens", token_create, methods=["POST"]),
    Route("/admin/tokens/{token_id:int}/revoke", token_revoke, methods=["POST"]),
]
