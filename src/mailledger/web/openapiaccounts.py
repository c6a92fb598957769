"""The OpenAPI description of ``/v1/accounts`` (mailbox sync, web/api/accounts.py).

Merged into ``GET /v1/openapi.json`` by web/openapi.py beside the other resources.
"""

from __future__ import annotations

from typing import Any

from mailledger.web.openapiparts import operation
from mailledger.web.openapiresources import (
    _HISTORY,
    _LIMIT,
    _STRINGS,
    _TIME,
    CREATE,
    ONE,
    READ,
    REMOVE,
    WRITE_BODY,
    _body,
    _list,
    _path_param,
    _ref,
)

_ACCOUNT_ID = _path_param("account_id", "The mailbox account's id.", integer=True)
_AUTHSERV_ID = {
    "type": "string",
    "description": "The id the IMAP server's own Authentication-Results begin with "
    "(`account add --authserv-id`): only the topmost header under it is read for the "
    "sender's SPF/DKIM/DMARC. Empty: none is, and every verdict is none. Google and "
    "Microsoft 365 accounts use their provider's id and refuse another.",
}
_STATUSES = ["pending", "syncing", "enabled", "error", "connection", "reconnect"]

ACCOUNT_PATHS: dict[str, Any] = {
    "/v1/accounts": {
        "get": operation(
            "listAccounts",
            "The tenant's mailbox accounts with status, last sync and last error.",
            "The accounts.",
            _list("Account"),
            READ,
        ),
        "post": operation(
            "createAccount",
            "Connect a mailbox with a password (`account add`); OAuth accounts are "
            "connected on the integrations page or with `account add --oauth`.",
            "The new account (pending its first pass).",
            _ref("Account"),
            (*CREATE, 503),
            status=201,
            body=_body(
                {
                    "staff": {"type": "string", "description": "Whose mailbox (username)."},
                    "login": {"type": "string"},
                    "imap": {"type": "string", "description": "HOST or HOST:PORT."},
                    "password": {"type": "string", "writeOnly": True},
                    "security": {"type": "string", "enum": ["tls", "starttls", "none"]},
                    "allow_invalid_cert": {"type": "boolean"},
                    "mode": {"type": "string", "enum": ["sweep", "folder"]},
                    "since": {"type": "string", "enum": ["now", "1m", "3m", "6m"]},
                    "folders": _STRINGS,
                    "source_folder": {"type": "string"},
                    "processed_folder": {"type": "string"},
                    "shared": {"type": "boolean"},
                    "visible_to": _STRINGS,
                    "authserv_id": _AUTHSERV_ID,
                },
                {
                    "staff": "richard",
                    "login": "richard@acme.example",
                    "imap": "127.0.0.1:993",
                    "password": "an app password",
                    "since": "1m",
                },
                ["staff", "login", "imap", "password"],
            ),
        ),
    },
    "/v1/accounts/{account_id}": {
        "parameters": [_ACCOUNT_ID],
        "get": operation(
            "getAccount",
            "One account, with its latest errors (`account show`).",
            "The account.",
            _ref("Account"),
            ONE,
        ),
        "patch": operation(
            "updateAccount",
            "Change whose Authentication-Results the account's mail is judged on "
            "(`account set --authserv-id`); mail already processed keeps its verdicts.",
            "The account.",
            _ref("Account"),
            WRITE_BODY,
            body=_body(
                {"authserv_id": _AUTHSERV_ID},
                {"authserv_id": "mail.acme.com"},
                ["authserv_id"],
            ),
        ),
        "delete": operation(
            "deleteAccount",
            "Disconnect, keeping or removing what it brought in (`account remove`).",
            "What the removal did, counted.",
            _ref("Removal"),
            REMOVE,
            parameters=[_HISTORY],
        ),
    },
    "/v1/accounts/{account_id}/errors": {
        "parameters": [_ACCOUNT_ID],
        "get": operation(
            "listAccountErrors",
            "The account's error log, newest first: when, what, how to fix it.",
            "The errors.",
            _list("AccountError"),
            ONE,
            parameters=[_LIMIT],
        ),
    },
    "/v1/accounts/{account_id}/reconnect": {
        "parameters": [_ACCOUNT_ID],
        "post": operation(
            "reconnectAccount",
            "A new password for a password account (`account reconnect`).",
            "The account, pending its next pass.",
            _ref("Account"),
            (*WRITE_BODY, 503),
            body=_body(
                {"password": {"type": "string", "writeOnly": True}},
                {"password": "the new app password"},
                ["password"],
            ),
        ),
    },
    "/v1/accounts/{account_id}/sync": {
        "parameters": [_ACCOUNT_ID],
        "post": operation(
            "syncAccount",
            "Sync now: the account is due at once and the sync worker runs a pass.",
            "The account, due now.",
            _ref("Account"),
            (401, 403, 404, 409, 422, 429),
            status=202,
        ),
    },
}

ACCOUNT_SCHEMAS: dict[str, Any] = {
    "Account": {
        "type": "object",
        "required": ["id", "staff", "kind", "mode", "status", "login", "host", "port"],
        "properties": {
            "id": {"type": "integer"},
            "tenant": {"type": ["string", "null"]},
            "staff": {"type": ["string", "null"]},
            "kind": {"type": "string", "enum": ["imap", "google", "microsoft"]},
            "mode": {"type": "string", "enum": ["sweep", "folder"]},
            "status": {"type": "string", "enum": _STATUSES},
            "login": {"type": "string"},
            "host": {"type": "string"},
            "port": {"type": "integer"},
            "security": {"type": "string"},
            "allow_invalid_cert": {"type": "boolean"},
            "since": _TIME,
            "folders": _STRINGS,
            "source_folder": {"type": "string"},
            "processed_folder": {"type": "string"},
            "shared": {"type": "boolean"},
            "visible_to": _STRINGS,
            "authserv_id": {
                "type": "string",
                "description": "Plain IMAP: whose Authentication-Results are trusted (empty: "
                "none). Google and Microsoft 365 accounts: empty, their provider's are known.",
            },
            "last_sync": _TIME,
            "last_error": {"type": "string"},
            "status_changed_at": _TIME,
            "retry_at": _TIME,
            "failures": {"type": "integer"},
            "messages_synced": {"type": "integer"},
            "errors": {"type": "integer"},
            "created_at": _TIME,
            "recent_errors": {"type": "array", "items": _ref("AccountError")},
        },
    },
    "AccountError": {
        "type": "object",
        "required": ["at", "status", "what", "fix"],
        "properties": {
            "at": _TIME,
            "status": {"type": "string", "enum": ["error", "reconnect"]},
            "what": {"type": "string"},
            "fix": {"type": "string"},
        },
    },
}
