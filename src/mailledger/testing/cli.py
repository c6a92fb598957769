"""``mailledger`` run in-process by tests, on the test's own settings."""

from __future__ import annotations

import pytest

from mailledger.cli.main import main
from mailledger.config import Settings


class InProcessCli:
    """``mailledger ARGS`` in-process; returns stdout, checks the exit, keeps stderr in ``err``."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.err = ""

    def __call__(self, *argv: str, expect: int = 0) -> str:
        self.capsys.readouterr()
        code = main(list(argv))
        out, self.err = self.capsys.readouterr()
        assert code == expect, f"exit {code}: {out}{self.err}"
        return out


def use_settings(monkeypatch: pytest.MonkeyPatch, settings: Settings, **more: str) -> None:
    """Point every command at ``settings``' database, blobs and secrets key through the
    environment (``MAILLEDGER_SECTION__KEY``), with DNS that answers nothing at once.

    ``more``: further settings by their variable's name after ``MAILLEDGER_``.
    """
    env = {
        "DATABASE__URL": settings.database.url,
        "STORAGE__BLOB_DIR": settings.storage.blob_dir,
        "SECRETS__KEY_FILE": settings.secrets.key_file,
        "DNS__NAMESERVERS": '["127.0.0.1:9"]',
        "DNS__TIMEOUT_SECONDS": "0.5",
        **more,
    }
    monkeypatch.delenv("MAILLEDGER_CONFIG", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(f"MAILLEDGER_{key}", str(value))
