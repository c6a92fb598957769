"""DESIGN §8's layers hold: the import-linter contracts in pyproject.toml pass, and they bite.

`make lint` runs the same contracts; running them here puts them in CI too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT / "src",
        check=False,
    )


def _contracts_toml(layers: list[str]) -> str:
    quoted = ", ".join(f'"{layer}"' for layer in layers)
    return (
        '[tool.importlinter]\nroot_package = "mailledger"\n\n'
        "[[tool.importlinter.contracts]]\n"
        f'name = "layers"\ntype = "layers"\nlayers = [{quoted}]\n'
    )


def _layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contract = config["tool"]["importlinter"]["contracts"][0]
    assert contract["type"] == "layers"
    return list(contract["layers"])


pytestmark = pytest.mark.skipif(
    not LINT_IMPORTS.exists() and shutil.which("lint-imports") is None,
    reason="import-linter is installed by `make test` (the lint extra)",
)


def test_the_contracts_in_pyproject_are_kept() -> None:
    """Every import in src/ points down the layers, and capture and relay stay independent."""
    done = _lint(ROOT / "pyproject.toml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("upper", "lower"),
    [
        ("mailledger.store", "mailledger.mail"),  # the store uses the address rules
        ("mailledger.verify", "mailledger.dnsauth"),  # verify asks the shared resolver
        (
            "mailledger.capture | mailledger.relay | mailledger.sync | mailledger.calendar",
            "mailledger.smtp",
        ),
        # calendar passes go through the shared status rules
        (
            "mailledger.capture | mailledger.relay | mailledger.sync | mailledger.calendar",
            "mailledger.accounts",
        ),
    ],
)
def test_turning_an_allowed_direction_around_breaks_the_contract(
    tmp_path: Path, upper: str, lower: str
) -> None:
    """Swapping two layers that import each other downwards makes the contract fail."""
    layers = _layers()
    i, j = layers.index(upper), layers.index(lower)
    layers[i], layers[j] = layers[j], layers[i]
    config = tmp_path / "pyproject.toml"
    config.write_text(_contracts_toml(layers))
    done = _lint(config)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout
