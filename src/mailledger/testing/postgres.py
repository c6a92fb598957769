"""A throwaway PostgreSQL server for tests: initdb in a temporary directory, loopback only.

The production store is PostgreSQL (DESIGN §9), so the code that claims work with
``FOR UPDATE SKIP LOCKED`` and the migrations must be tested against the real server, not a
lookalike. ``initdb`` refuses to run as root, so under root the server runs as an unprivileged
OS user (``postgres``, created when missing) through ``runuser``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from mailledger.testing.ports import free_port

SERVER_USER = "postgres"
PREFERRED_MAJOR = 15
_START_TIMEOUT_SECONDS = 60


class PostgresUnavailableError(RuntimeError):
    """PostgreSQL's server programs are not installed on this machine."""


def find_bindir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, preferring version 15."""
    candidates: list[Path] = []
    versioned = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: (p.parent.name != str(PREFERRED_MAJOR), p.parent.name),
    )
    candidates.extend(versioned)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.insert(0, Path(on_path).resolve().parent)
    for directory in candidates:
        if all((directory / name).exists() for name in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def ensure_server_user(name: str = SERVER_USER) -> pwd.struct_passwd:
    """The unprivileged account the server runs as under root; created when missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        subprocess.run(  # noqa: S603 - fixed argv, no shell
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(name)


@dataclass
class PostgresServer:
    """A running server; ``url`` names a database on it, ``create_database`` makes one."""

    bindir: Path
    root: Path
    port: int
    user: str = SERVER_USER
    options: str = ""  # the postgres options it was started with, for resume()
    _counter: Iterator[int] = field(default_factory=itertools.count, repr=False)

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        """Where the server puts its unix socket (kept out of /var/run/postgresql)."""
        return self.root / "sock"

    def url(self, database: str) -> str:
        """A SQLAlchemy URL for ``database`` on this server, over TCP on loopback."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, dbname="postgres", autocommit=True
        )

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its name (a fresh one per test)."""
        name = name or f"test_{os.getpid()}_{next(self._counter)}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"unsafe database name {name!r}")
        with self._admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(
                    sql.Identifier(name)
                )
            )
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting anyone still on it."""
        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def halt(self) -> None:
        """Stop the server (fast shutdown) but keep its data, as an outage would."""
        pg_ctl = str(self.bindir / "pg_ctl")
        _run_as(self.user, pg_ctl, "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Start a halted server again on the same port with the same data."""
        pg_ctl = str(self.bindir / "pg_ctl")
        _run_as(
            self.user,
            *(pg_ctl, "-D", str(self.data_dir), "-o", self.options),
            *(
                "-l",
                str(self.root / "server.log"),
                "-w",
                "-t",
                str(_START_TIMEOUT_SECONDS),
                "start",
            ),
        )

    def stop(self) -> None:
        """Stop the server fast and remove its files; the data is throwaway."""
        try:
            pg_ctl = str(self.bindir / "pg_ctl")
            _run_as(self.user, pg_ctl, "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _run_as(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    command = list(argv)
    if os.geteuid() == 0:
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        command = [runuser, "-u", user, "--", *command]
    # argv is built in this module from paths and constants, never through a shell.
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result


def start_server(bindir: Path | None = None) -> PostgresServer:
    """initdb a new cluster in a temporary directory and start it on a free loopback port."""
    bindir = bindir or find_bindir()
    if bindir is None:
        raise PostgresUnavailableError(
            "PostgreSQL server programs (initdb, pg_ctl) not found; install postgresql-15"
        )
    # Not under pytest's tmp_path: that is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="mailledger-pg-"))
    user = pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() == 0:
        account = ensure_server_user()
        os.chown(root, account.pw_uid, account.pw_gid)
        user = account.pw_name
    server = PostgresServer(bindir=bindir, root=root, port=free_port(), user=user)
    try:
        _run_as(user, shutil.which("mkdir") or "/bin/mkdir", "-p", str(server.socket_dir))
        _run_as(
            user,
            *(str(bindir / "initdb"), "-D", str(server.data_dir), "-A", "trust", "-U", user),
            *("-E", "UTF8", "--locale=C", "--no-sync"),
        )
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-p {server.port}",
                f"-k {server.socket_dir}",
                # Test data is throwaway: durability costs time and proves nothing here.
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
            ]
        )
        server.options = options
        _run_as(
            user,
            *(str(bindir / "pg_ctl"), "-D", str(server.data_dir), "-o", options),
            *("-l", str(root / "server.log"), "-w", "-t", str(_START_TIMEOUT_SECONDS), "start"),
        )
    except Exception as exc:
        log = root / "server.log"
        detail = log.read_text(errors="replace") if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {exc}\n{detail}") from exc
    return server


@contextlib.contextmanager
def running_server(bindir: Path | None = None) -> Iterator[PostgresServer]:
    """A server for the duration of the block."""
    server = start_server(bindir)
    try:
        yield server
    finally:
        server.stop()
