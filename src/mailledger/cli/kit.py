"""The pieces every ``mailledger`` command is built from: output, sessions, argparse helpers.

Every noun module builds its part of the parser from these, so this module stays light: it
imports SQLAlchemy and the store only inside the functions that open a session, and
``mailledger --help`` never pays for them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from mailledger.config import Settings
    from mailledger.store.secretbox import SecretBox

Handler = Callable[[argparse.Namespace, "Settings"], int]
# A command that needs no settings (it must work before a configuration exists).
SettingsFreeHandler = Callable[[argparse.Namespace], int]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2

# ``--limit`` when none is given: ``mailledger.store.queries.DEFAULT_LIMIT``, copied so that
# building the parser needs no SQLAlchemy (tests/unit/test_cli_startup.py keeps the two equal).
DEFAULT_LIMIT = 50


class CommandError(Exception):
    """A request the CLI refuses, with the message the operator sees (exit 1)."""


# --- output -----------------------------------------------------------------------------------


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def err(text: str) -> None:
    sys.stderr.write(f"mailledger: {text}\n")


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value).replace("\n", " ")


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as plain aligned columns under a header; what a terminal user reads."""
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = [[c.upper() for c in columns], *cells]
    return "\n".join(
        "  ".join(value.ljust(widths[i]) for i, value in enumerate(line)).rstrip() for line in lines
    )


def emit(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], *, as_json: bool, empty: str
) -> None:
    if as_json:
        out(json.dumps(list(rows), indent=2, ensure_ascii=False))
    elif rows:
        out(format_table(rows, columns))
    else:
        out(empty)


def emit_record(record: dict[str, Any], sections: dict[str, Sequence[str]]) -> None:
    """One record as ``key: value`` lines, then each list in ``sections`` as a table."""
    width = max(len(k) for k in record)
    for key, value in record.items():
        if key not in sections:
            out(f"{key.ljust(width)}  {cell(value)}")
    for key, columns in sections.items():
        out()
        out(f"{key}:")
        out(format_table(record.get(key) or [], columns) if record.get(key) else "  (none)")


def show(
    records: Sequence[dict[str, Any]], sections: dict[str, Sequence[str]], *, as_json: bool
) -> None:
    """Records shown in full: a JSON array (DESIGN §10), or each as ``emit_record`` prints it."""
    if as_json:
        out(json.dumps(list(records), indent=2, ensure_ascii=False))
        return
    for index, record in enumerate(records):
        if index:
            out()
        emit_record(record, sections)


def toml_lines(data: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Settings as TOML that reads back: a table per section, and a sub-table per section of
    a section of sections (``[oauth.google]``; an inline table would need TOML's own syntax).
    """
    for section, values in data.items():
        name = f"{prefix}{section}"
        tables = {k: v for k, v in values.items() if isinstance(v, dict)}
        if len(tables) < len(values) or not tables:
            yield f"[{name}]"
            for key, value in values.items():
                if key in tables:
                    continue
                if value is None:
                    yield f"# {key}: not set"  # TOML has no null: a key left out is unset
                else:
                    # JSON scalars and arrays of them are valid TOML values.
                    yield f"{key} = {json.dumps(value, ensure_ascii=False)}"
            yield ""
        yield from toml_lines(tables, prefix=f"{name}.")


# --- plumbing ---------------------------------------------------------------------------------


@contextmanager
def session_scope(settings: Settings) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back if it raises."""
    from mailledger.store.engine import make_engine, make_sessionmaker

    engine = make_engine(settings.database.url, echo=settings.database.echo)
    try:
        with make_sessionmaker(engine).begin() as session:
            yield session
    finally:
        engine.dispose()


@contextmanager
def sessions_scope(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """A session factory, for code that opens its own transactions."""
    from mailledger.store.engine import make_engine, make_sessionmaker

    engine = make_engine(settings.database.url, echo=settings.database.echo)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def secret_box(settings: Settings) -> SecretBox:
    """The box of ``[secrets] key_file``; a missing or unusable key is a refusal naming it."""
    from mailledger.store.secretbox import SecretBox, SecretError

    try:
        return SecretBox.from_file(settings.secrets.key_file)
    except SecretError as exc:
        raise CommandError(str(exc)) from None


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


def command(group: Any, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = group.add_parser(name, help=help_text)
    sub.set_defaults(handler=handler)
    return sub


def settings_free_command(
    group: Any, name: str, handler: SettingsFreeHandler, help_text: str
) -> argparse.ArgumentParser:
    """A command run without loading the configuration (``init-config`` writes the first one)."""
    sub: argparse.ArgumentParser = group.add_parser(name, help=help_text)
    sub.set_defaults(settings_free_handler=handler)
    return sub


def group(commands: Any, name: str, help_text: str) -> Any:
    sub = commands.add_parser(name, help=help_text)
    return sub.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


def json_flag(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sub.add_argument("--json", action="store_true", help="a JSON array of objects")
    return sub


def limit_flag(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sub.add_argument("--limit", type=positive, default=DEFAULT_LIMIT, metavar="N")
    return sub
