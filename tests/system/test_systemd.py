"""The systemd units in systemd/ pass systemd's own checks and say what production needs.

``systemd-analyze verify`` loads the unit the way systemd would and fails on unknown options,
bad values and a missing executable; ``security --offline`` scores the sandboxing; sysusers
and tmpfiles snippets are applied to a scratch root directory, never to this machine.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailledger.store.migrate import upgrade

ROOT = Path(__file__).resolve().parents[2]
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
    assert unit["SystemCallFilter"] == [
        "@system-service",
        "~@privileged @resources",
        "setpriority",
    ]
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


# --- the system call filter against what the server really calls ----------------------------

# SQLite hands a new journal file to the database file's owner (fchown) only when it runs as
# root; under the unit's User=mailledger it never calls it, and the filter denies it anyway.
ONLY_AS_ROOT = frozenset({"fchown"})


@functools.cache
def _syscalls(name: str) -> frozenset[str]:
    """A call, or every call of a ``@group`` (its nested groups resolved) per systemd-analyze."""
    if not name.startswith("@"):
        return frozenset({name})
    listing = subprocess.run(
        [_tool("systemd-analyze"), "syscall-filter", "--no-pager", name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    calls: set[str] = set()
    for line in listing.splitlines()[1:]:  # the first line repeats the group's name
        entry = line.strip()
        if entry and not entry.startswith("#"):
            calls |= _syscalls(entry)
    return frozenset(calls)


def _admitted(filters: list[str]) -> set[str]:
    """The calls a unit's SystemCallFilter= lines let through, as systemd.exec(5) merges them.

    The first line decides the kind: an allow list (ours) starts from its calls; each later
    line removes (``~``) or adds its calls. execve, exit and a few others are always allowed.
    """
    assert filters and not filters[0].startswith("~"), "expected an allow list first"
    admitted: set[str] = {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn"}
    for index, line in enumerate(filters):
        names = line.removeprefix("~").split()
        calls = set().union(*(_syscalls(n.split(":")[0]) for n in names))
        if index and line.startswith("~"):
            admitted -= calls
        else:
            admitted |= calls
    return admitted


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="utf-8")
    return [int(p) for p in text.split()]


def _traced_server_calls(tmp_path: Path) -> set[str]:
    """Every system call `mailledger serve` makes, with one processing process and a second
    listener process, until stopped.

    The server runs under ``strace -f -c``; it is stopped with SIGTERM once its processing
    process has lowered its own priority (the os.nice at issue) and its listener process
    accepts, so the trace covers start-up, both processes' start and a clean stop.
    """
    config = tmp_path / "traced.toml"
    config.write_text(
        f"""
[database]
url = "sqlite:///{tmp_path / "traced.db"}"
[storage]
blob_dir = "{tmp_path / "blobs"}"
min_free_bytes = 0
[capture]
listen = ["127.0.0.1:0"]
[metrics]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
[processing]
worker_processes = 1
poll_interval_seconds = 0.05
[service]
listener_processes = 2
[logging]
format = "json"
""",
        encoding="utf-8",
    )
    upgrade(f"sqlite:///{tmp_path / 'traced.db'}")
    summary = tmp_path / "summary.txt"
    log = tmp_path / "server.log"
    argv = [sys.executable, "-m", "mailledger", "--config", str(config), "serve"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILLEDGER_")}
    with log.open("wb") as out:
        tracer = subprocess.Popen(
            [_tool("strace"), "-f", "-c", "-o", str(summary), *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            worker = 0
            listening = False
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                for line in log.read_text(encoding="utf-8").splitlines():
                    if '"processing process started"' in line:
                        worker = json.loads(line)["pid"]
                    listening = listening or '"listener processes accepting"' in line
                if listening and worker and os.getpriority(os.PRIO_PROCESS, worker) > 0:
                    break
                assert tracer.poll() is None, log.read_text(encoding="utf-8")
                time.sleep(0.1)
            else:
                pytest.fail("the processing process never lowered its priority\n" + log.read_text())
            (server,) = _children(tracer.pid)
            os.kill(server, signal.SIGTERM)
            assert tracer.wait(timeout=60) == 0, log.read_text(encoding="utf-8")
        finally:
            if tracer.poll() is None:
                tracer.kill()
                tracer.wait()
    calls = set()
    for line in summary.read_text(encoding="utf-8").splitlines()[2:]:
        fields = line.split()
        if fields and not fields[0].startswith("-") and fields[-1] != "total":
            calls.add(fields[-1])
    return calls


@pytest.mark.slow
def test_the_filter_admits_every_call_of_a_server_with_worker_processes(tmp_path: Path) -> None:
    """`serve` with a processing process and a second listener process ([service]
    listener_processes = 2: SO_REUSEPORT), traced, makes no call the unit denies.

    Under the unit a denied call fails with EPERM (SystemCallErrorNumber=); the processing
    processes' os.nice (setpriority) failing would kill every one of them as it starts.
    """
    if shutil.which("strace") is None:
        pytest.skip("strace not found (apt-get install strace)")
    probe = subprocess.run(
        ["strace", "-f", "-o", os.devnull, "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here (ptrace refused?): {probe.stderr.strip()}")
    filters = _settings(SERVICE)["SystemCallFilter"]
    calls = _traced_server_calls(tmp_path)
    assert "setpriority" in calls  # the processing process's os.nice was traced
    root_only = ONLY_AS_ROOT if os.geteuid() == 0 else frozenset()
    assert sorted(calls - _admitted(filters) - root_only) == []
    # The check has teeth: without the unit's last SystemCallFilter= line, nice() is denied.
    assert "setpriority" in calls - _admitted(filters[:-1])
