"""The pre-flight: each configuration that cannot run is caught by `check-config` and by `serve`.

For every problem the issue names (certificates, database, schema, blob directory, free space,
listen addresses, name servers), `check-config` prints one line naming the setting and exits
2, and `serve`, run as an operator runs it, prints the same line, exits 2 and never listened.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailledger.cli.main import main
from mailledger.store.migrate import upgrade
from mailledger.testing.ports import free_port
from mailledger.testing.servers import write_config
from mailledger.testing.tls import write_self_signed

SERVE_TIMEOUT_SECONDS = 60


@dataclass
class Setup:
    """A runnable configuration in a directory of its own, which a case then breaks."""

    root: Path
    database_url: str
    capture_port: int
    metrics_port: int
    sections: dict[str, dict[str, Any]]

    def write(self) -> Path:
        """The configuration file as the sections now stand."""
        return write_config(
            self.root / "mailledger.toml",
            database_url=self.database_url,
            blob_dir=self.root / "blobs",
            capture_port=self.capture_port,
            **self.sections,
        )


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    """A migrated SQLite database, a blob directory, free capture and metrics ports."""
    url = f"sqlite:///{tmp_path / 'mailledger.db'}"
    upgrade(url)
    metrics = free_port()
    return Setup(
        tmp_path,
        url,
        free_port(),
        metrics,
        {"metrics": {"listen": f"127.0.0.1:{metrics}"}, "storage": {"min_free_bytes": 0}},
    )


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another program listens on for the whole test."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


# --- the cases: each breaks one thing, and names the line the operator must read -------------


def _missing_certificate(s: Setup, _held: int) -> tuple[str, str]:
    s.sections["tls"] = {"cert_file": str(s.root / "nope.crt"), "key_file": str(s.root / "n.key")}
    return "[tls] cert_file", "nope.crt does not exist"


def _mismatched_key(s: Setup, _held: int) -> tuple[str, str]:
    cert, _key = write_self_signed("mx.example", s.root / "one")
    _cert, other_key = write_self_signed("mx.example", s.root / "two")
    s.sections["tls"] = {"cert_file": str(cert), "key_file": str(other_key)}
    return "[tls] key_file", "is not the private key of"


def _encrypted_key(s: Setup, _held: int) -> tuple[str, str]:
    cert, key_path = write_self_signed("mx.example", s.root / "enc")
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    s.sections["tls"] = {"cert_file": str(cert), "key_file": str(key_path)}
    return "[tls] key_file", "is encrypted"


def _expired_certificate(s: Setup, _held: int) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.example")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2021, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA256())
    )
    (s.root / "old.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (s.root / "old.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    s.sections["tls"] = {"cert_file": str(s.root / "old.crt"), "key_file": str(s.root / "old.key")}
    return "[tls] cert_file", "expired on 2021-01-01 00:00 UTC: renew it"


def _unreachable_database(s: Setup, _held: int) -> tuple[str, str]:
    # Nothing listens on a free port: the connection is refused at once.
    s.database_url = f"postgresql+psycopg://ml:hunter2@127.0.0.1:{free_port()}/ml"
    return "[database] url", "cannot connect to postgresql+psycopg://ml:***@127.0.0.1"


def _unmigrated_database(s: Setup, _held: int) -> tuple[str, str]:
    s.database_url = f"sqlite:///{s.root / 'fresh.db'}"
    return "[database] url", "run `mailledger db upgrade`"


def _old_schema(s: Setup, _held: int) -> tuple[str, str]:
    s.database_url = f"sqlite:///{s.root / 'old.db'}"
    upgrade(s.database_url, revision="0001")
    return "[database] url", "the schema is at revision 0001, not"


def _unwritable_blob_dir(s: Setup, _held: int) -> tuple[str, str]:
    s.sections["storage"]["blob_dir"] = "/proc/nope"
    return "[storage] blob_dir", "cannot create /proc/nope"


def _blob_dir_is_a_file(s: Setup, _held: int) -> tuple[str, str]:
    (s.root / "afile").write_text("x", encoding="utf-8")
    s.sections["storage"]["blob_dir"] = str(s.root / "afile")
    return "[storage] blob_dir", "is not a directory"


def _no_room_for_the_reserve(s: Setup, _held: int) -> tuple[str, str]:
    s.sections["storage"]["min_free_bytes"] = 10**18  # an exabyte
    return "[storage] min_free_bytes", "kept in reserve"


def _capture_port_taken(s: Setup, held: int) -> tuple[str, str]:
    s.capture_port = held
    return "[capture] listen", "the port is in use"


def _metrics_port_taken(s: Setup, held: int) -> tuple[str, str]:
    s.sections["metrics"]["listen"] = f"127.0.0.1:{held}"
    return "[metrics] listen", "the port is in use"


def _submission_port_taken(s: Setup, held: int) -> tuple[str, str]:
    cert, key = write_self_signed("mx.example", s.root / "tls")
    s.sections["tls"] = {"cert_file": str(cert), "key_file": str(key)}
    s.sections["submission"] = {"listen": [], "listen_tls": [f"127.0.0.1:{held}"]}
    return "[submission] listen_tls", "the port is in use"


def _address_not_ours(s: Setup, _held: int) -> tuple[str, str]:
    s.sections["capture"] = {"listen": ["192.0.2.1:2525"]}  # TEST-NET-1: no interface has it
    return "[capture] listen", "192.0.2.1 is not an address of this machine"


def _nameserver_not_an_address(s: Setup, _held: int) -> tuple[str, str]:
    s.sections["dns"] = {"nameservers": ["not-an-ip"]}
    return "[dns] nameservers", "'not-an-ip' is not an IP address"


Case = Callable[[Setup, int], tuple[str, str]]
CASES: list[Case] = [
    _missing_certificate,
    _mismatched_key,
    _encrypted_key,
    _expired_certificate,
    _unreachable_database,
    _unmigrated_database,
    _old_schema,
    _unwritable_blob_dir,
    _blob_dir_is_a_file,
    _no_room_for_the_reserve,
    _capture_port_taken,
    _metrics_port_taken,
    _submission_port_taken,
    _address_not_ours,
    _nameserver_not_an_address,
]
IDS = [case.__name__.strip("_") for case in CASES]


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


# --- the tests --------------------------------------------------------------------------------


def test_a_runnable_configuration_passes(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    """The baseline every case breaks: check-config finds nothing and exits 0."""
    assert main(["--config", str(setup.write()), "check-config"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_check_config_names_the_setting(
    setup: Setup, held_port: int, case: Case, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config prints the settings, then one line per problem naming it, and exits 2."""
    setting, says = case(setup, held_port)
    code = main(["--config", str(setup.write()), "check-config"])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    lines = captured.err.splitlines()
    assert any(line.startswith(f"mailledger: {setting}: ") and says in line for line in lines), (
        captured.err
    )
    assert lines[-1].endswith("problem(s): `mailledger serve` would refuse to start")
    assert "Traceback" not in captured.err
    assert "hunter2" not in captured.out + captured.err


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_serve_refuses_to_start_and_never_listens(setup: Setup, held_port: int, case: Case) -> None:
    """`mailledger serve` prints the same line, exits 2, and opened none of its ports."""
    setting, says = case(setup, held_port)
    config = setup.write()
    done = subprocess.run(
        [sys.executable, "-m", "mailledger", "--config", str(config), "serve"],
        capture_output=True,
        text=True,
        timeout=SERVE_TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert any(
        line.startswith(f"mailledger: {setting}: ") and says in line
        for line in done.stderr.splitlines()
    ), done.stderr
    assert "Traceback" not in done.stderr
    assert "capture listening" not in done.stderr + done.stdout
    for port in (setup.capture_port, setup.metrics_port):
        if port != held_port:
            assert not _listening(port), port


def test_several_problems_are_all_reported(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every problem is listed at once, so one run of check-config finds them all."""
    _unmigrated_database(setup, 0)
    _nameserver_not_an_address(setup, 0)
    _unwritable_blob_dir(setup, 0)
    assert main(["--config", str(setup.write()), "check-config", "--json"]) == 2
    err = capsys.readouterr().err
    assert "3 problem(s)" in err
    for setting in ("[database] url", "[dns] nameservers", "[storage] blob_dir"):
        assert f"mailledger: {setting}: " in err


# --- db current | history --------------------------------------------------------------------


def test_db_current_and_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`db current` exits 0 only at the newest revision; `db history` marks where it stands."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    config = tmp_path / "db.toml"
    config.write_text(f'[database]\nurl = "{url}"\n', encoding="utf-8")

    def run(*argv: str) -> tuple[int, str]:
        code = main(["--config", str(config), "db", *argv])
        return code, capsys.readouterr().out

    code, out = run("current")
    assert (code, out) == (1, "no schema yet: run `mailledger db upgrade`\n")
    assert not (tmp_path / "db.sqlite").exists()  # looking created nothing
    code, out = run("history")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("0001  The initial schema")
    assert lines[-1] == "the database has no revision yet: run `mailledger db upgrade`"

    upgrade(url, revision="0002")
    code, out = run("current")
    assert code == 1 and out.startswith("0002: the newest is ")
    assert "(current)" in next(line for line in run("history")[1].splitlines() if "0002" in line)

    assert run("upgrade")[0] == 0
    code, out = run("current")
    assert code == 0 and out.endswith("(head): the schema is up to date\n")
    newest = run("history")[1].splitlines()[-1]
    assert newest.endswith("(current, head)")
