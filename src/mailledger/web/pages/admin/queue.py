"""``/admin/queue``: the tenant's outbound queue, newest first, with each row's last reply.

The rows are what ``queue list`` and ``GET /v1/queue`` show (``store.outbox.list_rows``),
scoped by the session's tenant; the last reply is put in words by ``outbox.reply_in_words``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailledger.store import outbox
from mailledger.store.models import OutboundState
from mailledger.store.websessions import WebIdentity
from mailledger.web.pages.admin.forms import page
from mailledger.web.pages.admin.guard import admin_only
from mailledger.web.pages.admin.times import when
from mailledger.web.pages.site import pages_of

STATES = [state.value for state in OutboundState]
SHOWN = 200


def queue_rows(
    session: Session, tenant_id: int, state: OutboundState | None
) -> list[dict[str, Any]]:
    """The tenant's rows as the page lists them."""
    rows = outbox.list_rows(session, state, limit=SHOWN, tenant_id=tenant_id)
    return [
        {
            "id": row.id,
            "queue_id": row.queue_id,
            "mail_from": row.mail_from or "<>",
            "rcpt_to": list(row.rcpt_to),
            "state": row.state.value,
            "attempts": row.attempts,
            "next_try": when(row.retry_after) if row.state is OutboundState.QUEUED else "",
            "reply": outbox.reply_in_words(row),
            "created_at": when(row.created_at),
        }
        for row in rows
    ]


@admin_only
async def queue_page(request: Request, identity: WebIdentity) -> Response:
    """The queue, optionally in one state (``?state=``)."""
    chosen = request.query_params.get("state", "")
    if chosen and chosen not in STATES:
        return page(
            request, identity, "admin/queue.html", status=400, rows=[], states=STATES,
            chosen="", error=f"state: choose one of {', '.join(STATES)}", shown=SHOWN,
        )  # fmt: skip
    state = OutboundState(chosen) if chosen else None

    def read(session: Session) -> list[dict[str, Any]]:
        return queue_rows(session, identity.tenant_id, state)

    rows = await pages_of(request).read(read)
    return page(
        request, identity, "admin/queue.html", rows=rows, states=STATES, chosen=chosen,
        error="", shown=SHOWN,
    )  # fmt: skip


ROUTES = [Route("/admin/queue", queue_page, methods=["GET"])]
