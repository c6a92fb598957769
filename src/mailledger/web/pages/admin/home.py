"""``/admin``: the tenant admin's start page, one link per admin page."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailledger.store.websessions import WebIdentity
from mailledger.web.pages.admin.guard import admin_only
from mailledger.web.pages.site import pages_of

SECTIONS = [
    ("/admin/staff", "Staff", "Add, disable or remove staff; make an admin."),
    ("/admin/contacts", "Contacts and companies", "Who the capture recognises as a client."),
    ("/admin/never-log", "Never log", "Addresses and domains that are never recorded."),
    ("/admin/quarantine", "Quarantine", "Mail kept aside, with the reason: release or delete."),
    ("/admin/queue", "Outbound queue", "Mail waiting to be delivered, and why."),
    ("/admin/dns", "DNS", "The records to publish, and a live check."),
    ("/admin/webhooks", "Webhooks", "Endpoints, their delivery log, and replay."),
    ("/admin/tokens", "API tokens", "Tokens a CRM uses to read the record."),
    ("/admin/accounts", "Mailbox accounts", "Every synced mailbox: status, errors, shared ones."),
]


@admin_only
async def admin_home(request: Request, identity: WebIdentity) -> Response:
    """The list of admin pages."""
    return pages_of(request).page(
        "admin/home.html", signed_in=True, admin=True, csrf_token=identity.csrf_token,
        sections=SECTIONS,
    )  # fmt: skip


ROUTES = [Route("/admin", admin_home, methods=["GET"])]
