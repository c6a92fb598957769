"""A JSON response encoded by orjson: the same bytes as Starlette's, a fraction of the CPU.

Encoding runs on the event loop that serves SMTP as well, so a 100-activity feed page
(~130 KB) encoded by the standard library held that loop for about 2 ms; orjson takes a
tenth of that. The output matches ``JSONResponse`` for what the API sends (str keys, str,
int, bool, None, lists, dicts): compact separators and UTF-8 without ``\\u`` escapes.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    """``application/json`` as ``JSONResponse`` renders it, encoded by orjson."""

    def render(self, content: Any) -> bytes:
        """The compact UTF-8 encoding of ``content``."""
        return orjson.dumps(content)
