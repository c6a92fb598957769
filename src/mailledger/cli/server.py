"""``mailledger serve`` and ``mailledger check-config``: run the server, and show what it reads."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import EXIT_OK, command, json_flag, out, toml_lines

if TYPE_CHECKING:
    from mailledger.config import Settings


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Run every listener and worker until Ctrl-C or SIGTERM; SIGHUP reloads ``--config``."""
    from mailledger.service.server import run_server

    code: int = run_server(settings, args.config)
    return code


def cmd_check_config(args: argparse.Namespace, settings: Settings) -> int:
    """Print the effective settings with secrets masked."""
    from mailledger.config import masked

    data = masked(settings)
    if args.json:
        out(json.dumps(data, indent=2))
    else:
        out("\n".join(toml_lines(data)).rstrip())
    return EXIT_OK


def register(commands: Any) -> None:
    """Add ``serve`` and ``check-config`` to the CLI."""
    command(commands, "serve", cmd_serve, "run every listener and worker in one process")
    json_flag(command(commands, "check-config", cmd_check_config, "the effective settings"))
