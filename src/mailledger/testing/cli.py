"""``mailledger`` run in-process by tests, on the test's own settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mailledger.cli.main import main
from mailledger.config import Settings


class InProcessCli:
    """``mailledger ARGS`` in-process; returns stdout, checks the exit, keeps what it printed
    in ``out`` and ``err``. With ``config``, every command runs with ``--config config``."""

    def __init__(self, capsys: pytest.CaptureFixture[str], config: Path | None = None) -> None:
        self.capsys = capsys
        self.config = config
        self.out = self.err = ""

    def __call__(self, *argv: str, expect: int = 0) -> str:
        self.capsys.readouterr()
        given = ["--config", str(self.config), *argv] if self.config else list(argv)
        code = main(given)
        self.out, self.err = self.capsys.readouterr()
        assert code == expect, f"exit {code}; stdout: {self.out}\nstderr: {self.err}"
        return self.out

    def json(self, *argv: str) -> list[dict[str, Any]]:
        """The command with ``--json``: a list of objects."""
        data = json.loads(self(*argv, "--json"))
        assert isinstance(data, list)
        assert all(isinstance(item, dict) for item in data)
        return data


def exit_and_output(
    config: Path, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str]:
    """``mailledger --config config ARGS`` in-process: its exit code and all it printed, for
    tests that check a failing exit among the output."""
    capsys.readouterr()
    code = main(["--config", str(config), *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


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
