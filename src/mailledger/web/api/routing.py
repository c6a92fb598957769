"""Every route of API v1, in one list: the app serves it and the OpenAPI test checks it."""

from __future__ import annotations

from starlette.routing import BaseRoute

from mailledger.web.api import (
    activities,
    companies,
    contacts,
    dnsrecords,
    messages,
    neverlog,
    outqueue,
    quarantine,
    staff,
)

API_ROUTES: list[BaseRoute] = [
    *activities.ROUTES,
    *contacts.ROUTES,
    *companies.ROUTES,
    *staff.ROUTES,
    *neverlog.ROUTES,
    *quarantine.ROUTES,
    *messages.ROUTES,
    *outqueue.ROUTES,
    *dnsrecords.ROUTES,
]
