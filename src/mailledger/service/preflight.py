"""The pre-flight: what must hold before ``serve`` opens a port (``postfix check``, ``nginx -t``).

A configuration can be valid TOML with every key known and still be unable to run: a
certificate that is missing or does not match its key, a database that cannot be reached or
has no schema yet, a blob directory that cannot be written, a port someone else holds, a name
server that is not an address. Each check here looks at one of those and returns
:class:`Problem` lines that name the setting and say what to do. ``mailledger check-config``
prints them; ``serve`` runs the same checks and refuses to start while any is reported, so
the operator reads one line instead of a traceback repeated for ever.

The checks change nothing: the database is only read, a port is bound and released at once,
and the blob directory gets a probe file (or directory) that is removed again.
"""

from __future__ import annotations

import errno
import socket
import ssl
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from mailledger.config import Settings, split_listen
from mailledger.dnsauth.resolver import parse_nameserver
from mailledger.store.freespace import free_bytes, storage_paths
from mailledger.store.migrate import read_state

# How long the database check waits for a server that does not answer.
CONNECT_TIMEOUT_SECONDS = 5


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing that stops the server: the setting it concerns and what to do about it."""

    setting: str  # "[tls] cert_file"
    message: str

    def __str__(self) -> str:
        return f"{self.setting}: {self.message}"


Check = Callable[[Settings], list[Problem]]


@dataclass(frozen=True, slots=True)
class NamedCheck:
    """A check and the name ``check-config`` reports it under."""

    name: str
    run: Check


# --- TLS --------------------------------------------------------------------------------------


def _readable(setting: str, path: str) -> Problem | None:
    try:
        with Path(path).open("rb"):
            return None
    except FileNotFoundError:
        return Problem(setting, f"{path} does not exist: give the path of the PEM file")
    except IsADirectoryError:
        return Problem(setting, f"{path} is a directory: give the path of the PEM file")
    except OSError as exc:
        return Problem(setting, f"cannot read {path}: {exc.strerror}: let the service user read it")


def _certificate_problem(path: str) -> Problem | None:
    """The first certificate in ``path`` unreadable as PEM, or expired."""
    try:
        certificate = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except ValueError:
        return Problem("[tls] cert_file", f"{path} holds no PEM certificate: give the PEM chain")
    expired = certificate.not_valid_after_utc
    if expired < datetime.now(UTC):
        return Problem(
            "[tls] cert_file", f"{path} expired on {expired:%Y-%m-%d %H:%M} UTC: renew it"
        )
    return None


def _key_problem(path: str) -> Problem | None:
    try:
        serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except TypeError:
        # The server has no one to type a passphrase; OpenSSL would prompt on a terminal.
        return Problem(
            "[tls] key_file",
            f"{path} is encrypted: give the key without a passphrase, readable only by the "
            "service user",
        )
    except (ValueError, UnsupportedAlgorithm):
        return Problem("[tls] key_file", f"{path} holds no PEM private key: give the PEM key")
    return None


def check_tls(settings: Settings) -> list[Problem]:
    """Both files given or neither; readable; a current certificate matching the key."""
    tls = settings.tls
    if not tls.cert_file and not tls.key_file:
        return []
    if not tls.cert_file:
        return [Problem("[tls] cert_file", "key_file is set but cert_file is empty: set both")]
    if not tls.key_file:
        return [Problem("[tls] key_file", "cert_file is set but key_file is empty: set both")]
    readable = (
        _readable("[tls] cert_file", tls.cert_file),
        _readable("[tls] key_file", tls.key_file),
    )
    problems = [p for p in readable if p is not None]
    if problems:
        return problems
    problems = [p for p in (_certificate_problem(tls.cert_file), _key_problem(tls.key_file)) if p]
    if problems:
        return problems
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except ssl.SSLError as exc:
        return [
            Problem(
                "[tls] key_file",
                f"{tls.key_file} is not the private key of {tls.cert_file} ({exc.reason}): "
                "give the key the certificate was issued for",
            )
        ]
    return []


# --- database ---------------------------------------------------------------------------------


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def check_database(settings: Settings) -> list[Problem]:
    """The database answers and its schema is the one this code needs."""
    setting = "[database] url"
    url = settings.database.url
    try:
        shown = _shown(url)
    except ArgumentError:
        return [
            Problem(setting, f"{url!r} is not a database URL: e.g. sqlite:///var/mailledger.db")
        ]
    upgrade = "run `mailledger db upgrade`"
    try:
        state = read_state(url, connect_timeout_seconds=CONNECT_TIMEOUT_SECONDS)
    except (ArgumentError, ImportError) as exc:
        return [Problem(setting, f"cannot use {shown}: {exc}")]
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        return [
            Problem(
                setting,
                f"cannot connect to {shown}: {detail}: "
                "check that the server runs, and the host, port, name and password",
            )
        ]
    if state.up_to_date:
        return []
    if not state.known:
        return [
            Problem(
                setting,
                f"the schema is at revision {state.current}, which this mailledger does not "
                f"know (its newest is {state.head}): install the newer mailledger",
            )
        ]
    if state.current is None:
        return [Problem(setting, f"{shown} has no mailledger schema: {upgrade}")]
    return [
        Problem(setting, f"the schema is at revision {state.current}, not {state.head}: {upgrade}")
    ]


# --- storage ----------------------------------------------------------------------------------


def _nearest_existing(path: Path) -> Path:
    where = path.absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    return where


def _writable(directory: Path) -> str:
    """Why files cannot be made in ``directory`` (or where it would be created), or ""."""
    if directory.exists():
        if not directory.is_dir():
            return f"{directory} is not a directory"
        try:
            with tempfile.TemporaryFile(dir=directory):
                return ""
        except OSError as exc:
            return f"cannot write in {directory}: {exc.strerror}"
    parent = _nearest_existing(directory)
    if not parent.is_dir():
        return f"cannot create {directory}: {parent} is not a directory"
    try:
        # The server creates the directory itself; make (and remove) one where it would go.
        probe = tempfile.mkdtemp(prefix=".mailledger-preflight-", dir=parent)
    except OSError as exc:
        return f"cannot create {directory}: {exc.strerror} in {parent}"
    Path(probe).rmdir()
    return ""


def check_storage(settings: Settings) -> list[Problem]:
    """The blob directory can be written, with the free space the guard keeps in reserve."""
    storage = settings.storage
    why = _writable(Path(storage.blob_dir))
    if why:
        return [
            Problem(
                "[storage] blob_dir",
                f"{why}: choose a directory the service user can write",
            )
        ]
    if storage.min_free_bytes <= 0:
        return []
    try:
        paths = storage_paths(storage.blob_dir, settings.database.url)
    except ArgumentError:
        paths = [Path(storage.blob_dir)]  # check_database reports the URL
    problems = []
    for path in paths:
        try:
            free = free_bytes(path)
        except OSError:
            continue
        if free < storage.min_free_bytes:
            problems.append(
                Problem(
                    "[storage] min_free_bytes",
                    f"{path} has {free} bytes free, less than the {storage.min_free_bytes} "
                    "kept in reserve, so all new mail would be refused: free some space, "
                    "or lower min_free_bytes",
                )
            )
    return problems


# --- listeners --------------------------------------------------------------------------------


def _listen_settings(settings: Settings) -> Iterator[tuple[str, str]]:
    """(setting, HOST:PORT) for every address serve will listen on."""
    for value in settings.capture.listen:
        yield "[capture] listen", value
    # The submission listeners run only with a certificate (serve says so when they are off).
    if settings.tls.cert_file and settings.tls.key_file:
        for value in settings.submission.listen:
            yield "[submission] listen", value
        for value in settings.submission.listen_tls:
            yield "[submission] listen_tls", value
    if settings.metrics.listen:
        yield "[metrics] listen", settings.metrics.listen
    if settings.http.listen:
        yield "[http] listen", settings.http.listen


def _bind_problem(host: str, port: int) -> str:
    """Why ``host:port`` cannot be listened on now, or ""."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return f"{host!r} is not an address of this machine ({exc.strerror})"
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as sock:
            # As asyncio's create_server does, so a port in TIME_WAIT is not reported.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
                sock.listen(1)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return "the port is in use: stop what listens there, or choose another port"
                if exc.errno == errno.EACCES:
                    return (
                        f"no permission to listen on port {port}: run with "
                        "CAP_NET_BIND_SERVICE (the systemd unit grants it) or use a port over 1023"
                    )
                if exc.errno == errno.EADDRNOTAVAIL:
                    return f"{host} is not an address of this machine: use one it has"
                return f"cannot listen: {exc.strerror}"
    return ""


