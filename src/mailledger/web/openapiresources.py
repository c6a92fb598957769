"""The OpenAPI description of API v1's resources beside activities: contacts, companies, staff,
never-log entries, quarantine, received messages, the outbound queue and DNS.

Merged into ``GET /v1/openapi.json`` by web/openapi.py; tests/integration/test_api_openapi.py
calls every operation and holds each answer to the codes listed here.
"""

from __future__ import annotations

from typing import Any

from mailledger.web.api.common import DEFAULT_PAGE, MAX_ID, MAX_PAGE

_TEXT = {
    400: "The body is not JSON.",
    401: "No token, or not a valid one (WWW-Authenticate: Bearer).",
    403: "The token is read-only.",
    404: "Not found in the token's tenant (another tenant's ids are not found either).",
    409: "The change conflicts with what is there (`detail` says what).",
    413: "Larger than the relay's message size limit ([capture] max_message_bytes).",
    415: "The body is not application/json.",
    422: "A parameter or body field is wrong or missing; `field` names it.",
    429: "Over the token's rate limit; see Retry-After.",
    502: "DNS failed (time-out, SERVFAIL): nothing is known to be wrong; `results` has each.",
    503: "The server was started without the configuration this needs.",
}
READ = (401, 422, 429)
ONE = (401, 404, 422, 429)
WRITE_BODY = (400, 401, 403, 404, 409, 415, 422, 429)
CREATE = (400, 401, 403, 409, 415, 422, 429)
REMOVE = (401, 403, 404, 409, 422, 429)


def _problems(*codes: int) -> dict[str, Any]:
    problem = {"$ref": "#/components/responses/Problem"}
    return {str(c): {**problem, "description": _TEXT[c]} for c in codes}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(description: str, schema: dict[str, Any], status: int = 200) -> dict[str, Any]:
    return {
        str(status): {
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    }


def _list(name: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "array", "items": _ref(name)}},
    }


def _path_param(name: str, description: str, *, integer: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = (
        {"type": "integer", "minimum": 1, "maximum": MAX_ID} if integer else {"type": "string"}
    )
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", **schema},
    }


def _body(
    properties: dict[str, Any], example: dict[str, Any], required: list[str]
) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": required,
                    "additionalProperties": False,
                    "properties": properties,
                },
                "example": example,
            }
        },
    }


_STRINGS = {"type": "array", "items": {"type": "string"}}
_LIMIT = _query(
    "limit", f"Rows per page (default {DEFAULT_PAGE}, at most {MAX_PAGE}).", pattern="^[0-9]+$"
)
_HISTORY = {
    "name": "history",
    "in": "query",
    "required": True,
    "description": "keep: the activities stay; remove: delete those no one else took part in, "
    "and their raw mail (the CLI's --keep-history / --remove-history).",
    "schema": {"type": "string", "enum": ["keep", "remove"]},
}
_CONTACT_ID = _path_param("contact_id", "The contact's id.", integer=True)
_COMPANY_ID = _path_param("company_id", "The company's id.", integer=True)
_USERNAME = _path_param("username", "The staff member's username.")
_ENTRY_ID = _path_param("entry_id", "The never-log entry's id.", integer=True)
_MESSAGE = _path_param(
    "message", "Row number, queue ID or Message-ID (`<…>` optional), as the CLI takes."
)
_REMOVAL = _ok("What the removal did, counted.", _ref("Removal"))

