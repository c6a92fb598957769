"""The files an operator installs from the package: the annotated configuration, the units.

They ship inside the wheel (``mailledger/data/``, links to ``config/`` and ``systemd/`` in the
repository, so each exists once), so a server installed with pip can write its first
configuration and its systemd units without a checkout: ``mailledger init-config``.
"""

from __future__ import annotations

from importlib import resources

# What ``init-config`` can print, and where each lives in the package.
SHIPPED: dict[str, str] = {
    "config": "data/mailledger.example.toml",
    "service": "data/systemd/mailledger.service",
    "sysusers": "data/systemd/sysusers.d/mailledger.conf",
    "tmpfiles": "data/systemd/tmpfiles.d/mailledger.conf",
}


def shipped_text(name: str) -> str:
    """The text of one shipped file, by its ``SHIPPED`` name."""
    return resources.files("mailledger").joinpath(SHIPPED[name]).read_text(encoding="utf-8")
