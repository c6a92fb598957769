"""``GET /v1/openapi.json``: the API described for client generators and for our own test.

Written by hand next to the routes it describes; tests/integration/test_api_openapi.py calls
every operation listed here and holds each answer to the status codes documented for it.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailledger.store.feed import DEFAULT_PAGE, MAX_PAGE
from mailledger.web.openapiaccounts import ACCOUNT_PATHS, ACCOUNT_SCHEMAS
from mailledger.web.openapievents import EVENT_PATHS, EVENT_SCHEMAS
from mailledger.web.openapiresources import RESOURCE_PATHS, RESOURCE_SCHEMAS

PROBLEM = {"$ref": "#/components/responses/Problem"}


PROBLEM_TEXT = {
    400: "The body is not JSON.",
    401: "No token, or not a valid one (WWW-Authenticate: Bearer).",
    403: "The token is read-only.",
    404: "No such activity in the token's tenant.",
    409: "The change conflicts with what is there (named in `detail`).",
    415: "The body is not application/json.",
    422: "A parameter is wrong; `field` names it.",
    429: "Over the token's rate limit; see Retry-After.",
    502: "DNS failed (time-out, SERVFAIL): the records could not be checked; `results` has each.",
    503: "The server was started without the configuration this needs.",
}


def _problems(*codes: int) -> dict[str, Any]:
    return {str(c): {**PROBLEM, "description": PROBLEM_TEXT[c]} for c in codes}


_ID = {
    "name": "activity_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
}


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", **schema},
    }


ACTIVITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "id",
        "tenant",
        "direction",
        "subject",
        "from",
        "staff",
        "contacts",
        "message_id",
        "occurred_at",
        "auth",
        "sources",
        "thread",
        "participants",
        "attachments",
        "regarding",
        "updated_at",
    ],
    "properties": {
        "id": {"type": "integer"},
        "tenant": {"type": "string"},
        "kind": {
            "type": "string",
            "enum": ["email", "meeting"],
            "description": "An email, or a meeting from a synced calendar.",
        },
        "direction": {"type": "string", "enum": ["inbound", "outbound"]},
        "subject": {"type": "string"},
        "from": {"type": "string", "description": "The sender's normalized address."},
        "from_name": {"type": "string"},
        "staff": {"type": ["string", "null"], "description": "Username of the owner."},
        "contacts": {"type": "array", "items": {"type": "string"}},
        "message_id": {"type": "string"},
        "thread": {"type": ["integer", "null"]},
        "occurred_at": {"type": "string", "format": "date-time"},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "private": {"type": "boolean"},
        "auth": {"type": "object", "description": "SPF, DKIM, DMARC, ARC and the trust rule."},
        "participants": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "role": {"type": "string", "enum": ["from", "to", "cc", "bcc"]},
                    "address": {"type": "string"},
                    "name": {"type": "string"},
                    "kind": {
                        "type": "string",
                        "enum": ["staff", "contact", "company", "unmatched"],
                    },
                },
            },
        },
        "sources": {"type": "array", "items": {"type": "object"}},
        "attachments": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "n": {"type": "integer"},
                    "name": {"type": "string"},
                    "type": {"type": "string"},
                    "size": {"type": "integer"},
                    "inline": {"type": "boolean"},
                    "url": {"type": "string", "format": "uri"},
                },
            },
        },
        "regarding": {"oneOf": [{"$ref": "#/components/schemas/Regarding"}, {"type": "null"}]},
        "links": {"type": "object"},
        "text_body": {"type": "string", "description": "Single activity only."},
        "html_body": {"type": "string", "description": "Single activity only (sanitized)."},
    },
}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of API v1."""
    activity = {"$ref": "#/components/schemas/Activity"}
    one = {"description": "The activity.", "content": {"application/json": {"schema": activity}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mailledger API",
            "version": "1",
            "description": "Recorded email as CRM activities. See the README's HTTP API.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/activities": {
                "get": {
                    "operationId": "listActivities",
                    "summary": "Page through the tenant's activities, oldest first.",
                    "parameters": [
                        _query("after", "The `next` of the previous page; absent: the start."),
                        _query(
                            "limit",
                            f"Activities per page (default {DEFAULT_PAGE}).",
                            pattern="^[0-9]+$",
                        ),
                        _query("contact", "Only activities with this participant address."),
                        _query("staff", "Only activities owned by this staff username."),
                        _query("company", "Only activities with this company (name or id)."),
                        _query("direction", "inbound or outbound.", enum=["inbound", "outbound"]),
                        _query("since", "Only activities that occurred at or after this time."),
                        _query("thread", "Only activities of this thread id."),
                    ],
                    "responses": {
                        "200": {
                            "description": f"Up to `limit` (at most {MAX_PAGE}) activities.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Page"}
                                }
                            },
                        },
                        **_problems(401, 422, 429),
                    },
                }
            },
            "/v1/activities/{activity_id}": {
                "parameters": [_ID],
                "get": {
                    "operationId": "getActivity",
                    "summary": "One activity, with its text and HTML bodies.",
                    "responses": {"200": one, **_problems(401, 404, 429)},
                },
                "patch": {
                    "operationId": "updateActivity",
                    "summary": "Set (or, with null, clear) what the activity is about.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["regarding"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "regarding": {
                                            "oneOf": [
                                                {"$ref": "#/components/schemas/Regarding"},
                                                {"type": "null"},
                                            ]
                                        }
                                    },
                                },
                                "example": {
                                    "regarding": {
                                        "type": "opportunity",
                                        "id": "42",
                                        "label": "Renewal 2027",
                                    }
                                },
                            }
                        },
                    },
                    "responses": {"200": one, **_problems(400, 401, 403, 404, 415, 422, 429)},
                },
            },
            "/v1/activities/{activity_id}/raw": {
                "parameters": [_ID],
                "get": {
                    "operationId": "getActivityRaw",
                    "summary": "The message exactly as received.",
                    "responses": {
                        "200": {
                            "description": "The raw message.",
                            "content": {"message/rfc822": {}},
                        },
                        **_problems(401, 404, 429),
                    },
                },
            },
            "/v1/activities/{activity_id}/attachments/{n}": {
                "parameters": [
                    _ID,
                    {
                        "name": "n",
                        "in": "path",
                        "required": True,
                        "description": "The attachment's `n`, counted from 1.",
                        "schema": {"type": "integer", "minimum": 1},
                    },
                ],
                "get": {
                    "operationId": "getActivityAttachment",
                    "summary": "One attachment's bytes, with its own content type.",
                    "responses": {
                        "200": {"description": "The attachment.", "content": {"*/*": {}}},
                        **_problems(401, 404, 429),
                    },
                },
            },
            **RESOURCE_PATHS,
            **ACCOUNT_PATHS,
            **EVENT_PATHS,
            "/v1/openapi.json": {
                "get": {
                    "operationId": "getOpenAPI",
                    "summary": "This description.",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1.",
                            "content": {"application/json": {}},
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`mailledger api-token create TENANT` prints one.",
                }
            },
            "schemas": {
                "Activity": ACTIVITY_SCHEMA,
                **RESOURCE_SCHEMAS,
                **ACCOUNT_SCHEMAS,
                **EVENT_SCHEMAS,
                "Page": {
                    "type": "object",
                    "required": ["data", "next"],
                    "properties": {
                        "data": {"type": "array", "items": activity},
                        "next": {
                            "type": "string",
                            "description": "Pass as `after`; the same when nothing is new.",
                        },
                    },
                },
                "Regarding": {
                    "type": "object",
                    "required": ["type", "id"],
                    "properties": {
                        "type": {"type": "string", "example": "opportunity"},
                        "id": {"type": "string", "example": "42"},
                        "label": {"type": "string"},
                    },
                },
                "Problem": {
                    "type": "object",
                    "description": "RFC 9457 problem details.",
                    "required": ["type", "title", "status", "detail"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "field": {"type": "string"},
                    },
                },
            },
            "responses": {
                "Problem": {
                    "description": "An error.",
                    "content": {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    },
                }
            },
        },
    }


async def openapi_json(request: Request) -> Response:
    """The description; public, as it describes no data."""
    return JSONResponse(document())


ROUTES = [Route("/v1/openapi.json", openapi_json, methods=["GET"])]
