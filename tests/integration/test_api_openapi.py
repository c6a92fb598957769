"""The served OpenAPI document matches the API: every operation called, answers as documented."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.store import calendars, directory
from mailledger.store.mailaccounts import AccountRequest, add_account
from mailledger.store.models import Tenant, utcnow
from mailledger.store.secretbox import SecretBox
from mailledger.testing.api import bearer, insert_activity, make_token, running_api
from mailledger.testing.received import insert_quarantined

METHODS = ("get", "put", "post", "patch", "delete")


def _path(template: str, values: dict[str, Any]) -> str:
    for name, value in values.items():
        template = template.replace("{" + name + "}", str(value))
    assert "{" not in template, f"no value for a parameter of {template}"
    return template


def _body(operation: dict[str, Any]) -> Any:
    content = operation.get("requestBody", {}).get("content", {})
    return content.get("application/json", {}).get("example")


async def test_every_documented_operation_answers_a_documented_status(
    settings: Settings, sessions: sessionmaker[Session], demo: DemoAddresses
) -> None:
    """Each operation, with a token, without one, and for an unknown id, answers only with
    status codes its description lists, and problems as application/problem+json."""
    with sessions.begin() as session:
        acme = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        token = make_token(session, acme)
        activity = insert_activity(session, acme.id)
        staff = directory.find_staff(session, acme, "richard")
        contact = directory.add_contact(session, acme, ["openapi@client.example"]).id
        company = directory.create_company(session, acme, "OpenAPI Co", []).id
        entry = directory.add_never_log(session, acme, "openapi.example").id
        message = insert_quarantined(session, acme, staff)
        account = add_account(
            session,
            SecretBox.from_file(settings.secrets.key_file),
            AccountRequest(
                tenant=acme,
                username="richard",
                login="openapi",
                imap="127.0.0.1:9",
                password="x",
            ),
            now=utcnow(),
        ).id
        calendar = calendars.add_account(
            session,
            SecretBox.from_file(settings.secrets.key_file),
            calendars.CalendarRequest(
                tenant=acme,
                username="richard",
                url="http://127.0.0.1:9/",
                login="openapi",
                password="x",
            ),
            calendar_url="http://127.0.0.1:9/richard/work/",
            calendar_name="Work",
            now=utcnow(),
        )
        event = calendars.add_event(
            session,
            calendar,
            calendars.EventInput(
                summary="OpenAPI", start=utcnow(), end=utcnow() + timedelta(hours=1)
            ),
            utcnow(),
        ).id
    ids: dict[str, Any] = {
        "activity_id": activity,
        "n": 1,
        "contact_id": contact,
        "company_id": company,
        "entry_id": entry,
        "username": "richard",
        "message": message,
        "account_id": account,
        "event_id": event,
        "queue_id": "0123456789ABCDEF0123",  # nobody's: the entry is read in test_api_messages
    }
    unknown = dict.fromkeys(ids, 999999)
    async with (
        running_api(settings) as api,
        httpx.AsyncClient(base_url=api.base_url, timeout=20) as client,
    ):
        response = await client.get("/v1/openapi.json")
        assert response.status_code == 200
        document = response.json()
        assert document["openapi"].startswith("3.")
        calls = 0
        for template, item in document["paths"].items():
            for method in METHODS:
                operation = item.get(method)
                if operation is None:
                    continue
                documented = set(operation["responses"])
                public = operation.get("security") == []
                variants = [
                    (ids, bearer(token)),
                    (unknown, bearer(token)),
                    (ids, {}),
                ]
                for values, headers in variants:
                    answer = await client.request(
                        method.upper(),
                        _path(template, values),
                        json=_body(operation),
                        headers=headers,
                    )
                    calls += 1
                    where = f"{method.upper()} {template} {values} {bool(headers)}"
                    assert str(answer.status_code) in documented, (
                        f"{where}: {answer.status_code} is not documented: {answer.text}"
                    )
                    if answer.status_code >= 400:
                        assert answer.headers["content-type"].startswith(
                            "application/problem+json"
                        ), where
                    if not headers and not public:
                        assert answer.status_code == 401, where
        assert calls >= 15


def test_every_route_is_documented() -> None:
    """No route of the app is missing from the document (and none documented is missing)."""
    from starlette.routing import Route

    from mailledger.web.api.routing import API_ROUTES
    from mailledger.web.openapi import ROUTES, document

    served = set()
    for route in [*API_ROUTES, *ROUTES]:
        assert isinstance(route, Route)
        path = route.path.replace(":int}", "}")
        for method in route.methods or ():
            if method != "HEAD":
                served.add((path, method.lower()))
    described = {
        (path, method)
        for path, item in document()["paths"].items()
        for method in METHODS
        if method in item
    }
    assert served == described


pytestmark = pytest.mark.postgres
