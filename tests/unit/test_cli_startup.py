"""`mailledger --help` stays fast: building the parser loads nothing but `mailledger.cli`.

The commands import the store, the server and the mail libraries when they run; these tests
prove the help path never does, by what a fresh interpreter has imported (not by a timing,
which a busy machine would make flaky), and keep the parser's copies of names it must not
import in step with their originals.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mailledger import config
from mailledger.cli import dkimkeys, kit, messages, outqueue
from mailledger.cli.main import build_parser
from mailledger.domains import keys
from mailledger.store import queries
from mailledger.store.models import MessageState, OutboundState

# Each of these takes tens to hundreds of milliseconds to import.
HEAVY = {
    "sqlalchemy",
    "alembic",
    "aiosmtpd",
    "aiosmtplib",
    "dkim",
    "spf",
    "authres",
    "dns",
    "flanker",
    "pydantic",
    "cryptography",
    "nacl",
    "structlog",
    "psycopg",
    "prometheus_client",
}

BUILD_PARSER = "from mailledger.cli.main import build_parser; build_parser()"
# What the console script does for `mailledger --help`: argparse prints and exits.
HELP = (
    "from mailledger.cli.main import main\n"
    "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
)
SUBCOMMAND_HELP = HELP.replace("'--help'", "'messages', 'list', '--help'")


def _imported_after(code: str) -> list[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)), file=sys.stderr)"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    loaded: list[str] = json.loads(done.stderr.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize("code", [BUILD_PARSER, HELP, SUBCOMMAND_HELP])
def test_the_help_path_imports_no_heavy_library(code: str) -> None:
    """Building the parser and printing help load none of the heavy libraries."""
    loaded = _imported_after(code)
    assert sorted(m for m in loaded if m.split(".")[0] in HEAVY) == []


@pytest.mark.parametrize("code", [BUILD_PARSER, HELP])
def test_the_help_path_imports_only_the_cli_package(code: str) -> None:
    """Of mailledger itself only `mailledger.cli` is loaded: the layers below wait for a command."""
    loaded = _imported_after(code)
    ours = [m for m in loaded if m.split(".")[0] == "mailledger"]
    assert [m for m in ours if m != "mailledger" and not m.startswith("mailledger.cli")] == []


def test_the_parsers_copies_match_their_originals() -> None:
    """The vocabularies the parser holds copies of (so it needs no store) equal the real ones."""
    assert tuple(s.value for s in MessageState) == messages.MESSAGE_STATES
    assert tuple(s.value for s in OutboundState) == outqueue.OUTBOUND_STATES
    assert keys.ALGORITHMS == dkimkeys.ALGORITHMS
    assert queries.DEFAULT_LIMIT == kit.DEFAULT_LIMIT
    assert f"${config.CONFIG_ENV}" in build_parser().format_help()
