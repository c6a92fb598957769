"""Configuration reload (SIGHUP): re-read the file, apply what can change safely, say the rest.

Safe means the next use of the value simply sees the new one: log level and format, the
retention policy, the free-space reserve, and the per-message limits the capture handler
checks. Anything bound into a listening socket, a connection pool or a running worker
(addresses, database URL, blob directory, TLS files, node id, processing and relay settings)
needs a restart, and the reload says so by name instead of half-applying it. A file that no
longer loads changes nothing: the service keeps running on what it has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailledger.config import ConfigError, Settings, load_settings
from mailledger.logs import get_logger

log = get_logger(__name__)

Applier = Callable[[Settings], None]

# Keys a reload applies; a section name alone means every key of it.
RELOADABLE: frozenset[str] = frozenset(
    {
        "logging",
        "retention",
        "storage.min_free_bytes",
        "capture.max_recipients",
        "capture.max_received_headers",
        "capture.max_header_bytes",
    }
)


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """``section.key`` of every setting whose value differs, in schema order."""
    before, after = old.model_dump(), new.model_dump()
    changed = []
    for section, values in after.items():
        old_values: dict[str, Any] = before.get(section, {})
        for key, value in values.items():
            if old_values.get(key) != value:
                changed.append(f"{section}.{key}")
    return changed


def is_reloadable(key: str) -> bool:
    """Whether a reload can apply this ``section.key`` without a restart."""
    return key in RELOADABLE or key.split(".", 1)[0] in RELOADABLE


@dataclass(slots=True)
class ReloadResult:
    """What one reload did."""

    applied: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)
    error: str = ""


class Reloader:
    """Holds the running settings and applies reloaded ones through the appliers."""

    def __init__(
        self,
        settings: Settings,
        config_path: str | Path | None,
        appliers: list[Applier] | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.appliers = list(appliers or [])

    def reload(self) -> ReloadResult:
        """Load the file again (and the environment), apply what may change, log the rest.

        Keys that need a restart keep their running value, so ``self.settings`` always
        describes what the process really does.
        """
        try:
            new = load_settings(self.config_path)
        except ConfigError as exc:
            log.error("configuration reload failed; keeping the running settings", error=str(exc))  # noqa: TRY400 - the message is the story
            return ReloadResult(error=str(exc))
        keys = changed_keys(self.settings, new)
        result = ReloadResult(
            applied=[k for k in keys if is_reloadable(k)],
            needs_restart=[k for k in keys if not is_reloadable(k)],
        )
        effective = _merge(self.settings, new, result.applied)
        for apply in self.appliers:
            apply(effective)
        self.settings = effective
        log.info(
            "configuration reloaded",
            applied=result.applied,
            needs_restart=result.needs_restart,
        )
        if result.needs_restart:
            log.warning(
                "changed settings take effect only after a restart",
                keys=result.needs_restart,
            )
        return result


def _merge(running: Settings, new: Settings, keys: list[str]) -> Settings:
    """The running settings with only ``keys`` taken from ``new``."""
    data = running.model_dump()
    fresh = new.model_dump()
    for key in keys:
        section, name = key.split(".", 1)
        data[section][name] = fresh[section][name]
    return Settings.model_validate(data)
