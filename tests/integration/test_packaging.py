"""What an installed wheel carries: the licence, its metadata, the example configuration and
the systemd units, and a ``mailledger.testing`` that imports without the test extras."""

from __future__ import annotations

import fnmatch
import hashlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mailledger.cli.main import main
from mailledger.config import load_settings
from mailledger.service.shipped import SHIPPED, shipped_text

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# SHA-256 of the Apache License 2.0 as published at apache.org/licenses/LICENSE-2.0.txt.
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
# Where each shipped file lives in the repository, for readers of a checkout.
IN_REPOSITORY = {
    "config": ROOT / "config" / "mailledger.example.toml",
    "service": ROOT / "systemd" / "mailledger.service",
    "sysusers": ROOT / "systemd" / "sysusers.d" / "mailledger.conf",
    "tmpfiles": ROOT / "systemd" / "tmpfiles.d" / "mailledger.conf",
}


def test_license_file_is_the_unmodified_apache_2_text() -> None:
    """LICENSE is the Apache License 2.0, byte for byte."""
    digest = hashlib.sha256((ROOT / "LICENSE").read_bytes()).hexdigest()
    assert digest == APACHE_2_SHA256


def test_metadata_uses_an_spdx_expression_and_classifiers() -> None:
    """PEP 639: a license expression and license-files (the table form is deprecated)."""
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    # PEP 639 forbids license classifiers beside an expression (setuptools refuses the build).
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]
    assert "Topic :: Communications :: Email :: Mail Transport Agents" in project["classifiers"]
    # setuptools reads the expression and license-files from 77 on.
    assert "setuptools>=77" in PYPROJECT["build-system"]["requires"]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_files_are_the_repositorys_and_are_package_data(name: str) -> None:
    """The packaged copy is the file in config/ or systemd/, and the build includes it."""
    assert set(SHIPPED) == set(IN_REPOSITORY)
    assert shipped_text(name) == IN_REPOSITORY[name].read_text(encoding="utf-8")
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["mailledger"]
    assert any(fnmatch.fnmatch(SHIPPED[name], p) for p in patterns), SHIPPED[name]


def test_init_config_prints_the_annotated_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`init-config > file` writes the example exactly, and the result loads against the schema.

    It needs no configuration of its own: a MAILLEDGER_CONFIG naming a missing file (the one
    about to be written) does not stop it.
    """
    monkeypatch.setenv("MAILLEDGER_CONFIG", str(tmp_path / "not-yet.toml"))
    assert main(["init-config"]) == 0
    printed = capsys.readouterr().out
    assert printed == IN_REPOSITORY["config"].read_text(encoding="utf-8")
    written = tmp_path / "mailledger.toml"
    written.write_text(printed, encoding="utf-8")
    load_settings(written, environ={})
    assert main(["init-config", "--systemd", "service"]) == 0
    assert capsys.readouterr().out == IN_REPOSITORY["service"].read_text(encoding="utf-8")


def test_testing_helpers_import_without_the_test_extras() -> None:
    """Every mailledger.testing module imports with PyYAML absent (it is a test extra)."""
    script = (
        "import importlib, pkgutil, sys\n"
        "sys.modules['yaml'] = None  # importing it now raises ImportError\n"
        "import mailledger.testing as t\n"
        "for m in pkgutil.iter_modules(t.__path__):\n"
        "    importlib.import_module(f'mailledger.testing.{m.name}')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
