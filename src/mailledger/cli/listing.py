"""Lists that say when they stop, and JSON that is complete without being held in memory.

``activities list``, ``messages list`` and ``quarantine list`` share one rule (documented in
the README's CLI reference):

- a table shows ``--limit`` rows (50 unless given) and, when there are more, says so on
  stderr: ``showing 50 of 2,134 (--limit N, --all)``; ``--all`` shows every row;
- ``--json`` (a JSON array of objects, DESIGN §10) and ``--jsonl`` (one object a line) carry
  every row unless ``--limit`` is given, written as they are read, a page at a time.

Building the parser needs nothing from the store; the functions that print get rows as an
iterator and a way to count them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from mailledger.cli.kit import DEFAULT_LIMIT, format_table, out, positive


def list_flags(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--limit``, ``--all``, ``--json`` and ``--jsonl`` for a list command."""
    amount = sub.add_mutually_exclusive_group()
    amount.add_argument(
        "--limit",
        type=positive,
        default=None,
        metavar="N",
        help=f"at most N rows (tables: {DEFAULT_LIMIT} unless given; JSON: all unless given)",
    )
    amount.add_argument("--all", action="store_true", help="every row, however many")
    shape = sub.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="a JSON array of objects")
    shape.add_argument("--jsonl", action="store_true", help="JSON lines: one object a line")
    return sub


def row_limit(args: argparse.Namespace) -> int | None:
    """How many rows to read: ``--limit``; else every row for ``--all`` and JSON; else 50."""
    if args.limit is not None:
        return int(args.limit)
    if args.all or args.json or args.jsonl:
        return None
    return DEFAULT_LIMIT


def write_json_array(rows: Iterable[dict[str, Any]]) -> int:
    """A JSON array written object by object, as ``kit.emit`` lays it out; how many."""
    count = 0
    for row in rows:
        text = json.dumps(row, indent=2, ensure_ascii=False).replace("\n", "\n  ")
        sys.stdout.write(("[\n  " if count == 0 else ",\n  ") + text)
        count += 1
    sys.stdout.write("\n]\n" if count else "[]\n")
    return count


def write_json_lines(rows: Iterable[dict[str, Any]]) -> int:
    """One compact JSON object a line; how many."""
    count = 0
    for row in rows:
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        count += 1
    return count


def emit_list(
    args: argparse.Namespace,
    rows: Iterator[dict[str, Any]],
    columns: Sequence[str],
    *,
    empty: str,
    total: Callable[[], int],
) -> None:
    """Print a list as the flags ask; a table that stops short says how many there are."""
    if args.json:
        write_json_array(rows)
        return
    if args.jsonl:
        write_json_lines(rows)
        return
    shown = list(rows)
    if not shown:
        out(empty)
        return
    out(format_table(shown, columns))
    limit = row_limit(args)
    if limit is not None and len(shown) >= limit:
        count = total()
        if count > len(shown):
            sys.stderr.write(f"showing {len(shown):,} of {count:,} (--limit N, --all)\n")
