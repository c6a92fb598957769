"""The ``mailledger`` command: the operator's interface (DESIGN §10).

Each noun has a module of its own that adds its commands with ``register``; this module only
puts them in order and runs the one chosen. Exit codes: 0 done, 1 the request was refused
(unknown tenant, duplicate address, …), 2 the configuration or the command line is wrong.

Building the parser imports no SQLAlchemy, pydantic or mail library, so ``mailledger --help``
and a mistyped command answer at once; the chosen command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from mailledger.cli import (
    account,
    activities,
    apitoken,
    calendar,
    company,
    contact,
    database,
    demo,
    dkimkeys,
    dnsrecords,
    events,
    forwarding,
    messages,
    neverlog,
    outqueue,
    quarantine,
    retention,
    server,
    staff,
    storage,
    tenant,
    web,
    webhook,
)
from mailledger.cli.kit import (
    EXIT_REFUSED,
    EXIT_USAGE,
    CommandError,
    Handler,
    SettingsFreeHandler,
    err,
)

# In the order ``mailledger --help`` lists them.
NOUNS = (
    server,  # serve, check-config
    database,  # db
    demo,
    tenant,
    staff,
    forwarding,  # forwarding check-health
    contact,
    company,
    neverlog,  # never-log
    activities,
    messages,
    quarantine,
    dnsrecords,  # dns
    dkimkeys,  # dkim
    retention,
    storage,  # storage migrate
    outqueue,  # queue
    apitoken,  # api-token
    webhook,
    web,  # web link
    account,  # mailbox accounts (sync)
    calendar,  # calendar accounts (calendar sync)
    events,  # appointments written to calendars
)


class _VersionAction(argparse.Action):
    """``--version``: read from the installed distribution's metadata only when asked."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        from mailledger import __version__  # the one source; pyproject reads it too

        sys.stdout.write(f"{parser.prog} {__version__}\n")  # stdout, as argparse's "version"
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; names follow DESIGN §10."""
    parser = argparse.ArgumentParser(
        prog="mailledger", description="Capture forwarded email as CRM activities."
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        # The variable is mailledger.config.CONFIG_ENV, named here so that --help loads no
        # pydantic (tests/unit/test_cli_startup.py keeps the two equal).
        help="TOML configuration file (default: $MAILLEDGER_CONFIG, else built-ins)",
    )
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for noun in NOUNS:
        noun.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mailledger`` console script; returns the exit code.

    A reader that goes away (``mailledger messages show 1 | head``) ends the command quietly:
    the rest of the output has nowhere to go, and a traceback about it helps nobody.
    """
    try:
        try:
            code = _run(argv)
        finally:
            # Inside the try, so that a closed pipe is met here and not at interpreter exit.
            sys.stdout.flush()
    except BrokenPipeError:
        # The Python documentation's recipe (signal module, "Note on SIGPIPE"): point stdout
        # at devnull so the interpreter's own final flush cannot fail again, and exit 1.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_REFUSED
    return code


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    plain: SettingsFreeHandler | None = getattr(args, "settings_free_handler", None)
    if plain is not None:
        # Commands that read no settings (init-config) work even beside a broken file.
        return plain(args)

    from sqlalchemy.exc import SQLAlchemyError

    from mailledger.config import ConfigError, load_settings
    from mailledger.mail.addresses import AddressError
    from mailledger.store.directory import DirectoryError
    from mailledger.store.quarantine import QuarantineError
    from mailledger.store.queries import NotFoundError
    from mailledger.verify.patches import install_patches

    install_patches()  # before any command signs, verifies or checks SPF (verify/patches.py)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        err(f"configuration: {exc}")
        return EXIT_USAGE
    handler: Handler = args.handler
    try:
        return handler(args, settings)
    except (DirectoryError, AddressError, CommandError, QuarantineError) as exc:
        err(str(exc))
    except NotFoundError as exc:
        err(str(exc.args[0]))
    except SQLAlchemyError as exc:
        err(f"database: {exc.__class__.__name__}: {str(exc).splitlines()[0]}")
        err("is the schema up to date? run `mailledger db upgrade`")
    return EXIT_REFUSED
