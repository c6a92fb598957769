"""``/v1/accounts`` through real HTTP against the running server: scoped by the token's tenant,
secrets never returned, the same rules as the CLI."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.store import directory
from mailledger.store.mailaccounts import AccountRequest, add_account
from mailledger.store.models import MailboxAccount, Tenant, utcnow
from mailledger.store.secretbox import SecretBox
from mailledger.testing.api import bearer, make_token, running_api

pytestmark = pytest.mark.postgres

# Nothing listens there: the server's sync worker fails fast, on loopback.
IMAP = "127.0.0.1:9"


async def test_accounts_api(
    settings: Settings, sessions: sessionmaker[Session], demo: DemoAddresses
) -> None:
    box = SecretBox.from_file(settings.secrets.key_file)
    with sessions.begin() as session:
        acme = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        token = make_token(session, acme)
        read_only = make_token(session, acme, read_only=True)
        globex = directory.add_tenant(session, "globex", "globex.capture.example")
        directory.add_staff(session, globex, "wile", ["wile@globex.example"])
        other_token = make_token(session, globex)
        theirs = add_account(
            session,
            box,
            AccountRequest(
                tenant=globex, username="wile", login="wile", imap=IMAP, password="theirs"
            ),
            now=utcnow(),
        ).id
    async with (
        running_api(settings) as api,
        httpx.AsyncClient(base_url=api.base_url, timeout=20, headers=bearer(token)) as client,
    ):
        assert (await client.get("/v1/accounts")).json() == {"data": []}
        body = {
            "staff": "richard",
            "login": "richard@acme.example",
            "imap": IMAP,
            "password": "app-password-1",
            "security": "none",
            "since": "3m",
            "folders": ["Projects"],
        }
        created = await client.post("/v1/accounts", json=body)
        assert created.status_code == 201, created.text
        account = created.json()
        assert created.headers["location"] == f"/v1/accounts/{account['id']}"
        assert (account["staff"], account["status"], account["port"]) == ("richard", "pending", 9)
        assert account["folders"] == ["Projects"]
        assert "app-password" not in created.text
        assert "password" not in account and "secret" not in account

        again = await client.post("/v1/accounts", json=body)
        assert again.status_code == 409
        assert "already account" in again.json()["detail"]
        bad = await client.post("/v1/accounts", json={**body, "since": "2y", "login": "x"})
        assert bad.status_code == 422
        assert bad.json()["field"] == "since"
        trash = await client.post("/v1/accounts", json={**body, "folders": ["Trash"], "login": "y"})
        assert (trash.status_code, trash.json()["field"]) == (422, "folders")
        nobody = await client.post("/v1/accounts", json={**body, "staff": "nobody", "login": "z"})
        assert (nobody.status_code, nobody.json()["field"]) == (422, "staff")
        unknown = await client.post("/v1/accounts", json={**body, "oauth": "google"})
        assert unknown.status_code == 422

        path = f"/v1/accounts/{account['id']}"
        shown = (await client.get(path)).json()
        assert shown["id"] == account["id"]
        assert isinstance(shown["recent_errors"], list)
        listed = (await client.get("/v1/accounts")).json()["data"]
        assert [a["id"] for a in listed] == [account["id"]]
        errors = await client.get(f"{path}/errors")
        assert errors.status_code == 200
        assert isinstance(errors.json()["data"], list)

        # Another tenant's account is not found, whatever the operation.
        for method, other in [
            ("GET", f"/v1/accounts/{theirs}"),
            ("GET", f"/v1/accounts/{theirs}/errors"),
            ("POST", f"/v1/accounts/{theirs}/sync"),
            ("DELETE", f"/v1/accounts/{theirs}?history=keep"),
        ]:
            assert (await client.request(method, other)).status_code == 404, other
        denied = await client.post(f"/v1/accounts/{theirs}/reconnect", json={"password": "p"})
        assert denied.status_code == 404
        async with httpx.AsyncClient(
            base_url=api.base_url, timeout=20, headers=bearer(other_token)
        ) as globex_client:
            assert (await globex_client.get(path)).status_code == 404
            theirs_listed = (await globex_client.get("/v1/accounts")).json()["data"]
            assert [a["id"] for a in theirs_listed] == [theirs]

        # A read-only token reads but changes nothing.
        async with httpx.AsyncClient(
            base_url=api.base_url, timeout=20, headers=bearer(read_only)
        ) as reader:
            assert (await reader.get(path)).status_code == 200
            assert (await reader.post(f"{path}/sync")).status_code == 403
            assert (await reader.patch(path, json={"authserv_id": "x.example"})).status_code == 403
            assert (await reader.delete(f"{path}?history=keep")).status_code == 403

        reconnected = await client.post(f"{path}/reconnect", json={"password": "app-password-2"})
        assert reconnected.status_code == 200, reconnected.text
        assert "app-password" not in reconnected.text
        with sessions() as session:
            row = session.get_one(MailboxAccount, account["id"])
            assert box.open(row.secret) == "app-password-2"
        synced = await client.post(f"{path}/sync")
        assert synced.status_code == 202, synced.text

        # Whose Authentication-Results the mail is judged on (`account set --authserv-id`).
        assert account["authserv_id"] == ""
        trusted = await client.patch(path, json={"authserv_id": "Mail.Acme.COM"})
        assert trusted.status_code == 200, trusted.text
        assert trusted.json()["authserv_id"] == "mail.acme.com"
        with sessions() as session:
            assert session.get_one(MailboxAccount, account["id"]).authserv_id == "mail.acme.com"
        wrong = await client.patch(path, json={"authserv_id": "mail.acme.com; dkim=pass"})
        assert (wrong.status_code, wrong.json()["field"]) == (422, "authserv_id")
        assert (await client.patch(path, json={})).status_code == 422
        assert (await client.patch(path, json={"login": "other"})).status_code == 422
        assert (
            await client.patch(f"/v1/accounts/{theirs}", json={"authserv_id": ""})
        ).status_code == 404
        cleared = await client.patch(path, json={"authserv_id": ""})
        assert cleared.json()["authserv_id"] == ""

        assert (await client.delete(path)).status_code == 422  # keep or remove: say which
        removed = await client.delete(f"{path}?history=remove")
        assert removed.status_code == 200
        assert removed.json()["removed"] is True
        assert (await client.get(path)).status_code == 404
