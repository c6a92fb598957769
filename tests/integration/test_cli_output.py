"""How the CLI writes: `--version`, a reader that goes away, and the one rule for `--json`."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from mailledger.cli.main import main
from mailledger.store.migrate import upgrade


def test_version_is_the_installed_distributions() -> None:
    """`mailledger --version` prints the version from the package metadata, loading nothing."""
    script = (
        "import json, sys\n"
        "from mailledger.cli.main import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print(json.dumps([code, sorted(sys.modules)]), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    code, loaded = json.loads(done.stderr.strip().splitlines()[-1])
    assert code == 0
    assert done.stdout == f"mailledger {version('mailledger')}\n"
    assert not [m for m in loaded if m.split(".")[0] in ("sqlalchemy", "pydantic", "structlog")]


@pytest.mark.parametrize("argv", [["init-config"], ["db", "history"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path, argv: list[str]) -> None:
    """`mailledger … | head`: a closed pipe ends the command with exit 1 and no traceback."""
    config = tmp_path / "c.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "db.sqlite"}"\n', encoding="utf-8")
    upgrade(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with subprocess.Popen(
        [sys.executable, "-m", "mailledger", "--config", str(config), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()  # as `head` does once it has its lines; here before the first
        err = process.stderr.read().decode()
        assert process.wait(timeout=60) == 1, err
    assert err == ""


def test_json_is_always_an_array_of_objects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's rule (DESIGN §10): every --json is an array of objects; check-config and
    retention run, which report on one thing, print a one-element array, whatever the outcome."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    config = tmp_path / "c.toml"
    config.write_text(
        f'[database]\nurl = "{url}"\n[storage]\nblob_dir = "{tmp_path / "blobs"}"\n'
        'min_free_bytes = 0\n[capture]\nlisten = ["127.0.0.1:0"]\n'
        '[metrics]\nlisten = "127.0.0.1:0"\n'
        "[retention]\nwebhook_days = 0\n",  # every rule off (webhook logs go after 30 days)
        encoding="utf-8",
    )
    assert main(["--config", str(config), "check-config", "--json"]) == 0
    [settings] = json.loads(capsys.readouterr().out)
    assert settings["capture"]["listen"] == ["127.0.0.1:0"]
    assert main(["--config", str(config), "retention", "run", "--json"]) == 0
    off = json.loads(capsys.readouterr().out)
    assert off == [{
        "enabled": False, "dry_run": False, "raw_messages": 0, "raw_blobs": 0, "quarantined": 0,
        "webhook_events": 0, "webhook_attempts": 0, "unnamed_blobs": 0, "sweep_refused": None,
    }]  # fmt: skip
    with config.open("a", encoding="utf-8") as handle:
        handle.write("raw_days = 3\n")  # still inside [retention]
    assert main(["--config", str(config), "retention", "run", "--dry-run", "--json"]) == 0
    [report] = json.loads(capsys.readouterr().out)
    assert report["enabled"] is True and report["dry_run"] is True
    # …and a list of records is an array too, even of none.
    assert main(["--config", str(config), "tenant", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
