"""The demo a newcomer runs: `demo send` reaches the listener and becomes an activity."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.cli.main import main
from mailledger.config import Settings, VerifySettings
from mailledger.store.models import Activity
from mailledger.testing.smtp import running_server


async def test_demo_send_shows_up_in_activities_within_two_seconds(
    tmp_path: Path,
    settings: Settings,
    sessions: sessionmaker[Session],
    demo: DemoAddresses,
) -> None:
    """With the demo's loopback trust, the demo email is an activity in under two seconds."""
    settings = settings.model_copy(update={"verify": VerifySettings(demo_trust_loopback=True)})
    async with running_server(settings) as port:
        config = tmp_path / "demo.toml"
        config.write_text(
            f'[database]\nurl = "{settings.database.url}"\n'
            f'[storage]\nblob_dir = "{settings.storage.blob_dir}"\n'
            f'[capture]\nlisten = ["127.0.0.1:{port}"]\n',
            encoding="utf-8",
        )
        # Send as a user would, from a process of its own; then time from the 250 on.
        code, out = await _mailledger(config, "demo", "send")
        assert code == 0, out
        assert "sent <" in out
        sent = time.monotonic()
        while not _recorded(sessions):
            assert time.monotonic() - sent < 2.0, "no activity within two seconds"
            await asyncio.sleep(0.05)
        code, out = await _mailledger(config, "activities", "list", "--json")
        assert code == 0, out
        activities: list[dict[str, object]] = json.loads(out)
    assert activities, "no activity within two seconds"
    [activity] = activities
    assert activity["subject"] == "Quote for the new office"
    assert activity["contacts"] == ["carol@client.example"]
    assert activity["direction"] == "inbound"


def _recorded(sessions: sessionmaker[Session]) -> bool:
    with sessions() as session:
        return session.scalars(select(Activity)).first() is not None


async def _mailledger(config: Path, *argv: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailledger",
        "--config",
        str(config),
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode()


def test_demo_send_without_a_server_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With nothing listening, `demo send` explains what to start instead of a traceback."""
    config = tmp_path / "demo.toml"
    config.write_text('[capture]\nlisten = ["127.0.0.1:9"]\n', encoding="utf-8")
    assert main(["--config", str(config), "demo", "send"]) == 1
    assert "is `mailledger serve` running?" in capsys.readouterr().err


async def test_demo_send_to_a_refused_address_says_what_the_server_answered(
    tmp_path: Path, settings: Settings, demo: DemoAddresses, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused recipient is the server's answer, not a sign that no server runs."""
    async with running_server(settings) as port:
        config = tmp_path / "demo.toml"
        config.write_text(
            f'[database]\nurl = "{settings.database.url}"\n'
            f'[capture]\nlisten = ["127.0.0.1:{port}"]\n',
            encoding="utf-8",
        )
        argv = ["--config", str(config), "demo", "send", "--to", "nobody@acme.capture.example"]
        code = await asyncio.to_thread(main, argv)
    assert code == 1
    err = capsys.readouterr().err
    assert "refused nobody@acme.capture.example: 550 5.1.1 No such capture address" in err
    assert "is `mailledger serve` running?" not in err


@pytest.mark.parametrize(
    ("argv0", "on_path", "expected"),
    [
        # `make run`: the script of a virtualenv that is not activated.
        (".venv/bin/mailledger", False, ".venv/bin/mailledger --config demo.toml demo send"),
        # The script found on PATH is this one: the bare name works.
        (".venv/bin/mailledger", True, "  mailledger --config demo.toml demo send"),
    ],
)
def test_demo_init_banner_names_the_command_that_runs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *,
    argv0: str,
    on_path: bool,
    expected: str,
) -> None:
    """The banner tells the user to run the mailledger they ran, not one that is not on PATH."""
    script = tmp_path / ".venv" / "bin" / "mailledger"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n", encoding="utf-8")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [argv0])
    monkeypatch.setenv("PATH", str(script.parent) if on_path else str(tmp_path / "empty"))
    (tmp_path / "demo.toml").write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "d.db"}"\n', encoding="utf-8"
    )
    assert main(["--config", "demo.toml", "demo", "init"]) == 0
    out = capsys.readouterr().out
    assert expected in out
    if not on_path:
        assert "\n  mailledger " not in out
