"""Debian's Dovecot as a real IMAP server for tests and the benchmark, on a loopback port.

Everything lives in one temporary directory: the configuration, ``base_dir`` (sockets and
pids), ``state_dir``, a self-signed certificate (``testing.tls``), the passwd-file of users
and every user's Maildir. The server offers what mailbox sync relies on: IDLE, CONDSTORE,
QRESYNC, MOVE and SPECIAL-USE (Sent, Trash and Junk are created with their ``\\Sent``,
``\\Trash`` and ``\\Junk`` flags). With ``oauth2_url`` a second passdb checks XOAUTH2 and
OAUTHBEARER tokens against a local introspection endpoint the caller runs.

When the tests run as root, Dovecot's login and internal processes run as the unprivileged
``dovenull`` and ``dovecot`` users the package creates, and ``first_valid_uid`` admits the mail
owner set as ``uid``/``gid`` in the static userdb: the uid the test runs as, or, for root
(which Dovecot never accepts as a mail owner), Debian's ``mail`` user.

Dovecot's own log goes to ``dovecot.log`` in the directory; ``log_text()`` returns it, and a
fixture shows it when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from imapclient import IMAPClient

from mailledger.testing.ports import free_port
from mailledger.testing.tls import trusting_client_context, write_self_signed

DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
HOSTNAME = "imap.test.example"
START_TIMEOUT_SECONDS = 20.0


class DovecotMissingError(RuntimeError):
    """Dovecot is not installed: ``apt-get install dovecot-imapd``."""


@dataclass(frozen=True, slots=True)
class DovecotUser:
    """A mailbox user of the test server."""

    name: str
    password: str


def dovecot_installed() -> bool:
    """Whether Debian's dovecot-imapd (and doveadm) are there to start."""
    return Path(DOVECOT).exists() and Path(DOVEADM).exists()


