"""``on``/``off`` values for the command line's switches (``tenant set --record-internal on``)."""

from __future__ import annotations

import argparse

_ON = frozenset({"on", "yes", "true", "1"})
_OFF = frozenset({"off", "no", "false", "0"})


def on_off(value: str) -> bool:
    """``on``/``off`` (or yes/no, true/false, 1/0) as a bool; anything else is a usage error."""
    text = value.strip().lower()
    if text in _ON:
        return True
    if text in _OFF:
        return False
    raise argparse.ArgumentTypeError(f"{value!r}: say on or off")


def history_choice(args: argparse.Namespace) -> str | None:
    """``keep``, ``remove``, or None when the command line said neither."""
    if args.keep_history:
        return "keep"
    if args.remove_history:
        return "remove"
    return None


def history_flags(sub: argparse.ArgumentParser, *, keep: str, remove: str) -> None:
    """``--keep-history`` / ``--remove-history``: one of them, and neither is the default."""
    choice = sub.add_mutually_exclusive_group()
    choice.add_argument("--keep-history", action="store_true", help=keep)
    choice.add_argument("--remove-history", action="store_true", help=remove)
