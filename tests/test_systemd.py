"""The systemd units in systemd/ pass systemd's own checks and say what production needs.

``systemd-analyze verify`` loads the unit the way systemd would and fails on unknown options,
bad values and a missing executable; ``security --offline`` scores the sandboxing; sysusers
and tmpfiles snippets are applied to a scratch root directory, never to this machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
SERVICE = UNITS / "mailledger.service"
INSTALLED_BINARY = "/opt/mailledger/bin/mailledger"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} not found; .ci/run installs Debian's systemd package")
        pytest.skip(f"{name} not found (apt-get install systemd)")
    return path


def _settings(unit: Path) -> dict[str, list[str]]:
    """Key → every value it is given in the unit (keys may repeat, e.g. SystemCallFilter)."""
    values: dict[str, list[str]] = {}
    for line in unit.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key.strip(), []).append(value.strip())
    return values


@pytest.fixture
def service_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's console script.

    verify checks that ExecStart's program exists and is executable; on a build machine the
    installed path (/opt/mailledger) does not, so that one path is swapped and nothing else.
    """
    text = SERVICE.read_text(encoding="utf-8")
    assert text.count(INSTALLED_BINARY) == 1
    script = Path(sys.executable).parent / "mailledger"
    assert os.access(script, os.X_OK), script
    unit = tmp_path / "mailledger.service"
    unit.write_text(text.replace(INSTALLED_BINARY, str(script)), encoding="utf-8")
    return unit


def test_service_unit_passes_systemd_analyze_verify(service_here: Path) -> None:
    """systemd-analyze verify loads the unit with no error or warning."""
    result = subprocess.run(
        [_tool("systemd-analyze"), "verify", "--man=no", str(service_here)],
        capture_output=True,
        text=True,
        check=False,
    )
    # Lines about other units (the host's own) are not ours to judge.
    ours = [line for line in result.stderr.splitlines() if "mailledger" in line]
    assert result.returncode == 0, result.stderr
    assert ours == [], result.stderr


def test_verify_catches_a_broken_unit(tmp_path: Path, service_here: Path) -> None:
    """The check has teeth: a bad value is reported (verify only warns; the test above fails)."""
    broken = tmp_path / "broken" / "mailledger.service"
    broken.parent.mkdir()
    broken.write_text(
        service_here.read_text().replace("ProtectSystem=strict", "ProtectSystem=strictly"),
        encoding="utf-8",
    )
    result = subprocess.run(
        [_tool("systemd-analyze"), "verify", "--man=no", str(broken)],
        capture_output=True,
        text=True,
        check=False,
    )
    ours = [line for line in result.stderr.splitlines() if "mailledger" in line]
    assert ours and "strictly" in ours[0], result.stderr


def test_service_unit_runs_as_a_notify_service_with_least_privilege() -> None:
    """Readiness, watchdog, reload, restart, a dedicated user and the sandbox options are set."""
    unit = _settings(SERVICE)
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "User": "mailledger",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "StateDirectory": "mailledger",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "SystemCallArchitectures": "native",
    }
    for key, value in expected.items():
        assert unit.get(key) == [value], key
    assert unit["WatchdogSec"] and unit["ExecStart"][0].endswith(" serve")
    assert unit["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    # The stop timeout covers the DATA grace (30 s) plus the delivery drain (20 s).
    assert int(unit["TimeoutStopSec"][0].rstrip("s")) >= 60


def test_service_unit_sandbox_scores_well(service_here: Path) -> None:
    """systemd-analyze security rates the unit's exposure low (under 3 of 10)."""
    result = subprocess.run(
        [_tool("systemd-analyze"), "security", "--offline=yes", "--no-pager", str(service_here)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) < 3.0, result.stdout


def test_sysusers_and_tmpfiles_create_the_user_and_directories(tmp_path: Path) -> None:
    """Applied to a scratch root, the snippets make the account and its private directories."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    subprocess.run(
        [
            _tool("systemd-sysusers"),
            f"--root={root}",
            str(UNITS / "sysusers.d" / "mailledger.conf"),
        ],
        check=True,
        capture_output=True,
    )
    passwd = (root / "etc" / "passwd").read_text()
    entry = next(line for line in passwd.splitlines() if line.startswith("mailledger:"))
    fields = entry.split(":")
    assert int(fields[2]) != 0 and fields[5] == "/var/lib/mailledger"
    assert fields[6].endswith("nologin")
    subprocess.run(
        [
            _tool("systemd-tmpfiles"),
            f"--root={root}",
            "--create",
            str(UNITS / "tmpfiles.d" / "mailledger.conf"),
        ],
        check=True,
        capture_output=True,
    )
    state = root / "var" / "lib" / "mailledger"
    assert state.stat().st_uid == int(fields[2])
    assert state.stat().st_mode & 0o777 == 0o750
    assert (state / "dkim").stat().st_mode & 0o777 == 0o700
    assert (root / "etc" / "mailledger").stat().st_uid == 0