def check_listeners(settings: Settings) -> list[Problem]:
    """Every listen address can be bound now (and two settings do not name the same one)."""
    problems = []
    seen: dict[tuple[str, int], str] = {}
    for setting, value in _listen_settings(settings):
        host, port = split_listen(value)
        if port and (host, port) in seen:
            problems.append(
                Problem(setting, f"{value} is also {seen[(host, port)]}: give each its own port")
            )
            continue
        seen[(host, port)] = setting
        why = _bind_problem(host, port)
        if why:
            problems.append(Problem(setting, f"cannot listen on {value}: {why}"))
    return problems


# --- DNS --------------------------------------------------------------------------------------


def check_nameservers(settings: Settings) -> list[Problem]:
    """Each name server is an address (resolving the resolver's own servers would need DNS)."""
    problems = []
    for value in settings.dns.nameservers:
        try:
            parse_nameserver(value)
        except ValueError:
            problems.append(
                Problem(
                    "[dns] nameservers",
                    f"{value!r} is not an IP address with an optional port: write e.g. "
                    '"192.0.2.53", "127.0.0.1:5353" or "[2001:db8::53]:53", '
                    "or [] for the system resolver",
                )
            )
    return problems


CHECKS: tuple[NamedCheck, ...] = (
    NamedCheck("tls", check_tls),
    NamedCheck("database", check_database),
    NamedCheck("storage", check_storage),
    NamedCheck("listeners", check_listeners),
    NamedCheck("dns", check_nameservers),
)


def preflight(settings: Settings, checks: tuple[NamedCheck, ...] = CHECKS) -> list[Problem]:
    """Every problem the checks find, in their order; empty when the server can start."""
    problems: list[Problem] = []
    for check in checks:
        problems.extend(check.run(settings))
    return problems
