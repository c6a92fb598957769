"""One OpenAPI operation in one call: the shape every path of the resource fragments repeats.

The fragments (openapiaccounts.py, openapievents.py) describe what differs between operations
(id, summary, parameters, body, the answer and the problems it can give); the JSON around it
is written here once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mailledger.web.openapiresources import _ok, _problems


def operation(
    operation_id: str,
    summary: str,
    answer: str,
    schema: dict[str, Any],
    problems: Iterable[int],
    *,
    status: int = 200,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An operation object: ``answer`` with ``schema`` on ``status``, a problem per code."""
    described: dict[str, Any] = {"operationId": operation_id, "summary": summary}
    if parameters:
        described["parameters"] = parameters
    if body:
        described["requestBody"] = body
    described["responses"] = {**_ok(answer, schema, status), **_problems(*problems)}
    return described
