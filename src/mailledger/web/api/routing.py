"""Every route of API v1, in one list: the app serves it and the OpenAPI test checks it."""

from __future__ import annotations

from starlette.routing import BaseRoute

from mailledger.web.api import (
    accounts,
    activities,
    companies,
    contacts,
    dnsrecords,
    events,
    messages,
    neverlog,
    outqueue,
    quarantine,
    sending,
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
    *sending.ROUTES,
    *outqueue.ROUTES,
    *dnsrecords.ROUTES,
    *accounts.ROUTES,
    *events.ROUTES,
]