class Dovecot:
    """One Dovecot instance in a temporary directory; start it, use it, stop it.

    ``port`` speaks plain IMAP (and STARTTLS), ``tls_port`` implicit TLS. ``cert_path`` is the
    server's self-signed certificate, for a client that verifies it.

    ``oauth2_url``: XOAUTH2 and OAUTHBEARER logins are checked there. Dovecot asks
    ``GET URL?access_token=TOKEN`` (tokeninfo) and ``POST URL`` with ``token=TOKEN``
    (introspection); the endpoint answers JSON with ``"active": true`` and ``"email"``, the
    login. ``move=False`` leaves MOVE out of the capabilities, as older servers do.
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        oauth2_url: str | None = None,
        move: bool = True,
    ) -> None:
        if not dovecot_installed():
            raise DovecotMissingError("dovecot-imapd is not installed (/usr/sbin/dovecot)")
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="dovecot-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.oauth2_url = oauth2_url
        self.move = move
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tls_port = free_port()
        self.config_path = self.dir / "dovecot.conf"
        self.passwd_path = self.dir / "passwd"
        self.log_path = self.dir / "dovecot.log"
        self.mail_root = self.dir / "mail"
        self.cert_path, self.key_path = write_self_signed(HOSTNAME, self.dir / "tls")
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self.users: dict[str, DovecotUser] = {}

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> Dovecot:
        """Write the configuration and start Dovecot in the foreground; wait until it answers."""
        for sub in ("run", "state", "mail"):
            (self.dir / sub).mkdir(exist_ok=True)
        uid, gid = mail_owner()
        if os.getuid() == 0:
            os.chown(self.mail_root, uid, gid)
        # Dovecot's unprivileged processes must reach the sockets, and the auth process the
        # passwd-file: a temporary directory is 0700.
        self.dir.chmod(0o755)
        self.passwd_path.touch()
        self.config_path.write_text(self._config(), encoding="utf-8")
        self._log_file = self.log_path.open("ab")
        self._process = subprocess.Popen(  # noqa: S603 - our own fixed command line
            [DOVECOT, "-F", "-c", str(self.config_path)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"dovecot exited at start:\n{self.log_text()}")
            if _answers(self.host, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"dovecot did not start within {START_TIMEOUT_SECONDS}s:\n{self.log_text()}"
        )

    def stop(self) -> None:
        """Stop Dovecot and its children; remove the directory if we made it."""
        process = self._process
        self._process = None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def cleanup(self) -> None:
        """Remove the temporary directory (after ``stop``), when this instance made it."""
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self.cleanup()

    def log_text(self) -> str:
        """What Dovecot logged so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    # --- users and mail --------------------------------------------------------------------

    def add_user(self, name: str, password: str) -> DovecotUser:
        """Add a mailbox user (the passwd-file is read on every login: no restart)."""
        if ":" in name or ":" in password or "\n" in name + password:
            raise ValueError("user names and passwords of the test server hold no ':' or newline")
        user = DovecotUser(name, password)
        self.users[name] = user
        lines = [f"{u.name}:{{PLAIN}}{u.password}::::::" for u in self.users.values()]
        self.passwd_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.passwd_path.chmod(0o644)
        return user

    def client(self, user: str, *, tls: bool = False) -> IMAPClient:
        """A logged-in IMAPClient for ``user`` (plain IMAP on loopback, or implicit TLS)."""
        if tls:
            imap = IMAPClient(
                self.host,
                port=self.tls_port,
                ssl=True,
                ssl_context=trusting_client_context(self.cert_path),
                timeout=30,
            )
        else:
            imap = IMAPClient(self.host, port=self.port, ssl=False, timeout=30)
        try:
            imap.login(user, self.users[user].password)
        except BaseException:
            imap.shutdown()
            raise
        return imap

    @contextlib.contextmanager
    def session(self, user: str) -> Iterator[IMAPClient]:
        """A logged-in client for the ``with`` block, logged out after."""
        imap = self.client(user)
        try:
            yield imap
        finally:
            with contextlib.suppress(Exception):
                imap.logout()

    def append(
        self,
        user: str,
        folder: str,
        messages: Iterable[bytes],
        *,
        flags: Sequence[str] = (),
        when: datetime | None = None,
    ) -> list[int]:
        """APPEND messages to ``folder`` (created if missing); the UIDs they got (UIDPLUS)."""
        uids: list[int] = []
        with self.session(user) as imap:
            if not imap.folder_exists(folder):
                imap.create_folder(folder)
            for raw in messages:
                answer = imap.append(folder, raw, flags=list(flags), msg_time=when)
                uids.append(_appended_uid(answer))
        return uids

    def append_many(
        self, user: str, folder: str, messages: Iterable[bytes], *, chunk: int = 500
    ) -> int:
        """APPEND many messages, ``chunk`` per MULTIAPPEND (RFC 3502); how many."""
        count = 0
        batch: list[bytes] = []
        with self.session(user) as imap:
            if not imap.folder_exists(folder):
                imap.create_folder(folder)
            for raw in messages:
                batch.append(raw)
                if len(batch) >= chunk:
                    imap.multiappend(folder, batch)
                    count += len(batch)
                    batch = []
            if batch:
                imap.multiappend(folder, batch)
                count += len(batch)
        return count

    def flags(self, user: str, folder: str) -> dict[int, tuple[str, ...]]:
        """Every message's flags in ``folder`` by UID, read without changing anything."""
        with self.session(user) as imap:
            imap.select_folder(folder, readonly=True)
            uids = imap.search(["ALL"])
            fetched = imap.fetch(uids, ["FLAGS"]) if uids else {}
        return {
            # \\Recent belongs to a session (RFC 3501 §2.3.2), not to the message.
            uid: tuple(sorted(_text(f) for f in data[b"FLAGS"] if _text(f) != "\\Recent"))
            for uid, data in fetched.items()
        }

    def folder_counts(self, user: str) -> dict[str, tuple[int, int]]:
        """(messages, unseen) of every folder, by STATUS, for before/after comparisons."""
        with self.session(user) as imap:
            names = [_text(name) for _flags, _sep, name in imap.list_folders()]
            counts = {}
            for name in names:
                status = imap.folder_status(name, ["MESSAGES", "UNSEEN"])
                counts[name] = (int(status[b"MESSAGES"]), int(status[b"UNSEEN"]))
        return counts

    def uids(self, user: str, folder: str) -> list[int]:
        """The UIDs in ``folder``."""
        with self.session(user) as imap:
            imap.select_folder(folder, readonly=True)
            return sorted(int(uid) for uid in imap.search(["ALL"]))

    def uidvalidity(self, user: str, folder: str) -> int:
        """The folder's UIDVALIDITY."""
        with self.session(user) as imap:
            status = imap.folder_status(folder, ["UIDVALIDITY"])
        return int(status[b"UIDVALIDITY"])

    def change_uid_validity(self, user: str, folder: str, value: int | None = None) -> int:
        """Force a new UIDVALIDITY on ``folder``, as a server restore or migration does.

        After it the UIDs a client kept mean nothing (RFC 3501 §2.3.1.1), even where the
        numbers happen to be the same. Returns the new value (higher than the old one).
        """
        new = value if value is not None else self.uidvalidity(user, folder) + 1000
        self.doveadm("mailbox", "update", "-u", user, "--uid-validity", str(new), folder)
        return new

    def doveadm(self, *args: str) -> str:
        """Run ``doveadm -c CONFIG ARGS``; its output, or RuntimeError with what it said."""
        done = subprocess.run(  # noqa: S603 - our own fixed command line
            [DOVEADM, "-c", str(self.config_path), *args],
            capture_output=True,
            check=False,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"doveadm {' '.join(args)} failed ({done.returncode}): "
                f"{done.stderr.decode(errors='replace')}"
            )
        return done.stdout.decode(errors="replace")

    def maildir(self, user: str) -> Path:
        """The user's Maildir (for tests that look at the files themselves)."""
        return self.mail_root / user / "Maildir"

    # --- configuration ---------------------------------------------------------------------

    def _config(self) -> str:
        uid, gid = mail_owner()
        run, state = self.dir / "run", self.dir / "state"
        mechanisms = "plain login"
        oauth = ""
        if self.oauth2_url is not None:
            mechanisms += " xoauth2 oauthbearer"
            oauth_conf = self.dir / "oauth2.conf"
            oauth_conf.write_text(
                f"introspection_url = {self.oauth2_url}\n"
                "introspection_mode = post\n"
                f"tokeninfo_url = {self.oauth2_url}?access_token=\n"
                "username_attribute = email\n"
                "active_attribute = active\n"
                "active_value = true\n",
                encoding="utf-8",
            )
            oauth_conf.chmod(0o644)
            oauth = (
                "passdb {\n"
                "  driver = oauth2\n"
                "  mechanisms = xoauth2 oauthbearer\n"
                f"  args = {oauth_conf}\n"
                "}\n"
            )
        imap_capability = ""
        if not self.move:
            # Dovecot has no switch for MOVE alone: list the capabilities it should offer.
            imap_capability = (
                "imap_capability = IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT "
                "SORT=DISPLAY THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND "
                "URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED "
                "I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH "
                "LIST-STATUS BINARY SPECIAL-USE\n"
            )
        return f"""# Written by mailledger.testing.dovecot for one test run.
base_dir = {run}
state_dir = {state}
instance_name = mailledger-test-{self.port}
log_path = {self.log_path}
protocols = imap
listen = {self.host}
ssl = yes
ssl_cert = <{self.cert_path}
ssl_key = <{self.key_path}
disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
first_valid_uid = {uid}
first_valid_gid = {gid}
mail_location = maildir:~/Maildir
mail_fsync = never
default_internal_user = dovecot
default_login_user = dovenull
{imap_capability}
service imap-login {{
  inet_listener imap {{
    address = {self.host}
    port = {self.port}
  }}
  inet_listener imaps {{
    address = {self.host}
    port = {self.tls_port}
    ssl = yes
  }}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%u {self.passwd_path}
}}
{oauth}userdb {{
  driver = static
  args = uid={uid} gid={gid} home={self.mail_root}/%u allow_all_users=yes
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    special_use = \\Sent
    auto = create
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = create
  }}
  mailbox Junk {{
    special_use = \\Junk
    auto = create
  }}
  mailbox Drafts {{
    special_use = \\Drafts
    auto = create
  }}
}}
"""


