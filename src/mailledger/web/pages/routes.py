"""Every page route, and the static files (CSS, the copy-button script) they use."""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from mailledger.web.pages import (
    accounts,
    accountsignin,
    activity,
    calendar,
    integrationactions,
    integrations,
    signin,
    timeline,
)
from mailledger.web.pages.admin import accounts as admin_accounts
from mailledger.web.pages.admin import dns as admin_dns
from mailledger.web.pages.admin import home as admin_home
from mailledger.web.pages.admin import neverlog as admin_neverlog
from mailledger.web.pages.admin import parties as admin_parties
from mailledger.web.pages.admin import quarantine as admin_quarantine
from mailledger.web.pages.admin import queue as admin_queue
from mailledger.web.pages.admin import staff as admin_staff
from mailledger.web.pages.admin import tokens as admin_tokens
from mailledger.web.pages.admin import webhooks as admin_webhooks

ROUTES: list[BaseRoute] = [
    *signin.ROUTES,
    *integrations.ROUTES,
    *integrationactions.ROUTES,
    *accounts.ROUTES,
    *accountsignin.ROUTES,
    *activity.ROUTES,
    *timeline.ROUTES,
    *calendar.ROUTES,
    *admin_home.ROUTES,
    *admin_staff.ROUTES,
    *admin_parties.ROUTES,
    *admin_neverlog.ROUTES,
    *admin_quarantine.ROUTES,
    *admin_queue.ROUTES,
    *admin_dns.ROUTES,
    *admin_webhooks.ROUTES,
    *admin_tokens.ROUTES,
    *admin_accounts.ROUTES,
    Mount("/static", StaticFiles(packages=[("mailledger.web", "static")]), name="static"),
]
