"""Times as the admin pages show them: to the second, in UTC, saying so."""

from __future__ import annotations

from datetime import datetime


def when(value: datetime | str | None) -> str:
    """A stored time (or its ISO text, as the store's plain-data views give it); "" for none."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")
