"""``mailledger serve`` and ``mailledger check-config``: run the server, and check it can run."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import (
    EXIT_OK,
    EXIT_USAGE,
    command,
    err,
    json_flag,
    out,
    settings_free_command,
    toml_lines,
)

if TYPE_CHECKING:
    from mailledger.config import Settings


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Run every listener and worker until Ctrl-C or SIGTERM; SIGHUP reloads ``--config``."""
    from mailledger.service.server import run_server

    code: int = run_server(settings, args.config)
    return code


def cmd_check_config(args: argparse.Namespace, settings: Settings) -> int:
    """Print the effective settings with secrets masked, then the pre-flight's problems."""
    from mailledger.config import masked
    from mailledger.service.preflight import preflight

    data = masked(settings)
    if args.json:
        out(json.dumps([data], indent=2))  # a one-element array, like every --json
    else:
        out("\n".join(toml_lines(data)).rstrip())
    problems = preflight(settings)
    for problem in problems:
        err(str(problem))
    if problems:
        err(f"{len(problems)} problem(s): `mailledger serve` would refuse to start")
        return EXIT_USAGE
    return EXIT_OK


def cmd_init_config(args: argparse.Namespace) -> int:
    """Print the annotated example configuration, or one of the systemd files."""
    from mailledger.service.shipped import shipped_text

    # Written as is (no newline added): `init-config > file` is byte for byte the shipped file.
    sys.stdout.write(shipped_text(args.systemd or "config"))
    return EXIT_OK


def register(commands: Any) -> None:
    """Add ``serve``, ``check-config`` and ``init-config`` to the CLI."""
    command(commands, "serve", cmd_serve, "run every listener and worker in one process")
    json_flag(
        command(
            commands,
            "check-config",
            cmd_check_config,
            "the effective settings, and whether the server can start with them",
        )
    )
    sub = settings_free_command(
        commands,
        "init-config",
        cmd_init_config,
        "print the annotated example configuration (or a systemd file) to start from",
    )
    # The names of mailledger.service.shipped.SHIPPED, copied so that --help imports nothing.
    sub.add_argument(
        "--systemd",
        choices=("service", "sysusers", "tmpfiles"),
        help="print the unit (mailledger.service), or the sysusers.d or tmpfiles.d file instead",
    )