RESOURCE_PATHS: dict[str, Any] = {
    "/v1/contacts": {
        "get": {
            "operationId": "listContacts",
            "summary": "A page of the tenant's contacts by id.",
            "parameters": [
                _query("after", "The `next` of the previous page.", pattern="^[0-9]*$"),
                _LIMIT,
            ],
            "responses": {
                **_ok(
                    "Contacts after `after`; `next` is the last id (the same when nothing is new).",
                    {
                        "type": "object",
                        "required": ["data", "next"],
                        "properties": {
                            "data": {"type": "array", "items": _ref("Contact")},
                            "next": {"type": "string"},
                        },
                    },
                ),
                **_problems(*READ),
            },
        },
        "post": {
            "operationId": "createContact",
            "summary": "Add a contact (`contact add`).",
            "requestBody": _body(
                {
                    "addresses": _STRINGS,
                    "name": {"type": "string"},
                    "company": {"type": ["string", "null"]},
                },
                {"addresses": ["dana@client.example"], "name": "Dana", "company": "Client Co"},
                ["addresses"],
            ),
            "responses": {**_ok("The new contact.", _ref("Contact"), 201), **_problems(*CREATE)},
        },
    },
    "/v1/contacts/{contact_id}": {
        "parameters": [_CONTACT_ID],
        "get": {
            "operationId": "getContact",
            "summary": "One contact.",
            "responses": {**_ok("The contact.", _ref("Contact")), **_problems(*ONE)},
        },
        "patch": {
            "operationId": "updateContact",
            "summary": 'Change name, company ("" for none) or addresses (`contact set`).',
            "requestBody": _body(
                {
                    "name": {"type": "string"},
                    "company": {"type": "string"},
                    "add_addresses": _STRINGS,
                    "remove_addresses": _STRINGS,
                },
                {"name": "Dana Client"},
                [],
            ),
            "responses": {**_ok("The contact.", _ref("Contact")), **_problems(*WRITE_BODY)},
        },
        "delete": {
            "operationId": "removeContact",
            "summary": "Remove a contact, keeping or removing its history (`contact remove`).",
            "parameters": [_HISTORY],
            "responses": {**_REMOVAL, **_problems(*REMOVE)},
        },
    },
    "/v1/companies": {
        "get": {
            "operationId": "listCompanies",
            "summary": "Every company of the tenant, by name.",
            "responses": {**_ok("The companies.", _list("CompanySummary")), **_problems(*READ)},
        },
        "post": {
            "operationId": "createCompany",
            "summary": "Add a company with its domains (free-mail domains are refused).",
            "requestBody": _body(
                {"name": {"type": "string"}, "domains": _STRINGS},
                {"name": "Initech", "domains": ["initech.example"]},
                ["name"],
            ),
            "responses": {**_ok("The new company.", _ref("Company"), 201), **_problems(*CREATE)},
        },
    },
    "/v1/companies/{company_id}": {
        "parameters": [_COMPANY_ID],
        "get": {
            "operationId": "getCompany",
            "summary": "One company with its contacts.",
            "responses": {**_ok("The company.", _ref("Company")), **_problems(*ONE)},
        },
        "patch": {
            "operationId": "updateCompany",
            "summary": "Rename, or add and remove domains (`company set`).",
            "requestBody": _body(
                {"name": {"type": "string"}, "add_domains": _STRINGS, "remove_domains": _STRINGS},
                {"add_domains": ["client-co.example"]},
                [],
            ),
            "responses": {**_ok("The company.", _ref("Company")), **_problems(*WRITE_BODY)},
        },
        "delete": {
            "operationId": "removeCompany",
            "summary": "Delete a company and its domains; its contacts stay, without one.",
            "responses": {
                **_ok("What was removed.", {"type": "object"}),
                **_problems(*REMOVE),
            },
        },
    },
    "/v1/staff": {
        "get": {
            "operationId": "listStaff",
            "summary": "Every staff member of the tenant, by username.",
            "responses": {**_ok("The staff.", _list("Staff")), **_problems(*READ)},
        },
        "post": {
            "operationId": "createStaff",
            "summary": "Add a staff member (`staff add`); the answer has the capture address.",
            "requestBody": _body(
                {
                    "username": {"type": "string"},
                    "addresses": _STRINGS,
                    "name": {"type": "string"},
                    "primary_address": {"type": "string"},
                },
                {"username": "bob", "addresses": ["bob@acme.example"], "name": "Bob"},
                ["username", "addresses"],
            ),
            "responses": {**_ok("The new staff member.", _ref("Staff"), 201), **_problems(*CREATE)},
        },
    },
    "/v1/staff/{username}": {
        "parameters": [_USERNAME],
        "get": {
            "operationId": "getStaff",
            "summary": "One staff member (a removed one too).",
            "responses": {**_ok("The staff member.", _ref("Staff")), **_problems(*ONE)},
        },
        "patch": {
            "operationId": "updateStaff",
            "summary": "Change name, addresses, admin; `disabled` refuses the capture address.",
            "requestBody": _body(
                {
                    "name": {"type": "string"},
                    "primary_address": {"type": "string"},
                    "add_addresses": _STRINGS,
                    "remove_addresses": _STRINGS,
                    "admin": {"type": "boolean"},
                    "disabled": {"type": "boolean"},
                    "signature_text": {"type": "string", "maxLength": 10000},
                    "signature_html": {"type": "string", "maxLength": 10000},
                },
                {"name": "Richard S."},
                [],
            ),
            "responses": {**_ok("The staff member.", _ref("Staff")), **_problems(*WRITE_BODY)},
        },
        "delete": {
            "operationId": "removeStaff",
            "summary": "Remove one who left, keeping or removing the history (`staff remove`).",
            "parameters": [_HISTORY],
            "responses": {**_REMOVAL, **_problems(*REMOVE)},
        },
    },
    "/v1/never-log": {
        "get": {
            "operationId": "listNeverLog",
            "summary": "Every never-log entry, or one staff member's.",
            "parameters": [_query("staff", "Only this staff member's list.")],
            "responses": {**_ok("The entries.", _list("NeverLog")), **_problems(*READ)},
        },
        "post": {
            "operationId": "createNeverLog",
            "summary": "Never record mail with this address or domain (tenant-wide or `staff`).",
            "requestBody": _body(
                {"pattern": {"type": "string"}, "staff": {"type": ["string", "null"]}},
                {"pattern": "hr.example"},
                ["pattern"],
            ),
            "responses": {**_ok("The entry.", _ref("NeverLog"), 201), **_problems(*CREATE)},
        },
    },
    "/v1/never-log/{entry_id}": {
        "parameters": [_ENTRY_ID],
        "get": {
            "operationId": "getNeverLog",
            "summary": "One entry.",
            "responses": {**_ok("The entry.", _ref("NeverLog")), **_problems(*ONE)},
        },
        "delete": {
            "operationId": "removeNeverLog",
            "summary": "Take the entry off its list: that mail is recorded again.",
            "responses": {**_ok("What was removed.", {"type": "object"}), **_problems(*REMOVE)},
        },
    },
    "/v1/quarantine": {
        "get": {
            "operationId": "listQuarantine",
            "summary": "Quarantined messages routed to the tenant, newest first, with the reason.",
            "parameters": [_LIMIT],
            "responses": {
                **_ok(
                    "Up to `limit` messages, and how many there are.",
                    {
                        "type": "object",
                        "required": ["data", "total"],
                        "properties": {
                            "data": {"type": "array", "items": _ref("Message")},
                            "total": {"type": "integer"},
                        },
                    },
                ),
                **_problems(*READ),
            },
        },
    },
    "/v1/quarantine/{message}": {
        "parameters": [_MESSAGE],
        "get": {
            "operationId": "getQuarantined",
            "summary": "One quarantined message with its trace.",
            "responses": {**_ok("The message.", _ref("Message")), **_problems(*ONE)},
        },
        "delete": {
            "operationId": "deleteQuarantined",
            "summary": "Delete it for good, and its raw bytes unless shared.",
            "responses": {**_ok("What was deleted.", {"type": "object"}), **_problems(*REMOVE)},
        },
    },
    "/v1/quarantine/{message}/release": {
        "parameters": [_MESSAGE],
        "post": {
            "operationId": "releaseQuarantined",
            "summary": "Process it again; `force=true` records it despite the policy.",
            "parameters": [
                _query("force", "true: record it regardless (`--force`).", enum=["true", "false"])
            ],
            "responses": {
                **_ok("Released; the worker picks it up.", _ref("Message"), 202),
                **_problems(*REMOVE),
            },
        },
    },
    "/v1/messages/{message}": {
        "parameters": [_MESSAGE],
        "get": {
            "operationId": "getMessage",
            "summary": "One received message: session facts, state, reason, routes and trace.",
            "responses": {**_ok("The message.", _ref("Message")), **_problems(*ONE)},
        },
    },
    "/v1/messages/{message}/trace": {
        "parameters": [_MESSAGE],
        "get": {
            "operationId": "getMessageTrace",
            "summary": "What each processing step decided, and why.",
            "responses": {
                **_ok("The trace, oldest first.", _list("TraceEntry")),
                **_problems(*ONE),
            },
        },
    },
    "/v1/messages": {
        "post": {
            "operationId": "sendMessage",
            "summary": "Send mail as a staff member through the relay, with their signature.",
            "description": "Composed here (our Message-ID in the From domain, Date, "
            "In-Reply-To and References of `in_reply_to`), then checked, DKIM-signed, queued "
            "and recorded as one outbound activity exactly as if the staff member had "
            "submitted it over SMTP. From is the staff member's primary address unless "
            "`from` names another of their addresses; it must be on a verified customer "
            "domain of the tenant. `Location` is where the queue state is read.",
            "requestBody": _body(
                {
                    "staff": {"type": "string", "description": "The staff member's username."},
                    "from": {"type": "string", "description": "One of their own addresses."},
                    "to": _STRINGS,
                    "cc": _STRINGS,
                    "bcc": _STRINGS,
                    "subject": {"type": "string"},
                    "text": {"type": "string"},
                    "html": {"type": "string"},
                    "attachments": {"type": "array", "items": _ref("OutgoingAttachment")},
                    "in_reply_to": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_ID,
                        "description": "The activity this answers.",
                    },
                },
                {
                    "staff": "richard",
                    "to": ["Carol Client <carol@client.example>"],
                    "subject": "Your quote",
                    "text": "Hello Carol,\n\nthe quote is attached.\n",
                    "attachments": [
                        {
                            "name": "quote.txt",
                            "content_type": "text/plain",
                            "content": "UXVvdGU6IDQyIEVVUgo=",
                        }
                    ],
                },
                ["staff", "subject"],
            ),
            "responses": {
                "202": {
                    "description": "Queued; `Location` is the queue entry (`GET /v1/queue/{id}`).",
                    "headers": {"Location": {"schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": _ref("Queued")}},
                },
                **_problems(400, 401, 403, 404, 413, 415, 422, 429, 503),
            },
        },
    },
    "/v1/queue/{queue_id}": {
        "parameters": [_path_param("queue_id", "The queue id (or one row's id), as `queue show`.")],
        "get": {
            "operationId": "getQueued",
            "summary": "One queued message: a row per recipient domain, with state and results.",
            "responses": {
                **_ok(
                    "The rows.",
                    {
                        "type": "object",
                        "required": ["queue_id", "data"],
                        "properties": {
                            "queue_id": {"type": "string"},
                            "data": {"type": "array", "items": _ref("QueueRow")},
                        },
                    },
                ),
                **_problems(*ONE),
            },
        },
    },
    "/v1/queue": {
        "get": {
            "operationId": "listQueue",
            "summary": "The tenant's outbound queue rows, newest first.",
            "parameters": [
                _query(
                    "state",
                    "Only rows in this state.",
                    enum=["queued", "held", "delivered", "bounced", "expired"],
                ),
                _LIMIT,
            ],
            "responses": {**_ok("The rows.", _list("QueueRow")), **_problems(*READ)},
        },
    },
    "/v1/dns/records": {
        "get": {
            "operationId": "getDnsRecords",
            "summary": "The records the tenant's DNS admin publishes; each domain's last check.",
            "description": (
                "`data` has the records to publish; `domains` has each customer domain, then the "
                "capture domain, with `last_check`: the last live check of that domain, whichever "
                "way it ran (`mailledger dns check`, `POST /v1/dns/check`, the admin DNS page), "
                "or null when it was never checked. It is kept in the database, one per domain, "
                "replaced by the next check."
            ),
            "responses": {
                **_ok(
                    "The records, and the domains with their last check.",
                    {
                        "type": "object",
                        "required": ["data", "domains"],
                        "properties": {
                            "data": {"type": "array", "items": _ref("DnsRecord")},
                            "domains": {"type": "array", "items": _ref("DnsDomain")},
                        },
                    },
                ),
                **_problems(*READ, 503),
            },
        },
    },
    "/v1/dns/check": {
        "post": {
            "operationId": "checkDns",
            "summary": "Look every record up now: 200 with `ok`, or 502 when DNS failed.",
            "parameters": [_query("domain", "Only this customer domain's records.")],
            "responses": {
                **_ok(
                    "Each record's verdict; `ok` is false when one is missing or wrong.",
                    {
                        "type": "object",
                        "required": ["ok", "data"],
                        "properties": {
                            "ok": {"type": "boolean"},
                            "data": {"type": "array", "items": _ref("DnsCheck")},
                        },
                    },
                ),
                **_problems(*READ, 502, 503),
            },
        },
    },
}