def mail_owner() -> tuple[int, int]:
    """The uid and gid the mail belongs to: ours, or Debian's ``mail`` user when we are root.

    Dovecot never accesses mail as root ("userdb returned 0 as uid"), whatever
    ``first_valid_uid`` says, so a test running as root hands the Maildirs to ``mail``.
    """
    if os.getuid() != 0:
        return os.getuid(), os.getgid()
    owner = pwd.getpwnam("mail")
    return owner.pw_uid, owner.pw_gid


def _answers(host: str, port: int) -> bool:
    """Whether something greets on host:port (Dovecot's ``* OK`` banner)."""
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.settimeout(2)
            return sock.recv(64).startswith(b"* OK")
    except OSError:
        return False


def _appended_uid(answer: bytes | str) -> int:
    """The UID of an APPEND's ``[APPENDUID validity uid]`` answer."""
    text = answer.decode() if isinstance(answer, bytes) else answer
    if "APPENDUID" not in text:
        return 0
    return int(text.split("APPENDUID", 1)[1].split("]", 1)[0].split()[1])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def client_context(dovecot: Dovecot) -> ssl.SSLContext:
    """A client TLS context that trusts exactly this server's certificate."""
    return trusting_client_context(dovecot.cert_path)


def running_dovecot(*, oauth2_url: str | None = None, move: bool = True) -> Iterator[Dovecot]:
    """A pytest fixture's body: a started Dovecot, its log printed at teardown.

    Its directory is a fresh one under the system's temporary directory, not pytest's
    ``tmp_path``: that one is private (0700), and Dovecot's unprivileged processes must reach
    the passwd-file and the Maildirs.

    pytest shows what a test printed only when it fails, so Dovecot's log appears exactly
    when it can explain something. Without Dovecot installed the test is skipped, except on
    CI (``.ci/run`` installs it, and a skip there would hide untested code).
    """
    import pytest  # noqa: PLC0415 - a test-only dependency, imported only by fixtures

    if not dovecot_installed():
        reason = "dovecot-imapd is not installed (apt-get install dovecot-imapd)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    server = Dovecot(oauth2_url=oauth2_url, move=move)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        print(f"--- dovecot log ({server.log_path}) ---\n{server.log_text()[-20000:]}")
        server.cleanup()