_TIME = {"type": ["string", "null"], "format": "date-time"}

RESOURCE_SCHEMAS: dict[str, Any] = {
    "Contact": {
        "type": "object",
        "required": ["id", "name", "company", "addresses"],
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "company": {"type": ["string", "null"]},
            "addresses": _STRINGS,
            "activities": {"type": "integer", "description": "Single contact only."},
        },
    },
    "CompanySummary": {
        "type": "object",
        "required": ["id", "name", "domains", "contacts"],
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "domains": _STRINGS,
            "contacts": {"type": "integer"},
        },
    },
    "Company": {
        "type": "object",
        "required": ["id", "name", "domains", "contacts"],
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "domains": _STRINGS,
            "contacts": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Staff": {
        "type": "object",
        "required": ["id", "username", "capture_address", "addresses", "state"],
        "properties": {
            "id": {"type": "integer"},
            "username": {"type": "string"},
            "name": {"type": "string"},
            "capture_address": {"type": "string"},
            "primary_address": {"type": "string"},
            "addresses": _STRINGS,
            "state": {"type": "string"},
            "admin": {"type": "boolean"},
            "disabled_at": _TIME,
            "removed_at": _TIME,
            "signature_text": {"type": "string", "description": "Single staff member only."},
            "signature_html": {"type": "string", "description": "Single staff member only."},
            "forwarding": {
                "type": "object",
                "description": "Whether forwarding works: state `never checked`, `waiting`, "
                "`expired`, `proven` or `broken`; `since` when that began; `reason` why it "
                "broke (`no-return`: a recheck did not come back, `silence`: no forwarded mail "
                "while the member sends mail).",
                "properties": {
                    "state": {"type": "string"},
                    "since": _TIME,
                    "reason": {"type": "string"},
                },
            },
        },
    },
    "NeverLog": {
        "type": "object",
        "required": ["id", "pattern", "kind", "staff"],
        "properties": {
            "id": {"type": "integer"},
            "pattern": {"type": "string"},
            "kind": {"type": "string", "enum": ["address", "domain"]},
            "staff": {"type": ["string", "null"]},
        },
    },
    "Removal": {
        "type": "object",
        "required": ["history"],
        "properties": {"history": {"type": "string", "enum": ["keep", "remove"]}},
        "description": "Counts: activities kept, deleted and trimmed, messages and blobs deleted.",
    },
    "Message": {
        "type": "object",
        "required": ["id", "queue_id", "state", "reason", "mail_from", "rcpt_to", "received_at"],
        "properties": {
            "id": {"type": "integer"},
            "queue_id": {"type": "string"},
            "state": {"type": "string", "enum": ["received", "processed", "quarantined", "failed"]},
            "reason": {"type": "string"},
            "mail_from": {"type": "string"},
            "rcpt_to": _STRINGS,
            "message_id": {"type": ["string", "null"]},
            "received_at": {"type": "string", "format": "date-time"},
            "routes": {"type": "array", "items": {"type": "object"}},
            "trace": {"type": "array", "items": {"$ref": "#/components/schemas/TraceEntry"}},
        },
    },
    "TraceEntry": {
        "type": "object",
        "required": ["time", "step", "decision", "detail"],
        "properties": {
            "time": _TIME,
            "step": {"type": "string"},
            "decision": {"type": "string"},
            "detail": {"type": "string"},
        },
    },
    "QueueRow": {
        "type": "object",
        "required": ["id", "queue_id", "state", "domain", "rcpt_to", "attempts"],
        "properties": {
            "id": {"type": "integer"},
            "queue_id": {"type": "string"},
            "kind": {"type": "string"},
            "state": {"type": "string"},
            "domain": {"type": "string"},
            "rcpt_to": _STRINGS,
            "attempts": {"type": "integer"},
            "next_try": _TIME,
            "last_error": {"type": "string"},
            "results": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Queued": {
        "type": "object",
        "required": ["queue_id", "message_id"],
        "properties": {
            "queue_id": {"type": "string"},
            "message_id": {"type": "string", "description": "Without the angle brackets."},
        },
    },
    "OutgoingAttachment": {
        "type": "object",
        "required": ["name", "content_type", "content"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "content_type": {"type": "string", "example": "application/pdf"},
            "content": {"type": "string", "contentEncoding": "base64"},
        },
    },
    "DnsRecord": {
        "type": "object",
        "required": ["kind", "name", "type", "value", "zone"],
        "properties": {
            "kind": {"type": "string"},
            "name": {"type": "string"},
            "type": {"type": "string"},
            "value": {"type": "string"},
            "note": {"type": "string"},
            "zone": {"type": "string", "description": "The record as a zone-file line."},
        },
    },
    "DnsCheck": {
        "type": "object",
        "required": ["kind", "domain", "name", "status", "reason", "fix", "lookup_failed"],
        "properties": {
            "kind": {"type": "string"},
            "domain": {"type": "string"},
            "name": {"type": "string"},
            "status": {"type": "string", "enum": ["ok", "missing", "wrong", "error"]},
            "reason": {"type": "string"},
            "fix": {"type": "string"},
            "lookup_failed": {
                "type": "boolean",
                "description": "DNS did not answer (time-out, SERVFAIL): nothing is known wrong.",
            },
        },
    },
    "DnsDomain": {
        "type": "object",
        "required": ["domain", "role", "last_check"],
        "properties": {
            "domain": {"type": "string"},
            "role": {"type": "string", "enum": ["customer", "capture"]},
            "last_check": {"oneOf": [_ref("DnsLastCheck"), {"type": "null"}]},
        },
    },
    "DnsLastCheck": {
        "type": "object",
        "required": ["checked_at", "checked_by", "actor", "outcome", "results"],
        "properties": {
            "checked_at": {"type": "string", "format": "date-time"},
            "checked_by": {
                "type": "string",
                "enum": ["cli", "api", "page"],
                "description": "`mailledger dns check`, `POST /v1/dns/check`, or the DNS page.",
            },
            "actor": {
                "type": "string",
                "description": "The staff member (page) or API token name (api); empty for cli.",
            },
            "outcome": {
                "type": "string",
                "enum": ["ok", "wrong", "unanswered"],
                "description": (
                    "`wrong`: a record needs a DNS change; `unanswered`: nothing known to be "
                    "wrong, but DNS did not answer for a record (try again)."
                ),
            },
            "results": {"type": "array", "items": _ref("DnsCheck")},
        },
    },
}
